"""Ways in besides HTTP, each a translator in front of the one accept path: SMTP submission."""

from mailgate.ingest.mime import message_fields, parse_message
from mailgate.ingest.smtp import SubmissionHandler, SubmissionServer, reply_for, tls_context

__all__ = [
    "SubmissionHandler",
    "SubmissionServer",
    "message_fields",
    "parse_message",
    "reply_for",
    "tls_context",
]
