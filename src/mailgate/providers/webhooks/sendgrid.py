"""SendGrid's Signed Event Webhook: ECDSA P-256 over timestamp + body, a JSON array of events.

SendGrid signs the `X-Twilio-Email-Event-Webhook-Timestamp` header value
followed directly by the raw body bytes (which end in CRLF) with ECDSA
P-256/SHA-256, and sends the base64 DER signature in
`X-Twilio-Email-Event-Webhook-Signature`. The verification key its UI shows
is a base64 DER SubjectPublicKeyInfo without PEM armour; `webhook_secret`
takes it as shown (PEM is accepted too).

Each event is one object of the array: `sg_event_id` is unique per event
(the dedupe key), `sg_message_id` starts with the send answer's
`X-Message-Id` followed by `.` and a suffix, and our custom args
(`mailgate_id`) are top-level keys of every event.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailgate.config import SendGridSettings
from mailgate.errors import ConfigError
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

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

KINDS: dict[str, EventKind] = {
    "delivered": EventKind.DELIVERED,
    "deferred": EventKind.DEFERRED,
    "bounce": EventKind.BOUNCED,
    "dropped": EventKind.BOUNCED,
    "spamreport": EventKind.COMPLAINED,
    "open": EventKind.OPENED,
    "click": EventKind.CLICKED,
    "unsubscribe": EventKind.UNSUBSCRIBED,
    "group_unsubscribe": EventKind.UNSUBSCRIBED,
}
"""SendGrid event → mailgate kind; the rest (`processed`, `group_resubscribe`) are not tracked."""

_DETAIL_FIELDS = ("status", "response", "attempt", "type", "bounce_classification", "useragent")


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key from base64 DER (as its UI shows it) or PEM.

    `ValueError` when it is neither, or not a P-256 key.
    """
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a base64 DER or PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


class SendGridWebhook(EventWebhook):
    provider_type = "sendgrid"

    def __init__(self, settings: SendGridSettings, **options: Any) -> None:
        """`options` are what the registry offers every webhook; this one needs none."""
        self.name = settings.name
        self._key: ec.EllipticCurvePublicKey | None = None
        if settings.webhook_secret is not None:
            try:
                self._key = load_public_key(settings.webhook_secret.get_secret_value())
            except ValueError as exc:
                raise ConfigError(
                    f"provider {settings.name!r}: webhook_secret is {exc}; set the "
                    "verification key of SendGrid's Signed Event Webhook"
                ) from None

    @property
    def configured(self) -> bool:
        return self._key is not None

    async def verify(self, request: RawWebhook) -> None:
        if self._key is None:
            raise WebhookRejected(f"{self.name}: webhook_secret (verification key) is not set")
        signature = request.header(SIGNATURE_HEADER)
        timestamp = request.header(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise WebhookRejected("no X-Twilio-Email-Event-Webhook-Signature/-Timestamp header")
        check_timestamp(timestamp, request.received_at)
        try:
            der = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WebhookRejected("signature is not base64") from exc
        try:
            self._key.verify(der, timestamp.encode() + request.body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError) as exc:
            raise WebhookRejected("signature does not match the verification key") from exc

    async def parse(self, request: RawWebhook) -> Parsed:
        data = request.json()
        if not isinstance(data, list):
            raise BadWebhook("body is not a JSON array of events")
        events: list[InboundEvent] = []
        for raw in data:
            if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
                raise BadWebhook("an event is not an object with an `event` name")
            kind = KINDS.get(raw["event"])
            if kind is not None:
                events.append(_event(kind, raw))
        return Parsed(events)


def _event(kind: EventKind, raw: dict[str, Any]) -> InboundEvent:
    name = raw["event"]
    recipient = raw.get("email")
    if not isinstance(recipient, str) or not recipient:
        raise BadWebhook(f"{name} event without an `email`")
    try:
        at = from_unix(raw["timestamp"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BadWebhook(f"{name} event without a Unix `timestamp`") from exc
    sg_message_id = raw.get("sg_message_id")
    provider_message_id = (
        sg_message_id.split(".", 1)[0] if isinstance(sg_message_id, str) and sg_message_id else None
    )
    event_id = raw.get("sg_event_id")
    key = (
        event_id
        if isinstance(event_id, str) and event_id
        else digest(name, recipient, raw.get("timestamp"), sg_message_id)
    )
    message_id = raw.get("mailgate_id")
    bounce: str | None = None
    reason: str | None = None
    if kind is EventKind.BOUNCED:
        # `blocked` is a refusal for now (reputation, rate, full mailbox), not a bad address;
        # `dropped` means SendGrid will never send to it (suppressed, invalid).
        bounce = "soft" if name == "bounce" and raw.get("type") == "blocked" else "hard"
        reason = _text(raw.get("reason")) or _text(raw.get("response"))
    elif kind is EventKind.DEFERRED:
        reason = _text(raw.get("response")) or _text(raw.get("reason"))
    detail = {f: raw[f] for f in _DETAIL_FIELDS if isinstance(raw.get(f), str | int)}
    if kind is EventKind.CLICKED and isinstance(raw.get("url"), str):
        detail["url"] = raw["url"]
    if name == "group_unsubscribe" and isinstance(raw.get("asm_group_id"), int):
        detail["asm_group_id"] = raw["asm_group_id"]
    return InboundEvent(
        kind=kind,
        key=key,
        recipient=recipient,
        at=at,
        message_id=message_id if isinstance(message_id, str) and message_id else None,
        provider_message_id=provider_message_id,
        bounce=bounce,
        reason=reason,
        detail=detail,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
