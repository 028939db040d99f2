"""The message as mailgate keeps it: content, statuses, event kinds, attempt outcomes.

These are plain frozen dataclasses and `StrEnum`s shared by the API, the
store, the worker and the provider adapters. Validation happens at the HTTP
edge (`api/schemas.py`); everything here is already valid.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formataddr
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where a message is in its life (DESIGN.md, "Message life")."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class EventType(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    ATTEMPT = "attempt"
    FAILOVER = "failover"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RETRIED = "retried"
    RECLAIMED = "reclaimed"
    # What the providers' event webhooks report after `sent`, and what it causes.
    DELIVERED = "delivered"
    DEFERRED_BY_PROVIDER = "deferred_by_provider"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    SUPPRESSED = "suppressed"


class Outcome(StrEnum):
    """How one provider call ended (one attempt row each)."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"
    THROTTLED = "throttled"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str | None = None

    def formatted(self) -> str:
        """`Name <email>`, the name quoted when needed and left in UTF-8 (RFC 6532)."""
        if not self.name:
            return self.email
        if self.name.isascii():
            return formataddr((self.name, self.email))
        quoted = self.name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{self.email}>'

    def to_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name} if self.name else {"email": self.email}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Address:
        return cls(email=data["email"], name=data.get("name"))


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    content: str
    """Base64, as the caller sent it (validated); `data()` decodes it."""

    def data(self) -> bytes:
        return base64.b64decode(self.content)

    @property
    def size(self) -> int:
        """Decoded size in bytes, without decoding."""
        return decoded_size(self.content)


def ascii_domain(address: str) -> tuple[str, bool]:
    """The address with an IDNA domain, and whether it still needs SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return address, True
    return f"{local}@{domain}", not local.isascii()


def decoded_size(b64: str) -> int:
    """Length of the bytes a base64 string decodes to."""
    padding = b64[-2:].count("=") if b64 else 0
    return len(b64) * 3 // 4 - padding


def is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Email:
    """Everything a provider needs to send one message."""

    sender: Address
    to: tuple[Address, ...]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.sender.to_json(),
            "to": [a.to_json() for a in self.to],
            "cc": [a.to_json() for a in self.cc],
            "bcc": [a.to_json() for a in self.bcc],
            "reply_to": [a.to_json() for a in self.reply_to],
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "headers": dict(self.headers),
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "content": a.content}
                for a in self.attachments
            ],
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Email:
        def addresses(key: str) -> tuple[Address, ...]:
            return tuple(Address.from_json(a) for a in data.get(key) or ())

        return cls(
            sender=Address.from_json(data["from"]),
            to=addresses("to"),
            cc=addresses("cc"),
            bcc=addresses("bcc"),
            reply_to=addresses("reply_to"),
            subject=data["subject"],
            text=data.get("text"),
            html=data.get("html"),
            headers=dict(data.get("headers") or {}),
            attachments=tuple(
                Attachment(a["filename"], a["content_type"], a["content"])
                for a in data.get("attachments") or ()
            ),
            tags=tuple(data.get("tags") or ()),
            metadata=dict(data.get("metadata") or {}),
        )


def rfc3339(value: datetime | None) -> str | None:
    """A time as the API shows it: RFC 3339, UTC, milliseconds, `Z`."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of Crockford base32 characters, by the 10 bits they encode: an id's 26
# characters are 13 lookups (base64.b32encode, pure Python here, took three times as long).
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))


def _encode(millis: int, rest: bytes) -> str:
    """48 bits of `millis` then `rest`'s 80 as 26 Crockford base32 characters, most
    significant first, the last two bits zero (as RFC 4648 pads), so the text sorts as
    the bits do."""
    bits = (millis << 82) | (int.from_bytes(rest, "big") << 2)
    pairs = _PAIRS
    return "".join([pairs[(bits >> shift) & 1023] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    """A sortable unique id: `prefix_` + 26 Crockford base32 characters.

    48 bits of milliseconds then 80 random bits (a ULID's layout), so ids sort
    by creation time and "newest first" can page by id alone.
    """
    return f"{prefix}_{_encode(time.time_ns() // 1_000_000, os.urandom(10))}"


def first_id_at(prefix: str, at: datetime) -> str:
    """The smallest id `new_id` can make at `at`: ids made at `at` or later sort at or
    after it, so a time range is an id range (and walks the id indexes)."""
    millis = max(0, int(at.timestamp() * 1000))
    return f"{prefix}_{_encode(min(millis, 2**48 - 1), bytes(10))}"
