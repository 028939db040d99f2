"""Brevo's transactional webhooks: HTTP basic auth, one JSON object per event.

Brevo signs nothing. A webhook whose URL carries a basic-auth pair
(`https://user:password@host/v1/providers/<name>/webhook`, or Brevo's own
`auth` setting of type basic) sends it in `Authorization: Basic`, checked
here against `webhook_username` / `webhook_password`. A webhook created as
"batched" posts a JSON array of the same objects; both shapes are taken.

Mapping (`event` → kind): `delivered` → delivered; `deferred` →
deferred_by_provider; `hard_bounce`, `blocked` (Brevo refused to send:
blocklisted address) and `invalid_email` → hard bounce; `soft_bounce` →
soft bounce; `spam` / `complaint` → complained; `opened`, `unique_opened`,
`proxy_open`, `unique_proxy_open` → opened (a proxy open, e.g. Apple Mail
Privacy Protection, is flagged `proxy` in the detail); `click` → clicked;
`unsubscribed` → unsubscribed. `request` (accepted), `error` and others are
left out.

Brevo has no event id (`id` is the webhook's), so the key is a digest of
`message-id`, event, recipient and `ts_epoch` (and the link for a click).
`message-id` is the send answer's `messageId`, which the adapter keeps with
its angle brackets; a bare one is bracketed so the two always match. Our
message id is `mailgate_id` in the `X-Mailin-custom` JSON the adapter sends.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from mailgate.events.inbound import (
    BadWebhook,
    BasicAuthWebhook,
    EventKind,
    InboundEvent,
    Parsed,
    RawWebhook,
    digest,
    from_unix,
)

KINDS: dict[str, EventKind] = {
    "delivered": EventKind.DELIVERED,
    "deferred": EventKind.DEFERRED,
    "hard_bounce": EventKind.BOUNCED,
    "soft_bounce": EventKind.BOUNCED,
    "blocked": EventKind.BOUNCED,
    "invalid_email": EventKind.BOUNCED,
    "spam": EventKind.COMPLAINED,
    "complaint": EventKind.COMPLAINED,
    "opened": EventKind.OPENED,
    "unique_opened": EventKind.OPENED,
    "proxy_open": EventKind.OPENED,
    "unique_proxy_open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "unsubscribed": EventKind.UNSUBSCRIBED,
}
PROXY_OPENS = frozenset({"proxy_open", "unique_proxy_open"})
MILLISECONDS_FROM = 10**11
"""A `ts_epoch` above this is in milliseconds (as Brevo sends it), below in seconds
(as some of Brevo's own examples show it): 10^11 s is in the year 5138."""


class BrevoWebhook(BasicAuthWebhook):
    provider_type = "brevo"

    async def parse(self, request: RawWebhook) -> Parsed:
        data = request.json()
        raws = data if isinstance(data, list) else [data]
        events: list[InboundEvent] = []
        for raw in raws:
            if not isinstance(raw, dict):
                raise BadWebhook("a Brevo event is not a JSON object")
            name = raw.get("event")
            if not isinstance(name, str) or not name:
                raise BadWebhook("a Brevo event has no `event`")
            kind = KINDS.get(name)
            if kind is not None:
                events.append(_event(name, kind, raw))
        return Parsed(events)


def _event(name: str, kind: EventKind, raw: dict[str, Any]) -> InboundEvent:
    stamp, at = _when(name, raw)
    provider_id = _message_id(name, raw.get("message-id"))
    recipient = _text(raw.get("email"))
    link = _text(raw.get("link"))
    bounce: str | None = None
    detail: dict[str, Any] = {}
    reason = _text(raw.get("reason"))
    if reason is not None:
        reason = reason.strip() or None  # Brevo pads some reasons with a space
    if kind is EventKind.BOUNCED:
        bounce = "soft" if name == "soft_bounce" else "hard"
        if name != "hard_bounce":
            detail["event"] = name
    if kind is EventKind.CLICKED and link:
        detail["url"] = link
    if name in PROXY_OPENS:
        detail["proxy"] = True
    return InboundEvent(
        kind=kind,
        key=digest(provider_id, name, recipient, stamp, detail.get("url")),
        recipient=recipient,
        at=at,
        message_id=_ours(raw.get("X-Mailin-custom")),
        provider_message_id=provider_id,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _when(name: str, raw: dict[str, Any]) -> tuple[Any, datetime]:
    """The event's raw stamp and its time: `ts_epoch` (UTC), else `ts_event`, else `ts`.

    `date` is left alone: it is in the account's time zone, which the event
    does not say.
    """
    for field in ("ts_epoch", "ts_event", "ts"):
        value = raw.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise BadWebhook(f"{name} event: {field} is not a number")
        try:
            seconds = float(value)
            if field == "ts_epoch" and seconds >= MILLISECONDS_FROM:
                seconds /= 1000
            return value, from_unix(seconds)
        except (ValueError, OverflowError, OSError) as exc:
            raise BadWebhook(f"{name} event: {field} {value!r} is not a Unix time") from exc
    raise BadWebhook(f"{name} event without ts_epoch, ts_event or ts")


def _message_id(name: str, value: Any) -> str | None:
    """Brevo's message id in the adapter's form: `<...@smtp-relay.mailin.fr>`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadWebhook(f"{name} event: message-id is not a string")
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


def _ours(custom: Any) -> str | None:
    """`mailgate_id` from the `X-Mailin-custom` JSON, when the message was ours."""
    if not isinstance(custom, str):
        return None
    try:
        data = json.loads(custom)
    except ValueError:
        return None  # someone else's custom header: not an error in the event
    value = data.get("mailgate_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
