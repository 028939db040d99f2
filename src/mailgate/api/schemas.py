"""The JSON shapes of the HTTP API (`reference/interface.md`), validated with pydantic.

`MessageIn` checks everything a provider would later refuse, so a bad
message is refused at once with a 4xx naming the field, and nothing is
stored: addresses (email-validator, no DNS), CR/LF anywhere in a header
value or address, at most 50 recipients per field, bodies up to 10 MB,
attachments up to 25 MB in all, header names and reserved headers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from mailgate.api.addresses import (
    AddressError,
    check_no_control,
    clean_name,
    normalize_email,
    parse_address,
)
from mailgate.errors import InvalidRequest, PayloadTooLarge
from mailgate.message import Address, Attachment, Email, decoded_size, is_base64

MAX_RECIPIENTS_PER_FIELD = 50
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
MAX_SCHEDULE_AHEAD = timedelta(days=366)

# Headers mailgate writes itself from the message's fields, or that providers refuse.
RESERVED_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "subject", "sender", "date", "message-id",
        "mime-version", "content-type", "content-transfer-encoding", "received",
        "dkim-signature", "return-path",
    }
)  # fmt: skip
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,126}$")  # printable ASCII without ':' (RFC 5322 ftext)
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;.*)?$")

_ADDRESS_SCHEMA = {
    "anyOf": [
        {"type": "string", "examples": ["Ada Lovelace <ada@example.com>"]},
        {
            "type": "object",
            "properties": {"email": {"type": "string"}, "name": {"type": "string"}},
            "required": ["email"],
        },
    ]
}


def _address(value: Any) -> Address:
    try:
        if isinstance(value, str):
            return parse_address(value)
        if isinstance(value, dict):
            unknown = set(value) - {"email", "name"}
            if unknown:
                raise AddressError(f"unknown address key {sorted(unknown)[0]!r}")
            email, name = value.get("email"), value.get("name")
            if not isinstance(email, str) or not (name is None or isinstance(name, str)):
                raise AddressError("an address object is {'email': str, 'name': str}")
            return Address(email=normalize_email(email), name=clean_name(name))
    except AddressError as exc:
        raise ValueError(str(exc)) from None
    raise ValueError("an address is a string or an object with 'email' and 'name'")


def _listify(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _single_line(value: str) -> str:
    try:
        return check_no_control(value)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


AddressField = Annotated[Address, BeforeValidator(_address), WithJsonSchema(_ADDRESS_SCHEMA)]
AddressList = Annotated[
    list[AddressField],
    BeforeValidator(_listify),
    Field(max_length=MAX_RECIPIENTS_PER_FIELD),
    WithJsonSchema({"anyOf": [_ADDRESS_SCHEMA, {"type": "array", "items": _ADDRESS_SCHEMA}]}),
]
SingleLine = Annotated[str, AfterValidator(_single_line)]


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header field name")
    lowered = name.lower()
    if lowered in RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set from the message's own fields; use those")
    if lowered.startswith("x-mailgate-"):
        raise ValueError(f"header {name!r}: X-Mailgate-* headers are mailgate's own")
    return name


def _header_value(value: str) -> str:
    _single_line(value.replace("\t", " "))  # folding whitespace is fine, line breaks are not
    return value


def _metadata_key(key: str) -> str:
    if not _METADATA_KEY.match(key):
        raise ValueError(f"metadata key {key!r} must be 1-128 of A-Z a-z 0-9 _ . -")
    if key in ("mailgate_id", "mailgate_tags"):
        raise ValueError(f"metadata key {key!r} is mailgate's own")
    return key


def _metadata_size(metadata: dict[str, str]) -> dict[str, str]:
    if sum(len(k) + len(v) for k, v in metadata.items()) > 8000:
        raise ValueError("metadata is larger than 8000 characters in all")
    return metadata


HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, Field(max_length=998), AfterValidator(_header_value)]
MetadataKey = Annotated[str, AfterValidator(_metadata_key)]
MetadataValue = Annotated[str, Field(max_length=1000), AfterValidator(_single_line)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AttachmentIn(_Model):
    filename: Annotated[SingleLine, Field(min_length=1, max_length=255)]
    content_type: Annotated[SingleLine, Field(max_length=255, pattern=_CONTENT_TYPE.pattern)] = (
        "application/octet-stream"
    )
    content: Annotated[str, Field(description="base64")]

    def to_attachment(self) -> Attachment:
        return Attachment(
            filename=self.filename, content_type=self.content_type, content=self.content
        )


class MessageIn(_Model):
    """A message to send (`POST /v1/messages`)."""

    sender: AddressField | None = Field(default=None, alias="from")
    """Absent: the tenant's `default_from`."""
    to: Annotated[AddressList, Field(min_length=1)]
    cc: AddressList = Field(default_factory=list)
    bcc: AddressList = Field(default_factory=list)
    reply_to: AddressList = Field(default_factory=list)
    subject: Annotated[SingleLine, Field(min_length=1, max_length=998)]
    text: str | None = None
    html: str | None = None
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=50)] = Field(
        default_factory=dict
    )
    attachments: Annotated[list[AttachmentIn], Field(max_length=100)] = Field(default_factory=list)
    tags: Annotated[
        list[Annotated[SingleLine, Field(min_length=1, max_length=128)]], Field(max_length=10)
    ] = Field(default_factory=list)
    metadata: Annotated[
        dict[MetadataKey, MetadataValue], Field(max_length=50), AfterValidator(_metadata_size)
    ] = Field(default_factory=dict)
    send_at: datetime | None = None
    provider: str | None = None

    def to_email(self, default_from: Address | None = None) -> Email:
        """The message as mailgate keeps it; raises a `RequestError` naming the field.

        `default_from` is the sender when the message names none.
        """
        sender = self.sender or default_from
        if sender is None:
            raise InvalidRequest(
                "from: this field is required (the tenant has no default_from)", field="from"
            )
        if self.text is None and self.html is None:
            raise InvalidRequest("give text or html (or both)", field="text")
        body_bytes = sum(len(b.encode()) for b in (self.text, self.html) if b is not None)
        if body_bytes > MAX_BODY_BYTES:
            field = (
                "html"
                if self.html is not None and len(self.html) > len(self.text or "")
                else "text"
            )
            raise PayloadTooLarge(
                f"text and html are {body_bytes} bytes; the limit is 10 MB", field=field
            )
        total = 0
        for i, attachment in enumerate(self.attachments):
            if not is_base64(attachment.content):
                raise InvalidRequest(
                    "content is not valid base64", field=f"attachments[{i}].content"
                )
            total += decoded_size(attachment.content)
        if total > MAX_ATTACHMENT_BYTES:
            raise PayloadTooLarge(
                f"attachments are {total} bytes in all; the limit is 25 MB", field="attachments"
            )
        return Email(
            sender=sender,
            to=tuple(self.to),
            cc=tuple(self.cc),
            bcc=tuple(self.bcc),
            reply_to=tuple(self.reply_to),
            subject=self.subject,
            text=self.text,
            html=self.html,
            headers=self.headers,
            attachments=tuple(a.to_attachment() for a in self.attachments),
            tags=tuple(dict.fromkeys(self.tags)),
            metadata=self.metadata,
        )

    def schedule(self, now: datetime) -> datetime | None:
        """`send_at` as a UTC time, or None to send now; raises when it is unusable."""
        if self.send_at is None:
            return None
        if self.send_at.tzinfo is None:
            raise InvalidRequest("send_at needs a time zone (RFC 3339, e.g. ...Z)", field="send_at")
        when = self.send_at.astimezone(UTC)
        if when - now > MAX_SCHEDULE_AHEAD:
            raise InvalidRequest("send_at is more than 366 days ahead", field="send_at")
        return when if when > now else None


class BatchIn(_Model):
    messages: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)]


class ValidBatchIn(_Model):
    """A batch whose every message is valid, validated from the JSON in one pass.

    The batch route tries it first: pydantic-core validating the list from the
    request's bytes took two thirds of the time of parsing to dicts and validating
    each (`BatchIn`, then `MessageIn` per item). A batch with any refused message
    goes the per-item way, which names each refusal.
    """

    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=1000)]


class AttemptOut(_Model):
    provider: str | None
    started_at: datetime
    duration_ms: int
    outcome: str
    status_code: int | None = None
    error: str | None


class EventOut(_Model):
    type: str
    at: datetime
    detail: dict[str, Any]


class RecipientOut(_Model):
    email: str
    status: str
    at: datetime | None
    detail: dict[str, Any] | None


class MessageOut(_Model):
    id: str
    tenant_id: str
    status: str
    sender: dict[str, Any] = Field(alias="from")
    to: list[dict[str, Any]]
    cc: list[dict[str, Any]]
    bcc: list[dict[str, Any]]
    reply_to: list[dict[str, Any]]
    subject: str
    tags: list[str]
    metadata: dict[str, str]
    send_at: datetime | None
    provider: str | None
    provider_message_id: str | None
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    attempts: list[AttemptOut] | None = None
    events: list[EventOut] | None = None
    recipients: list[RecipientOut] | None = None


class MessageList(_Model):
    data: list[MessageOut]
    next_cursor: str | None


class BatchItemOut(_Model):
    index: int
    id: str | None = None
    status: str | None = None
    error: ErrorBody | None = None


class BatchOut(_Model):
    data: list[BatchItemOut]


class ErrorBody(_Model):
    code: str
    message: str
    field: str | None


class ErrorOut(_Model):
    error: ErrorBody


class BreakerOut(_Model):
    state: Literal["closed", "open", "half_open"]
    changed_at: datetime | None
    cooldown_seconds: float
    window_seconds: float
    min_calls: int
    failure_ratio: float
    half_open_calls: int


class HealthOut(_Model):
    score: int
    status: Literal["healthy", "degraded", "down", "disabled"]


class LimitsOut(_Model):
    rate_limit: str | None
    daily_quota: int | None
    used_today: int


class ProbeOut(_Model):
    every_seconds: float | None
    last_at: datetime | None
    error: str | None


class ProviderOut(_Model):
    name: str
    type: str
    enabled: bool
    priority: int
    weight: int
    health: HealthOut
    breaker: BreakerOut
    success_rate: float | None
    attempts_recent: int
    last_error: str | None
    last_error_at: datetime | None
    paused_until: datetime | None
    limits: LimitsOut
    probe: ProbeOut
    simulated_failure: str


class ProviderList(_Model):
    data: list[ProviderOut]


class ProviderEventList(_Model):
    data: list[EventOut]


class SimulateIn(_Model):
    mode: Literal["off", "error", "timeout"]


class RetryIn(_Model):
    """Bulk retry (`POST /v1/messages/retry`): the failed messages matching every filter given."""

    status: Literal["failed"] = "failed"
    """Only failed mail can be retried; the field is there to say so."""
    provider: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")] | None
    ) = None
    tag: (
        Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")] | None
    ) = None
    to: (
        Annotated[str, Field(min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f]*$")] | None
    ) = None
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False
    """Count the matching messages and change nothing."""
    tenant: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-]{1,64}|\*)$")] | None = None
    """Admin keys: another tenant's id, or * for every tenant's."""


class RetryOut(_Model):
    matched: int
    retried: int


BatchItemOut.model_rebuild()
