"""Mailgun's webhooks: HMAC-SHA256(signing key, timestamp + token), one event per request.

The current format is a JSON object `{"signature": {timestamp, token,
signature}, "event-data": {...}}`; the legacy one posts form fields
(`timestamp`, `token`, `signature` beside the event's own fields, custom
variables as top-level fields) and is signed the same way. Only the
URL-encoded legacy form is read (not the multipart one Mailgun used for
legacy bounces with attachments).

The signature covers no body bytes, only the timestamp and the 50-character
token, so the token is handed to the recorder as `replay_key`: a request
whose token was already taken is refused. `event-data.id` is only unique
within a day, so the dedupe key is a digest of id, timestamp and recipient.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from mailgate.config import MailgunSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    EventWebhook,
    InboundEvent,
    Parsed,
    RawWebhook,
    WebhookRejected,
    check_timestamp,
    digest,
    from_unix,
)

TRACKED = frozenset(
    {"delivered", "failed", "rejected", "complained", "opened", "clicked", "unsubscribed"}
)
"""Current-format events mailgate records; `accepted`, `stored` and the rest are left out."""
LEGACY_KINDS: dict[str, EventKind] = {
    "delivered": EventKind.DELIVERED,
    "bounced": EventKind.BOUNCED,
    "dropped": EventKind.BOUNCED,
    "complained": EventKind.COMPLAINED,
    "opened": EventKind.OPENED,
    "clicked": EventKind.CLICKED,
    "unsubscribed": EventKind.UNSUBSCRIBED,
}
GAVE_UP = "old"
"""The `reason` of a permanent failure after Mailgun retried temporary ones for hours.

The address was never refused for good (a full mailbox, a greylisting
server), so it is a soft bounce, not a hard one that suppresses the address.
"""


@dataclass(frozen=True, slots=True)
class _Body:
    signature: Mapping[str, Any]
    event: Mapping[str, Any] | None
    """`event-data` of the current format."""
    form: Mapping[str, str] | None
    """The fields of a legacy form post."""


def _read(body: bytes) -> _Body:
    """The signature block and event of either format; `ValueError` when it is neither."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        signature = data.get("signature")
        if not isinstance(signature, dict):
            raise ValueError("no `signature` object")
        event = data.get("event-data")
        return _Body(signature, event if isinstance(event, dict) else None, None)
    if data is not None:
        raise ValueError("JSON body is not an object")
    fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    form = {k: v[0] for k, v in fields.items()}
    return _Body(form, None, form)


class MailgunWebhook(EventWebhook):
    provider_type = "mailgun"

    def __init__(self, settings: MailgunSettings, **options: Any) -> None:
        """`options` are what the registry offers every webhook; this one needs none."""
        self.name = settings.name
        secret = settings.webhook_secret
        self._key = secret.get_secret_value().encode() if secret is not None else None

    @property
    def configured(self) -> bool:
        return bool(self._key)

    async def verify(self, request: RawWebhook) -> None:
        if not self._key:
            raise WebhookRejected(f"{self.name}: webhook_secret (webhook signing key) is not set")
        try:
            signed = _read(request.body).signature
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(f"no Mailgun signature in the body: {exc}") from None
        timestamp, token = signed.get("timestamp"), signed.get("token")
        if isinstance(timestamp, int) and not isinstance(timestamp, bool):
            timestamp = str(timestamp)
        if not isinstance(timestamp, str) or not isinstance(token, str) or not token:
            raise WebhookRejected("signature block without timestamp and token")
        check_timestamp(timestamp, request.received_at)
        expected = hmac.new(self._key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        # A subaccount's events carry the parent account's signature too; either key will do.
        given = [signed.get("signature"), signed.get("parent-signature")]
        if not any(
            isinstance(g, str) and hmac.compare_digest(expected.encode(), g.lower().encode())
            for g in given
        ):
            raise WebhookRejected("signature does not match the webhook signing key")

    async def parse(self, request: RawWebhook) -> Parsed:
        try:
            body = _read(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadWebhook(f"not a Mailgun webhook body: {exc}") from None
        token = body.signature.get("token")
        replay_key = token if isinstance(token, str) and token else None
        if body.form is not None:
            legacy = _legacy_event(body.form)
            return Parsed([legacy] if legacy is not None else [], replay_key=replay_key)
        if body.event is None:
            raise BadWebhook("no `event-data` object")
        event = _event(body.event)
        return Parsed([event] if event is not None else [], replay_key=replay_key)


def _event(data: Mapping[str, Any]) -> InboundEvent | None:
    name = data.get("event")
    if not isinstance(name, str):
        raise BadWebhook("event-data without an `event` name")
    if name not in TRACKED:
        return None
    raw_ts = data.get("timestamp")
    at = _when(name, raw_ts)
    recipient = _text(data.get("recipient"))
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id_header = headers.get("message-id") if isinstance(headers, dict) else None
    variables = data.get("user-variables")
    mailgate_id = variables.get("mailgate_id") if isinstance(variables, dict) else None
    status = data.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    said = _text(status.get("description")) or _text(status.get("message"))
    kind: EventKind
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    if isinstance(status.get("code"), int):
        detail["status"] = status["code"]
    if name == "delivered":
        kind = EventKind.DELIVERED
    elif name == "failed" and data.get("severity") == "temporary":
        kind, reason = EventKind.DEFERRED, said or _text(data.get("reason"))
    elif name == "failed":
        kind, reason = EventKind.BOUNCED, said or _text(data.get("reason"))
        bounce = "soft" if data.get("reason") == GAVE_UP else "hard"
    elif name == "rejected":
        reject = data.get("reject")
        reject = reject if isinstance(reject, dict) else {}
        kind, bounce = EventKind.BOUNCED, "hard"
        reason = _text(reject.get("description")) or _text(reject.get("reason")) or "rejected"
    elif name == "complained":
        kind = EventKind.COMPLAINED
    elif name == "opened":
        kind = EventKind.OPENED
    elif name == "clicked":
        kind = EventKind.CLICKED
        if isinstance(data.get("url"), str):
            detail["url"] = data["url"]
    else:
        kind = EventKind.UNSUBSCRIBED
    client = data.get("client-info")
    if isinstance(client, dict) and isinstance(client.get("user-agent"), str):
        detail["user_agent"] = client["user-agent"]
    return InboundEvent(
        kind=kind,
        key=digest(data.get("id"), raw_ts, recipient),
        recipient=recipient,
        at=at,
        message_id=_text(mailgate_id),
        provider_message_id=_message_id(message_id_header),
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _legacy_event(form: Mapping[str, str]) -> InboundEvent | None:
    """One event of a legacy form post (custom variables are top-level fields there)."""
    name = form.get("event")
    if not name:
        raise BadWebhook("legacy webhook without an `event` field")
    kind = LEGACY_KINDS.get(name)
    if kind is None:
        return None
    at = _when(name, form.get("timestamp"))
    recipient = _text(form.get("recipient"))
    message_id_header = form.get("Message-Id") or form.get("message-id")
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    if kind is EventKind.BOUNCED:
        bounce = "soft" if form.get("reason") == GAVE_UP else "hard"
        reason = (
            _text(form.get("error"))
            or _text(form.get("description"))
            or _text(form.get("reason"))
            or _text(form.get("code"))
        )
    if form.get("code", "").isdigit():
        detail["status"] = int(form["code"])
    if kind is EventKind.CLICKED and form.get("url"):
        detail["url"] = form["url"]
    return InboundEvent(
        kind=kind,
        # The legacy format has no event id: the event's own parts identify it.
        key=digest(name, message_id_header, recipient, form.get("timestamp")),
        recipient=recipient,
        at=at,
        message_id=_text(form.get("mailgate_id")),
        provider_message_id=_message_id(message_id_header),
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _when(name: str, value: Any) -> datetime:
    try:
        return from_unix(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadWebhook(f"{name} event without a Unix `timestamp`") from exc


def _message_id(value: Any) -> str | None:
    """The Message-Id as the adapter stores the send answer's `id`: without angle brackets."""
    if not isinstance(value, str):
        return None
    return value.strip().strip("<>") or None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
