"""SparkPost's webhooks: HTTP basic auth, a JSON array of `{"msys": {<class>: event}}`.

SparkPost signs nothing. A webhook created with `auth_type` "basic" and
`auth_credentials` {username, password} sends that pair in `Authorization:
Basic`, checked here against `webhook_username` / `webhook_password`. An
element `{"msys": {}}` is the ping SparkPost sends when the webhook is
created or validated: it carries no event.

Mapping (`type` → kind): `delivery` → delivered; `delay` →
deferred_by_provider; `bounce` and `out_of_band` → bounced, hard or soft by
`bounce_class` (`HARD_CLASSES`; auto-replies and subscribe requests are
not failures and are left out); `spam_complaint` → complained; `open`,
`initial_open`, `amp_open`, `amp_initial_open` → opened; `click`,
`amp_click` → clicked; `list_unsubscribe`, `link_unsubscribe` →
unsubscribed. Injection, policy and generation events are left out.

Every event has a unique `event_id`, the key. `transmission_id` is the send
answer's `results.id`, the adapter's provider message id; our message id is
`rcpt_meta.mailgate_id` (the transmission's metadata, merged into each
recipient's).
"""

from __future__ import annotations

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
    from_iso,
    from_unix,
)

KINDS: dict[str, EventKind] = {
    "delivery": EventKind.DELIVERED,
    "delay": EventKind.DEFERRED,
    "bounce": EventKind.BOUNCED,
    "out_of_band": EventKind.BOUNCED,
    "spam_complaint": EventKind.COMPLAINED,
    "open": EventKind.OPENED,
    "initial_open": EventKind.OPENED,
    "amp_open": EventKind.OPENED,
    "amp_initial_open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "amp_click": EventKind.CLICKED,
    "list_unsubscribe": EventKind.UNSUBSCRIBED,
    "link_unsubscribe": EventKind.UNSUBSCRIBED,
}
HARD_CLASSES = frozenset({"10", "30", "90"})
"""SparkPost's "Hard" bounce category: invalid recipient, generic bounce with no
RCPT, unsubscribe. Soft (20-24, 40, 70, 100), block (50-54: about the sender or
content, not the address), admin (25) and undetermined (1) classes are soft."""
NOT_FAILURES = frozenset({"60", "80"})
"""Auto-reply and subscribe request: the message arrived; not a bounce."""


class SparkPostWebhook(BasicAuthWebhook):
    provider_type = "sparkpost"

    async def parse(self, request: RawWebhook) -> Parsed:
        batch = request.json()
        if not isinstance(batch, list):
            raise BadWebhook("SparkPost posts a JSON array of msys events")
        events: list[InboundEvent] = []
        for element in batch:
            msys = element.get("msys") if isinstance(element, dict) else None
            if not isinstance(msys, dict):
                raise BadWebhook('an element of the batch is not {"msys": {...}}')
            for raw in msys.values():  # one event class per element; {} is a ping
                if not isinstance(raw, dict):
                    raise BadWebhook("an msys event is not an object")
                event = _event(raw)
                if event is not None:
                    events.append(event)
        return Parsed(events)


def _event(raw: dict[str, Any]) -> InboundEvent | None:
    name = raw.get("type")
    if not isinstance(name, str) or not name:
        raise BadWebhook("an msys event has no `type`")
    kind = KINDS.get(name)
    if kind is None:
        return None
    at = _when(name, raw.get("timestamp"))
    recipient = _text(raw.get("rcpt_to")) or _text(raw.get("raw_rcpt_to"))
    transmission = raw.get("transmission_id")
    if transmission is not None and not isinstance(transmission, str | int):
        raise BadWebhook(f"{name} event: transmission_id is not a string")
    rcpt_meta = raw.get("rcpt_meta")
    if rcpt_meta is not None and not isinstance(rcpt_meta, dict):
        raise BadWebhook(f"{name} event: rcpt_meta is not an object")
    ours = rcpt_meta.get("mailgate_id") if rcpt_meta else None
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    if kind is EventKind.BOUNCED:
        bounce_class = str(raw.get("bounce_class") or "")
        if bounce_class in NOT_FAILURES:
            return None
        bounce = "hard" if bounce_class in HARD_CLASSES else "soft"
        if bounce_class:
            detail["bounce_class"] = bounce_class
    if kind in (EventKind.BOUNCED, EventKind.DEFERRED):
        reason = _text(raw.get("raw_reason")) or _text(raw.get("reason"))
        if raw.get("error_code") is not None:
            detail["status"] = str(raw["error_code"])
    elif kind is EventKind.COMPLAINED:
        reason = _text(raw.get("fbtype")) or _text(raw.get("report_by"))
    if kind is EventKind.CLICKED and _text(raw.get("target_link_url")):
        detail["url"] = raw["target_link_url"]
    if _text(raw.get("user_agent")):
        detail["user_agent"] = raw["user_agent"]
    event_id = raw.get("event_id")
    key = (
        str(event_id)
        if isinstance(event_id, str | int) and not isinstance(event_id, bool) and event_id != ""
        else digest(transmission, name, recipient, raw.get("timestamp"))
    )
    return InboundEvent(
        kind=kind,
        key=key,
        recipient=recipient,
        at=at,
        message_id=ours if isinstance(ours, str) and ours else None,
        provider_message_id=str(transmission) if transmission not in (None, "") else None,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _when(name: str, value: Any) -> datetime:
    """Webhooks give Unix seconds as a string; the events API an ISO 8601 time."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        raise BadWebhook(f"{name} event without a `timestamp`")
    try:
        if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
            return from_iso(value)
        return from_unix(value)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadWebhook(f"{name} event: timestamp {value!r} is not a time") from exc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
