"""The MIME message mailgate hands an SMTP relay, and the envelope around it.

Kept apart from the SMTP dialogue (`smtp.py`): this part is pure, and what
it decides (7-bit bodies, header folding, IDNA domains, a Message-ID derived
from our id, Bcc only in the envelope) is tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage, Message
from email.policy import EmailPolicy
from email.utils import format_datetime

from mailgate.message import Address, Email, ascii_domain

_UNSTRUCTURED_SKIP = frozenset(
    {"from", "to", "cc", "reply-to", "date", "message-id", "mime-version",
     "content-type", "content-transfer-encoding", "content-disposition"}
)  # fmt: skip


class _Policy(EmailPolicy):
    """CRLF, 7-bit bodies, plain ASCII header values folded only at spaces.

    The stock folder turns a long token (a List-Unsubscribe URL) into RFC 2047
    encoded words, which such headers must not contain.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        text = str(value)
        if name.lower() not in _UNSTRUCTURED_SKIP and text.isascii():
            folded = _fold_at_spaces(name, text, self.linesep)
            if all(len(line) <= 998 for line in folded.split(self.linesep)):
                return folded.encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _Policy(linesep="\r\n", cte_type="7bit")
_UTF8_POLICY = _POLICY.clone(utf8=True)


def _fold_at_spaces(name: str, value: str, linesep: str) -> str:
    out, length = f"{name}:", len(name) + 1
    for word in value.split(" "):
        if word and length + 1 + len(word) > 78 and length > len(name) + 1:
            out, length = out + linesep, 0
        out, length = f"{out} {word}", length + 1 + len(word)
    return out + linesep


def _mailboxes(addresses: Iterable[Address], utf8: bool) -> str:
    mailboxes = []
    for a in addresses:
        local, _, domain = (a.email if utf8 else ascii_domain(a.email)[0]).rpartition("@")
        mailboxes.append(str(HeaderAddress(a.name or "", username=local, domain=domain)))
    return ", ".join(mailboxes)


def message_id_for(message_id: str, sender: str) -> str:
    """`<our id@sender's domain>`: the same for every attempt at one message."""
    local = re.sub(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]", "-", message_id).strip(".") or "mailgate"
    domain = ascii_domain(sender)[0].rpartition("@")[2]
    return f"<{local}@{domain if domain.isascii() else 'mailgate.invalid'}>"


def build_message(message_id: str, email: Email, *, utf8: bool = False) -> EmailMessage:
    """The MIME message for `email`; Bcc goes in the envelope only, never in a header.

    Tags become repeated `X-Mailgate-Tag` headers (a tag may hold a comma),
    metadata `X-Mailgate-Meta-<key>` headers; the Message-ID is derived from
    our id so that every attempt at one message carries the same one.
    """
    msg = EmailMessage(policy=_UTF8_POLICY if utf8 else _POLICY)
    msg["From"] = _mailboxes([email.sender], utf8)
    msg["To"] = _mailboxes(email.to, utf8)
    if email.cc:
        msg["Cc"] = _mailboxes(email.cc, utf8)
    if email.reply_to:
        msg["Reply-To"] = _mailboxes(email.reply_to, utf8)
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id_for(message_id, email.sender.email)
    for name, value in email.headers.items():
        msg[name] = value
    msg["X-Mailgate-Id"] = message_id
    for tag in email.tags:
        msg["X-Mailgate-Tag"] = tag
    for key, value in email.metadata.items():
        msg[f"X-Mailgate-Meta-{key}"] = value
    if email.text is not None:
        msg.set_content(email.text)
        if email.html is not None:
            msg.add_alternative(email.html, subtype="html")
    else:
        msg.set_content(email.html or "", subtype="html")
    for attachment in email.attachments:
        kind = Message()
        kind["Content-Type"] = attachment.content_type
        params = dict(kind.get_params(failobj=[])[1:])
        msg.add_attachment(
            attachment.data(),
            maintype=kind.get_content_maintype(),
            subtype=kind.get_content_subtype(),
            filename=attachment.filename,
            params=params,
        )
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package repeats it in every part
    return msg


@dataclass(frozen=True, slots=True)
class Letter:
    """What one transaction hands over: envelope and the dot-stuffed DATA payload."""

    sender: str
    recipients: tuple[str, ...]
    payload: bytes
    size: int
    utf8: bool
    message_id: str


def letter_for(message_id: str, email: Email) -> Letter:
    addresses = (email.sender, *email.to, *email.cc, *email.bcc, *email.reply_to)
    utf8 = any(ascii_domain(a.email)[1] for a in addresses)
    recipients: dict[str, str] = {}
    for address in (*email.to, *email.cc, *email.bcc):
        recipients.setdefault(address.email.lower(), ascii_domain(address.email)[0])
    msg = build_message(message_id, email, utf8=utf8)
    raw = re.sub(rb"\r\n|\r|\n", b"\r\n", msg.as_bytes())
    raw = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
    return Letter(
        sender=ascii_domain(email.sender.email)[0],
        recipients=tuple(recipients.values()),
        payload=re.sub(rb"(?m)^\.", b"..", raw) + b".\r\n",
        size=len(raw),
        utf8=utf8,
        message_id=str(msg["Message-ID"]).strip("<>"),
    )
