"""Resend's email events, delivered and signed by Svix.

Svix signs `{svix-id}.{svix-timestamp}.{raw body}` with HMAC-SHA256, keyed
by the base64 part of the endpoint's `whsec_` secret (`webhook_secret`),
and sends `v1,<base64>` in `svix-signature`, several space-separated while
a secret is being rotated: any one matching passes. The timestamp must be
within 5 minutes. `svix-id` stays the same when Svix redelivers, so it is
the dedupe key.

Resend reports once per email, and its events do not say which recipient
they concern: `data.to` lists the email's `to` addresses. An event naming
one address is about that address (the usual case). One naming several is
recorded for each of them when it is a delivery, deferral, open or click;
a bounce or complaint naming several is recorded once, for no recipient,
since suppressing every address of the email for one address's bounce
would be wrong.

`email.bounced` is a permanent rejection (hard), unless `data.bounce.type`
says `Transient` or `Undetermined` (soft). `email.sent`, `email.failed`
and the rest are left out; Resend has no unsubscribe event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from email.utils import getaddresses
from typing import Any

from pydantic import SecretStr

from mailgate.config import ResendSettings
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
    from_iso,
)
from mailgate.providers.resend import ID_TAG

SECRET_PREFIX = "whsec_"
MAX_ID_LENGTH = 256

KINDS: dict[str, EventKind] = {
    "email.delivered": EventKind.DELIVERED,
    "email.delivery_delayed": EventKind.DEFERRED,
    "email.bounced": EventKind.BOUNCED,
    "email.complained": EventKind.COMPLAINED,
    "email.opened": EventKind.OPENED,
    "email.clicked": EventKind.CLICKED,
}
_ABOUT_ONE_ADDRESS = frozenset({EventKind.BOUNCED, EventKind.COMPLAINED})
"""Kinds that are never spread over several addresses (see the module's docstring)."""
_SOFT_BOUNCES = frozenset({"transient", "undetermined"})
_DIGITS = re.compile(r"\d{1,12}")


def signing_key(secret: SecretStr | str | None) -> bytes | None:
    """The HMAC key of a Svix secret (`whsec_<base64>`, the prefix optional); None if unusable."""
    if secret is None:
        return None
    text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    text = text.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def svix_signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """The raw HMAC-SHA256 Svix sends (base64) after `v1,`."""
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


class ResendWebhook(EventWebhook):
    """Resend's events: Svix's signature, then `email.*` events by `data.email_id`.

    Takes no options; those meant for other providers' webhooks are ignored.
    """

    provider_type = "resend"

    def __init__(self, settings: ResendSettings, **_options: Any) -> None:
        self.name = settings.name
        self._key = signing_key(settings.webhook_secret)

    @property
    def configured(self) -> bool:
        return self._key is not None

    async def verify(self, request: RawWebhook) -> None:
        if self._key is None:
            raise WebhookRejected("Resend events are not configured (webhook_secret, whsec_...)")
        msg_id = _header(request, "id")
        timestamp = _header(request, "timestamp")
        signatures = _header(request, "signature")
        if not msg_id or not timestamp or not signatures:
            raise WebhookRejected("svix-id, svix-timestamp or svix-signature is missing")
        # Neither may hold a `.`, or the signed content could be split another way.
        if len(msg_id) > MAX_ID_LENGTH or "." in msg_id:
            raise WebhookRejected("svix-id is not a Svix message id")
        if not _DIGITS.fullmatch(timestamp):
            raise WebhookRejected("svix-timestamp is not Unix seconds")
        check_timestamp(timestamp, request.received_at)
        expected = svix_signature(self._key, msg_id, timestamp, request.body)
        matched = False
        for entry in signatures.split():
            version, _, encoded = entry.partition(",")
            if version != "v1":
                continue
            try:
                given = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            # Every entry is compared, so the time taken says nothing of which matched.
            matched |= hmac.compare_digest(given, expected)
        if not matched:
            raise WebhookRejected("no svix-signature entry matches")

    async def parse(self, request: RawWebhook) -> Parsed:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise BadWebhook("the body is not a Resend event (no type)")
        data = body.get("data")
        if not isinstance(data, dict):
            raise BadWebhook("the Resend event has no data object")
        kind = KINDS.get(body["type"])
        if kind is None:
            return Parsed(events=[])  # email.sent, email.failed, contact.*, ...
        msg_id = _header(request, "id")
        email_id = data.get("email_id")
        if not msg_id or not isinstance(email_id, str) or not email_id:
            raise BadWebhook("the Resend event has no svix-id or data.email_id")
        stamp = body.get("created_at") or data.get("created_at")
        try:
            at = from_iso(stamp) if isinstance(stamp, str) else None
        except ValueError:
            at = None
        if at is None:
            raise BadWebhook("the Resend event has no created_at time")
        recipients = _recipients(data.get("to"))
        if len(recipients) > 1 and kind in _ABOUT_ONE_ADDRESS:
            recipients = []
        fields = _fields(kind, data)
        message_id = our_message_id(data)
        if len(recipients) <= 1:
            keyed = [(msg_id, recipients[0] if recipients else None)]
        else:
            keyed = [(digest(msg_id, r), r) for r in recipients]
        return Parsed(
            events=[
                InboundEvent(
                    kind=kind,
                    key=key,
                    recipient=recipient,
                    at=at,
                    message_id=message_id,
                    provider_message_id=email_id,
                    **fields,
                )
                for key, recipient in keyed
            ]
        )


def _header(request: RawWebhook, name: str) -> str | None:
    """`svix-<name>`, else the Standard Webhooks `webhook-<name>` Svix also sends."""
    return request.header(f"svix-{name}") or request.header(f"webhook-{name}")


def _recipients(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    out: list[str] = []
    for item in values:
        if isinstance(item, str):
            bare = getaddresses([item])[0][1]
            address = bare if "@" in bare else item
            if address not in out:
                out.append(address)
    return out


def _fields(kind: EventKind, data: dict[str, Any]) -> dict[str, Any]:
    """`bounce`, `reason` and `detail` for one event of this kind."""
    if kind is EventKind.BOUNCED:
        found = data.get("bounce")
        bounce: dict[str, Any] = found if isinstance(found, dict) else {}
        bounce_type = str(bounce.get("type") or "")
        sub_type = bounce.get("subType")
        detail = {
            k: v for k, v in (("bounce_type", bounce_type), ("bounce_subtype", sub_type)) if v
        }
        return {
            "bounce": "soft" if bounce_type.lower() in _SOFT_BOUNCES else "hard",
            "reason": bounce.get("message") or sub_type or None,
            "detail": detail,
        }
    part = data.get("click") if kind is EventKind.CLICKED else data.get("open")
    if isinstance(part, dict):
        detail = {
            k: v
            for k, v in (
                ("url", part.get("link")),
                ("user_agent", part.get("userAgent")),
                ("ip", part.get("ipAddress")),
            )
            if v
        }
        return {"detail": detail}
    return {}


def our_message_id(data: dict[str, Any]) -> str | None:
    """Our id: the `X-Mailgate-Id` header as sent, else the `mailgate_id` tag.

    Resend gives headers as `[{name, value}]` and tags as `{name: value}`;
    the other shape of each is read too.
    """
    headers = data.get("headers")
    pairs: list[tuple[Any, Any]] = []
    if isinstance(headers, dict):
        pairs = list(headers.items())
    elif isinstance(headers, list):
        pairs = [(h.get("name"), h.get("value")) for h in headers if isinstance(h, dict)]
    for name, value in pairs:
        if isinstance(name, str) and name.lower() == "x-mailgate-id" and value:
            return str(value)
    tags = data.get("tags")
    if isinstance(tags, list):
        tags = {t.get("name"): t.get("value") for t in tags if isinstance(t, dict)}
    if isinstance(tags, dict) and tags.get(ID_TAG):
        return str(tags[ID_TAG])
    return None
