"""Mailjet's Event API: HTTP basic auth, one JSON object per event or an array of them.

Mailjet signs nothing; it recommends an HTTPS URL with a basic-auth pair in
it (`https://user:password@host/v1/providers/<name>/webhook`), checked here
against `webhook_username` / `webhook_password`. With event grouping
(Event API version 2) a request carries a JSON array of the last second's
events; without it, one object. Both are taken.

Mapping (`event` → kind): `sent` (the recipient's server took it) →
delivered; `bounce` with `hard_bounce` true → hard bounce, with it false →
soft bounce, except a greylisting (`error` "greylisted"), which Mailjet
retries itself → deferred_by_provider; `blocked` (Mailjet refused to send,
e.g. the address bounced before) → hard bounce; `spam` → complained;
`open` → opened; `click` → clicked; `unsub` → unsubscribed.

Mailjet events carry no event id, so the key is a digest of message id,
event, recipient and time (and the URL for a click). Our message id comes
back as `CustomID`. `MessageID` is Mailjet's id of the message *for that
recipient*: the send answer has one per recipient and the adapter keeps the
first `To` recipient's, so the event of that recipient carries exactly the
adapter's provider message id, and the others are matched by `CustomID`.
"""

from __future__ import annotations

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
    "sent": EventKind.DELIVERED,
    "bounce": EventKind.BOUNCED,
    "blocked": EventKind.BOUNCED,
    "spam": EventKind.COMPLAINED,
    "open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "unsub": EventKind.UNSUBSCRIBED,
}
GREYLISTED = "greylisted"
"""The bounce `error` of a temporary refusal Mailjet retries on its own."""


class MailjetWebhook(BasicAuthWebhook):
    provider_type = "mailjet"

    async def parse(self, request: RawWebhook) -> Parsed:
        data = request.json()
        raws = data if isinstance(data, list) else [data]
        events: list[InboundEvent] = []
        for raw in raws:
            if not isinstance(raw, dict):
                raise BadWebhook("a Mailjet event is not a JSON object")
            name = raw.get("event")
            if not isinstance(name, str) or not name:
                raise BadWebhook("a Mailjet event has no `event`")
            kind = KINDS.get(name)
            if kind is not None:
                events.append(_event(name, kind, raw))
        return Parsed(events)


def _event(name: str, kind: EventKind, raw: dict[str, Any]) -> InboundEvent:
    time = raw.get("time")
    if isinstance(time, bool) or not isinstance(time, int | float | str):
        raise BadWebhook(f"{name} event without a `time`")
    try:
        at = from_unix(time)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadWebhook(f"{name} event: time {time!r} is not a Unix time") from exc
    provider_id = _message_id(name, raw)
    recipient = _text(raw.get("email"))
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    url = _text(raw.get("url"))
    if name == "bounce":
        error = _text(raw.get("error"))
        reason = _reason(raw)
        if raw.get("hard_bounce") is True:
            bounce = "hard"
        elif error == GREYLISTED:
            kind = EventKind.DEFERRED
        else:
            bounce = "soft"
    elif name == "blocked":
        bounce = "hard"
        reason = _reason(raw) or "blocked by Mailjet"
    elif name == "spam":
        reason = _text(raw.get("source"))
    elif name == "sent" and _text(raw.get("smtp_reply")):
        detail["status"] = raw["smtp_reply"]
    if kind is EventKind.CLICKED and url:
        detail["url"] = url
    if _text(raw.get("agent")):
        detail["user_agent"] = raw["agent"]
    custom_id = _text(raw.get("CustomID"))
    return InboundEvent(
        kind=kind,
        key=digest(provider_id, name, recipient, time, detail.get("url")),
        recipient=recipient,
        at=at,
        message_id=custom_id,
        provider_message_id=provider_id,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _message_id(name: str, raw: dict[str, Any]) -> str | None:
    """`MessageID` as a decimal string (it is an int64: never through a float).

    Older and grouped payloads only have the deprecated `mj_message_id`
    string; the send answer's `MessageID` is the same number.
    """
    value = raw.get("MessageID")
    if value is None or value == 0:
        value = raw.get("mj_message_id")
    if value is None or value in ("", 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadWebhook(f"{name} event: MessageID {value!r} is not an integer")
    text = str(value)
    if not text.isdigit():
        raise BadWebhook(f"{name} event: MessageID {value!r} is not an integer")
    return text


def _reason(raw: dict[str, Any]) -> str | None:
    """`error_related_to: error` and Mailjet's `comment`, as far as they are given."""
    related, error = _text(raw.get("error_related_to")), _text(raw.get("error"))
    words = f"{related}: {error}" if related and error else (error or related)
    comment = _text(raw.get("comment"))
    if comment:
        words = f"{words} ({comment})" if words else comment
    return words


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
