"""Postmark's webhooks: HTTP basic auth, one JSON object per event (`RecordType`).

Postmark signs nothing. What proves a request is Postmark's is the
basic-auth pair put in the webhook URL at Postmark
(`https://user:password@host/v1/providers/<name>/webhook`), checked here
against `webhook_username` / `webhook_password`. The scheme has no
timestamp, so nothing can be refused as stale; a replayed request records
nothing new because every event's key is already taken.

Mapping (`RecordType` → kind): `Delivery` → delivered; `Bounce` by its
`Type` (below); `SpamComplaint` → complained; `Open` → opened; `Click` →
clicked; `SubscriptionChange` that suppresses sending for a
`ManualSuppression` → unsubscribed (the other reasons, a hard bounce or a
complaint, already came as their own `Bounce` / `SpamComplaint` event, and a
reactivation is not an event mailgate tracks). Bounces and complaints are
keyed by Postmark's bounce `ID`; the other records, which have no id, by a
digest of message id, record type, recipient and time.

Our message id comes back in `Metadata.mailgate_id`; `MessageID` is the
send answer's `MessageID`, the adapter's provider message id.
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

HARD_TYPES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
"""Bounce `Type`s that say the address itself is bad: hard bounces."""
DEFERRED_TYPES = frozenset({"Transient", "DnsError"})
"""Temporary failures Postmark keeps retrying on its own (as anymail reads them)."""
IGNORED_TYPES = frozenset(
    {"AutoResponder", "Subscribe", "AddressChange", "OpenRelayTest", "ChallengeVerification"}
)
"""Bounce records that are not delivery failures (an auto-reply was delivered mail)."""
UNSUBSCRIBE_TYPE = "Unsubscribe"
"""A bounce record for an unsubscribe request the recipient mailed back."""

_TIME_FIELDS = {
    "Delivery": "DeliveredAt",
    "Bounce": "BouncedAt",
    "SpamComplaint": "BouncedAt",
    "Open": "ReceivedAt",
    "Click": "ReceivedAt",
    "SubscriptionChange": "ChangedAt",
}


class PostmarkWebhook(BasicAuthWebhook):
    provider_type = "postmark"

    async def parse(self, request: RawWebhook) -> Parsed:
        raw = request.json()
        if not isinstance(raw, dict):
            raise BadWebhook("Postmark posts one JSON object per event")
        record_type = raw.get("RecordType")
        if not isinstance(record_type, str) or not record_type:
            # Inbound-message webhooks have no RecordType: pointed at the wrong URL.
            raise BadWebhook("no RecordType (is Postmark's inbound webhook pointed here?)")
        if record_type not in _TIME_FIELDS:
            return Parsed([])
        event = _event(record_type, raw, request.received_at)
        return Parsed([event] if event is not None else [])


def _event(record_type: str, raw: dict[str, Any], received_at: float) -> InboundEvent | None:
    message_id = raw.get("MessageID")
    if message_id is not None and not isinstance(message_id, str):
        raise BadWebhook(f"{record_type}: MessageID is not a string")
    metadata = raw.get("Metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadWebhook(f"{record_type}: Metadata is not an object")
    ours = metadata.get("mailgate_id") if metadata else None
    recipient = _text(raw.get("Recipient")) or _text(raw.get("Email"))
    time_field = _TIME_FIELDS[record_type]
    at = _when(record_type, raw.get(time_field), received_at)
    bounce: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = {}
    key = digest(message_id, record_type, recipient, raw.get(time_field))
    match record_type:
        case "Delivery":
            kind = EventKind.DELIVERED
            if _text(raw.get("Details")):
                detail["status"] = raw["Details"]
        case "Bounce" | "SpamComplaint":
            key = _bounce_key(record_type, raw) or key
            bounce_type = _text(raw.get("Type")) or ""
            reason = _text(raw.get("Details")) or _text(raw.get("Description"))
            if bounce_type:
                detail["type"] = bounce_type
            if record_type == "SpamComplaint" or bounce_type == "SpamComplaint":
                kind = EventKind.COMPLAINED
            elif bounce_type == UNSUBSCRIBE_TYPE:
                kind = EventKind.UNSUBSCRIBED
            elif bounce_type in IGNORED_TYPES:
                return None
            elif bounce_type in DEFERRED_TYPES and raw.get("Inactive") is not True:
                kind = EventKind.DEFERRED
            else:
                kind = EventKind.BOUNCED
                # Postmark deactivates an address it will not mail again: whatever
                # the type says, that is a hard bounce for mailgate too.
                hard = bounce_type in HARD_TYPES or raw.get("Inactive") is True
                bounce = "hard" if hard else "soft"
        case "Open":
            kind = EventKind.OPENED
        case "Click":
            kind = EventKind.CLICKED
            link = _text(raw.get("OriginalLink"))
            if link:
                detail["url"] = link
            key = digest(message_id, record_type, recipient, raw.get(time_field), link)
        case _:  # SubscriptionChange
            if raw.get("SuppressSending") is not True:
                return None
            if raw.get("SuppressionReason") != "ManualSuppression":
                return None
            kind = EventKind.UNSUBSCRIBED
            reason = _text(raw.get("Origin"))
    if _text(raw.get("UserAgent")):
        detail["user_agent"] = raw["UserAgent"]
    return InboundEvent(
        kind=kind,
        key=key,
        recipient=recipient,
        at=at,
        message_id=ours if isinstance(ours, str) and ours else None,
        provider_message_id=message_id or None,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _bounce_key(record_type: str, raw: dict[str, Any]) -> str | None:
    """Postmark's bounce `ID` (bounces and complaints share its id space)."""
    bounce_id = raw.get("ID")
    if bounce_id is None:
        return None
    if isinstance(bounce_id, bool) or not isinstance(bounce_id, int | str):
        raise BadWebhook(f"{record_type}: ID is not a number")
    return f"bounce:{bounce_id}"


def _when(record_type: str, value: Any, received_at: float) -> datetime:
    if value is None:
        return from_unix(received_at)
    if not isinstance(value, str):
        raise BadWebhook(f"{record_type}: time {value!r} is not a string")
    try:
        return from_iso(value)
    except ValueError as exc:
        raise BadWebhook(f"{record_type}: time {value!r} is not ISO 8601") from exc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
