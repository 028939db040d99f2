"""Mandrill's webhooks: `X-Mandrill-Signature`, a form post of `mandrill_events`.

The signature is base64(HMAC-SHA1(webhook key, signed data)); the signed
data is the webhook URL exactly as registered at Mandrill followed by each
POST parameter, sorted by name, written as name then value. The URL is
`RawWebhook.url`, the one the request was posted to; a proxy that rewrites
the host or scheme on the way makes every signature fail. The key is the
webhook's own "authentication key", not the API key.

The scheme has no timestamp, so nothing can be refused as stale; a replayed
request records nothing new because every event's key (a digest of its
`_id`, `event` and `ts`) is already taken. Sync events (`type` instead of
`event`) and inbound mail are left out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from mailgate.config import MandrillSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    EventWebhook,
    InboundEvent,
    Parsed,
    RawWebhook,
    WebhookRejected,
    digest,
    from_unix,
)

SIGNATURE_HEADER = "X-Mandrill-Signature"
KINDS: dict[str, EventKind] = {
    "send": EventKind.DELIVERED,
    "deferral": EventKind.DEFERRED,
    "hard_bounce": EventKind.BOUNCED,
    "soft_bounce": EventKind.BOUNCED,
    "reject": EventKind.BOUNCED,
    "spam": EventKind.COMPLAINED,
    "open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "unsub": EventKind.UNSUBSCRIBED,
}
"""Mandrill event → mailgate kind. Mandrill has no event for the recipient's server
taking the message: `send` (it left Mandrill) is the nearest to delivered."""


def signature(key: str, url: str, params: list[tuple[str, str]]) -> str:
    """Mandrill's signature of a post of `params` to `url`."""
    signed = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    mac = hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def _params(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)


class MandrillWebhook(EventWebhook):
    provider_type = "mandrill"

    def __init__(self, settings: MandrillSettings, **options: Any) -> None:
        """`options` are what the registry offers every webhook; this one needs none."""
        self.name = settings.name
        secret = settings.webhook_secret
        self._key = secret.get_secret_value() if secret is not None else None

    @property
    def configured(self) -> bool:
        return bool(self._key)

    async def verify(self, request: RawWebhook) -> None:
        if not self._key:
            raise WebhookRejected(f"{self.name}: webhook_secret (webhook key) is not set")
        given = request.header(SIGNATURE_HEADER)
        if not given:
            raise WebhookRejected("no X-Mandrill-Signature header")
        try:
            params = _params(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(f"body is not a form post: {exc}") from None
        expected = signature(self._key, request.url, params)
        if not hmac.compare_digest(expected.encode(), given.strip().encode()):
            # The URL may carry basic-auth userinfo: it stays out of the message.
            raise WebhookRejected(
                "signature does not match the webhook key and URL "
                "(the URL posted to must be exactly the one registered at Mandrill)"
            )

    async def parse(self, request: RawWebhook) -> Parsed:
        try:
            params = dict(_params(request.body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadWebhook(f"body is not a form post: {exc}") from None
        if "mandrill_events" not in params:
            raise BadWebhook("no mandrill_events field")
        try:
            data = json.loads(params["mandrill_events"])
        except ValueError as exc:
            raise BadWebhook(f"mandrill_events is not JSON: {exc}") from None
        if not isinstance(data, list):
            raise BadWebhook("mandrill_events is not a JSON array")
        events: list[InboundEvent] = []
        for raw in data:
            if not isinstance(raw, dict):
                raise BadWebhook("an event is not an object")
            name = raw.get("event")
            kind = KINDS.get(name) if isinstance(name, str) else None
            if kind is not None:
                events.append(_event(kind, raw))
        return Parsed(events)


def _event(kind: EventKind, raw: dict[str, Any]) -> InboundEvent:
    name = raw["event"]
    msg = raw.get("msg")
    if not isinstance(msg, dict):
        raise BadWebhook(f"{name} event without a `msg` object")
    at = _when(name, raw.get("ts"))
    event_id = _text(raw.get("_id")) or _text(msg.get("_id"))
    metadata = msg.get("metadata")
    mailgate_id = metadata.get("mailgate_id") if isinstance(metadata, dict) else None
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    if kind is EventKind.BOUNCED:
        bounce = "soft" if name == "soft_bounce" else "hard"
        reason = _text(msg.get("diag")) or _text(msg.get("bounce_description"))
        if name == "reject":
            reason = reason or "rejected by Mandrill (rejection list or rule)"
        if _text(msg.get("bounce_description")):
            detail["bounce_description"] = msg["bounce_description"]
    elif kind is EventKind.DEFERRED:
        smtp_events = msg.get("smtp_events")
        last = smtp_events[-1] if isinstance(smtp_events, list) and smtp_events else None
        reason = _text(last.get("diag")) if isinstance(last, dict) else None
    if kind is EventKind.CLICKED and isinstance(raw.get("url"), str):
        detail["url"] = raw["url"]
    if isinstance(raw.get("user_agent"), str):
        detail["user_agent"] = raw["user_agent"]
    return InboundEvent(
        kind=kind,
        key=digest(raw.get("_id"), name, raw.get("ts")),
        recipient=_text(msg.get("email")),
        at=at,
        message_id=_text(mailgate_id),
        # Each recipient has its own `_id`; the send answer's first one is the stored id.
        provider_message_id=event_id,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _when(name: str, value: Any) -> datetime:
    try:
        return from_unix(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadWebhook(f"{name} event without a Unix `ts`") from exc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
