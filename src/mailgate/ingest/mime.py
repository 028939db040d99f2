"""A submitted message, parsed by the stdlib `email` package, as the fields of a `MessageIn`.

SMTP submission (`ingest/smtp.py`) hands this module the bytes after DATA
and the envelope. What comes back is the dict `MessageIn.model_validate`
takes, so mail that arrives over SMTP is held to exactly the rules of the
HTTP API. What is kept, and why:

- From, To, Cc, Reply-To and Subject, from the headers. With no From
  header, the envelope sender (MAIL FROM) is the sender.
- Envelope recipients (RCPT TO) not named in To or Cc become bcc; a Bcc
  header is ignored, the envelope says who gets the mail. A To or Cc
  address that is not also an envelope recipient is refused: mailgate
  delivers to every To and Cc address, and would otherwise send to someone
  the client did not ask it to (a list expansion, a per-recipient copy).
- The text/plain and text/html bodies `EmailMessage.get_body` picks (8-bit
  text that names no charset is read as UTF-8 when it is valid UTF-8). Every
  other leaf part (attachments, inline images, a forwarded message) is kept
  as an attachment, with its file name or a made-up one. mailgate's
  message has no Content-ID, so an inline image arrives as an attachment
  and an HTML `cid:` reference to it does not resolve.
- Every other header the API takes in `headers` (repeats joined with
  ", "). `X-Mailgate-Tag` (may repeat) and `X-Mailgate-Meta-<key>` become
  tags and metadata, the way the SMTP provider writes them. Reserved
  headers (Date, Message-ID, Received, DKIM-Signature, ...), Content-*
  and other X-Mailgate-* headers are dropped: the provider writes its own.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from collections.abc import Iterator, Sequence
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import PurePosixPath
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mailgate.api.schemas import RESERVED_HEADERS, HeaderName
from mailgate.errors import InvalidRequest
from mailgate.message import ascii_domain

_TAG_HEADER = "x-mailgate-tag"
_META_PREFIX = "x-mailgate-meta-"
_DROPPED_PREFIXES = ("content-", "x-mailgate-")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_header_name = TypeAdapter(HeaderName)


def parse_message(raw: bytes) -> EmailMessage:
    """The message after DATA, parsed leniently: problems become defects, not exceptions."""
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)  # policy.default's message factory
    return parsed


def message_fields(
    msg: EmailMessage, *, mail_from: str | None, rcpt_tos: Sequence[str]
) -> dict[str, Any]:
    """The `MessageIn` fields of a submitted message; `InvalidRequest` when it cannot be one."""
    to, cc = _addresses(msg, "To"), _addresses(msg, "Cc")
    if not to:
        raise InvalidRequest(
            "to: the message names no To address (mailgate needs at least one; "
            "mail to Bcc recipients only is not supported)",
            field="to",
        )
    envelope: dict[str, str] = {}
    for recipient in rcpt_tos:
        envelope.setdefault(_same(recipient), recipient)
    named = {_same(a["email"]) for a in (*to, *cc)}
    for field, listed in (("to", to), ("cc", cc)):
        for address in listed:
            if _same(address["email"]) not in envelope:
                raise InvalidRequest(
                    f"{field}: {address['email']} is not one of the RCPT TO recipients; "
                    "mailgate delivers to every To and Cc address, so each must also be "
                    "an envelope recipient",
                    field=field,
                )
    fields: dict[str, Any] = {
        "to": to,
        "cc": cc,
        "bcc": [{"email": r} for key, r in envelope.items() if key not in named],
        "reply_to": _addresses(msg, "Reply-To"),
    }
    senders = _addresses(msg, "From")
    if len(senders) > 1:
        raise InvalidRequest("from: the From header names more than one address", field="from")
    if senders:
        fields["from"] = senders[0]
    elif mail_from:
        fields["from"] = {"email": mail_from}
    subject = msg.get("Subject")
    if subject is not None:
        fields["subject"] = _unescape(str(subject)).replace("\t", " ").strip()
    fields |= _bodies(msg)
    fields |= _headers(msg)
    return fields


def _unescape(text: str) -> str:
    """Undo the email package's surrogate escapes: raw UTF-8 in headers (RFC 6532) as text."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _same(email: str) -> str:
    """What two spellings of one address share: any case, Unicode or IDNA domain."""
    return ascii_domain(email.strip())[0].lower()


def _addresses(msg: EmailMessage, name: str) -> list[dict[str, str]]:
    """Every mailbox of every `name` header (groups opened), as the API's address objects."""
    found: list[dict[str, str]] = []
    for header in msg.get_all(name, []):
        for address in getattr(header, "addresses", ()):
            assert isinstance(address, HeaderAddress)
            email = _unescape(address.addr_spec)
            display = _unescape(address.display_name).replace("\t", " ").strip()
            found.append({"email": email, "name": display} if display else {"email": email})
    return found


def _bodies(msg: EmailMessage) -> dict[str, Any]:
    text_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    fields: dict[str, Any] = {}
    if isinstance(text_part, EmailMessage):
        fields["text"] = _text(text_part)
    if isinstance(html_part, EmailMessage):
        fields["html"] = _text(html_part)
    bodies = {id(text_part), id(html_part)}
    fields["attachments"] = [
        _attachment(part, index)
        for index, part in enumerate(_leaves(msg), start=1)
        if id(part) not in bodies
    ]
    return fields


def _leaves(part: EmailMessage) -> Iterator[EmailMessage]:
    """The parts that hold content, in order; a forwarded message (message/rfc822) is one."""
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            assert isinstance(sub, EmailMessage)
            yield from _leaves(sub)
    else:
        yield part


def _text(part: EmailMessage) -> str:
    """A body part's text, with `\\n` line breaks; the one line break MIME always ends a
    body with is not the sender's, so it goes."""
    text = _undeclared_utf8(part)
    if text is None:
        try:
            text = str(part.get_content())
        except (LookupError, UnicodeError):  # a charset Python does not know
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    text = text.replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


def _undeclared_utf8(part: EmailMessage) -> str | None:
    """8-bit text that names no charset (or US-ASCII, which 8-bit text cannot be), read
    as UTF-8 when it is valid UTF-8; None otherwise.

    Plain `sendmail`-style messages and simple command-line clients send UTF-8
    bodies without a charset. MIME's default, US-ASCII, would turn each of their
    non-ASCII bytes into U+FFFD; valid UTF-8 is what such a sender meant.
    """
    if part.get_content_charset() not in (None, "us-ascii", "ascii"):
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or payload.isascii():
        return None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _attachment(part: EmailMessage, index: int) -> dict[str, str]:
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, EmailMessage) else b""
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    charset = part.get_param("charset")
    if part.get_content_maintype() == "text" and isinstance(charset, str) and _TOKEN.match(charset):
        content_type = f"{content_type}; charset={charset}"
    return {
        "filename": _filename(part, content_type, index),
        "content_type": content_type,
        "content": base64.b64encode(data).decode("ascii"),
    }


def _filename(part: EmailMessage, content_type: str, index: int) -> str:
    """The part's own file name without any directory, or `inline-3.png` / `part-3.pdf`."""
    given = part.get_filename()
    if given:
        name = _CONTROL.sub(" ", _unescape(given)).replace("\\", "/")
        name = PurePosixPath(name).name.strip()
        if name:
            return name[-255:]
    kind = "inline" if part.get_content_disposition() == "inline" else "part"
    if content_type.startswith("message/rfc822"):
        extension = ".eml"
    else:
        extension = mimetypes.guess_extension(content_type.partition(";")[0]) or ".bin"
    return f"{kind}-{index}{extension}"


def _headers(msg: EmailMessage) -> dict[str, Any]:
    headers: dict[str, str] = {}
    spelled: dict[str, str] = {}  # a repeated header keeps its first spelling
    tags: list[str] = []
    metadata: dict[str, str] = {}
    for name, value in msg.items():
        lowered = name.lower()
        text = _unescape(str(value)).strip()
        if lowered == _TAG_HEADER:
            tags.append(text)
        elif lowered.startswith(_META_PREFIX):
            metadata[name[len(_META_PREFIX) :]] = text
        elif _kept(name):
            first = spelled.setdefault(lowered, name)
            headers[first] = f"{headers[first]}, {text}" if first in headers else text
    return {"headers": headers, "tags": tags, "metadata": metadata}


def _kept(name: str) -> bool:
    """A header the API's `MessageIn.headers` takes, and not one about the MIME structure."""
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(_DROPPED_PREFIXES):
        return False
    try:
        _header_name.validate_python(name)
    except ValidationError:
        return False
    return True
