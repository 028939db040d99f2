"""What moves in and out of the queue: plain frozen records, no SQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailgate.message import Email, EventType, Outcome, Status, rfc3339


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message about to be accepted."""

    id: str
    tenant_id: str
    email: Email
    created_at: datetime
    send_at: datetime | None = None
    forced_provider: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    daily_quota: int | None = None
    """The tenant's daily quota when it has one: counted in the same transaction."""
    together: str | None = None
    """Messages sharing this mark are counted against the quota all or none (one request
    that makes several messages, such as SendGrid's personalizations)."""

    @property
    def status(self) -> Status:
        return Status.SCHEDULED if self.send_at is not None else Status.QUEUED

    def first_event(self) -> tuple[EventType, dict[str, Any]]:
        """The event that opens its history: `accepted`, or `scheduled` with the time."""
        detail: dict[str, Any] = {}
        if self.send_at is not None:
            detail["send_at"] = rfc3339(self.send_at)
        if self.forced_provider:
            detail["provider"] = self.forced_provider
        kind = EventType.SCHEDULED if self.send_at is not None else EventType.ACCEPTED
        return kind, detail


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to one accept: the message's id and whether this call created it.

    `created` is false when an earlier call with the same idempotency key
    (and the same body) already created it.
    """

    id: str
    status: Status
    created: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message a worker now holds a lease on."""

    id: str
    tenant_id: str
    email: Email
    window_start: datetime
    rounds: int
    forced_provider: str | None
    suppressed: frozenset[str] = frozenset()
    """Its recipients on the tenant's suppression list (lower case): dropped before the send."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    provider: str | None
    started_at: datetime
    duration_ms: int
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    type: EventType
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finish:
    """How one delivery round of a claimed message ended.

    `status` is `sent`, `failed` or `queued` (retry later at `next_attempt_at`).
    """

    message_id: str
    lease_owner: str
    status: Status
    rounds: int
    attempts: tuple[AttemptRecord, ...] = ()
    events: tuple[EventRecord, ...] = ()
    provider: str | None = None
    provider_message_id: str | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    suppressed: tuple[str, ...] = ()
    """Recipients dropped because they are suppressed (their state becomes `suppressed`)."""
    tenant_id: str | None = None
    """The message's tenant, for the webhooks its end is reported to (None: reported to none)."""


@dataclass(frozen=True, slots=True)
class AttemptView:
    provider: str | None
    started_at: datetime
    duration_ms: int
    outcome: str
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class EventView:
    type: str
    at: datetime
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RecipientView:
    """One to/cc/bcc address and what the provider's events said about it."""

    email: str
    status: str
    at: datetime | None
    detail: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """A message as the status API shows it (history only when read one at a time)."""

    id: str
    tenant_id: str
    status: str
    envelope: Mapping[str, Any]
    send_at: datetime | None
    provider: str | None
    provider_message_id: str | None
    forced_provider: str | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempts: tuple[AttemptView, ...] = ()
    events: tuple[EventView, ...] = ()
    recipients: tuple[RecipientView, ...] = ()
