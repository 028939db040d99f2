"""The contract between a provider's event webhook and the rest of mailgate.

Each provider type with an event webhook has a module in
`mailgate.providers.webhooks` with one `EventWebhook` subclass: `verify`
checks the provider's own signature or credentials on the raw bytes and
raises `WebhookRejected` (answered 401, nothing recorded); `parse` turns the
verified body into `InboundEvent`s, already normalised. Recording them
(once, matched to the message, recipients, statuses, suppressions, the
outbox) is `mailgate.events.record`'s job, never the provider module's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from mailgate.config import HttpProviderSettings

MAX_SKEW_SECONDS = 300.0
"""A signed timestamp further than this from now (either way) is refused."""


class EventKind(StrEnum):
    """The normalised event types (interface.md, "Delivery events from providers")."""

    DELIVERED = "delivered"
    DEFERRED = "deferred_by_provider"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"


class WebhookRejected(Exception):
    """The request is not provably from the provider: 401, and nothing is recorded.

    The message says why for the log; the answer to the caller stays generic.
    """


class BadWebhook(Exception):
    """A verified request whose body is not what the provider sends: 400, nothing recorded."""


class ProviderUnreachable(Exception):
    """Verifying or handling the request needed the provider (a certificate, a
    subscription confirmation) and it did not answer: 503, so the provider retries."""


@dataclass(frozen=True, slots=True)
class RawWebhook:
    """One request as it reached `POST /v1/providers/{name}/webhook`, untouched.

    `headers` has lower-case names. `url` is the full URL the provider
    posted to, as the provider saw it (Mandrill signs it).
    """

    url: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON; `BadWebhook` when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadWebhook(f"body is not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One provider event, normalised.

    `key` identifies the event for deduplication: the provider's own event id
    where it has one that is unique, otherwise `digest()` of the event's
    raw form. It is unique per provider name. `message_id` is our id when
    the event carries it (custom argument, metadata, header);
    `provider_message_id` is the provider's id for the message, as the send
    answer gave it (so the two can be matched). `recipient` is the address
    the event is about (lower-cased by the recorder). `bounce` is "hard" or
    "soft" for `bounced`; `reason` is the provider's words (bounce reason,
    deferral response, complaint feedback type). `detail` holds what else is
    worth keeping (a clicked `url`, an SMTP `status`, a user agent).
    """

    kind: EventKind
    key: str
    recipient: str | None
    at: datetime
    message_id: str | None = None
    provider_message_id: str | None = None
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one webhook request carried.

    `replay_key`: a one-time value of the signature scheme (Mailgun's token)
    that must never be accepted twice; the recorder keeps it and refuses a
    second request with the same one (401). `response`: what to answer
    instead of the usual `{"received": n}` (SNS subscription confirmation).
    """

    events: list[InboundEvent]
    replay_key: str | None = None
    response: dict[str, Any] | None = None


class EventWebhook(ABC):
    """A provider's event webhook: verify the request, then parse it."""

    provider_type: str

    @property
    @abstractmethod
    def configured(self) -> bool:
        """Whether the provider's settings hold what `verify` needs (else every request is 401)."""

    @abstractmethod
    async def verify(self, request: RawWebhook) -> None:
        """Raise `WebhookRejected` unless the request is signed or authorised by the provider."""

    @abstractmethod
    async def parse(self, request: RawWebhook) -> Parsed:
        """The normalised events of a verified request (may do I/O: SNS confirmation).

        Events of types mailgate does not track (SendGrid's `processed`,
        Mailgun's `accepted`) are left out; a body that is not the
        provider's shape raises `BadWebhook`.
        """

    async def close(self) -> None:  # noqa: B027 - most hold nothing
        """Release what `verify` or `parse` holds (an HTTP session)."""


# --- helpers the provider modules share ----------------------------------------------


def digest(*parts: Any) -> str:
    """A stable dedupe key from an event's raw parts (for providers without event ids)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def check_timestamp(value: str | float | int | None, now: float) -> float:
    """The signed Unix timestamp, or `WebhookRejected` when missing or more than 5 minutes off."""
    if value is None:
        raise WebhookRejected("no timestamp")
    try:
        ts = float(value)
    except (TypeError, ValueError) as exc:
        raise WebhookRejected(f"timestamp {value!r} is not a number") from exc
    if abs(now - ts) > MAX_SKEW_SECONDS:
        raise WebhookRejected(f"timestamp {ts:.0f} is {now - ts:+.0f}s from now")
    return ts


def basic_auth_matches(request: RawWebhook, username: str, password: str) -> bool:
    """Whether the request's `Authorization: Basic` pair is exactly this one (constant time)."""
    header = request.header("authorization") or ""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return False
    expected = f"{username}:{password}".encode()
    return hmac.compare_digest(given, expected)


class BasicAuthWebhook(EventWebhook):
    """A provider that proves itself with an HTTP basic-auth pair (Postmark, Mailjet,
    SparkPost, Brevo): `webhook_username` and `webhook_password`, both required."""

    def __init__(self, settings: HttpProviderSettings, **_options: Any) -> None:
        self.name = settings.name
        self._username = settings.webhook_username or None
        password = settings.webhook_password
        self._password = (password.get_secret_value() or None) if password is not None else None

    @property
    def configured(self) -> bool:
        return self._username is not None and self._password is not None

    async def verify(self, request: RawWebhook) -> None:
        if self._username is None or self._password is None:
            raise WebhookRejected(
                f"{self.name}: webhook_username and webhook_password are not both set"
            )
        header = request.header("authorization")
        if not header:
            raise WebhookRejected("no Authorization header")
        if header.partition(" ")[0].lower() != "basic":
            raise WebhookRejected("Authorization is not Basic")
        if not basic_auth_matches(request, self._username, self._password):
            raise WebhookRejected(
                "basic-auth pair does not match webhook_username/webhook_password"
            )


def from_unix(value: float | int | str) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def from_iso(value: str) -> datetime:
    """An ISO 8601 time as providers write it (`Z` or an offset); naive means UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
