"""Amazon SES events, published by a configuration set to an SNS topic, posted by SNS.

SNS signs each message itself: the envelope's fields, in a fixed order, as
`Key\\nvalue\\n` lines (`string_to_sign`), RSA-signed with SHA1
(`SignatureVersion` "1") or SHA256 ("2") by the key of an X.509 certificate
that SNS serves at `SigningCertURL`. What makes that certificate AWS's is
where it comes from: an `https://sns.<region>.amazonaws.com/...pem` URL
fetched over verified TLS. So the URL is checked strictly (scheme, exact
host, no user, no port, the certificate file name) before anything is
fetched, and nothing else is ever fetched; certificates are kept in memory
by URL (`certificates=` seeds that cache, which is how tests and the local
simulation, with AWS out of reach, supply the fake's).

Only the configured topic (`webhook_sns_topic_arn`) is taken. A
`SubscriptionConfirmation` for it is confirmed by mailgate itself (a GET of
its `SubscribeURL`, an SNS URL too). A `Notification`'s `Message` is the
SES event as a JSON string; each recipient it names becomes one event,
keyed by the SNS `MessageId` (the same on every redelivery) and the
recipient. Open, click and subscription events name no recipient: the
message's only recipient is used, or none when it had several.

`Send`, `Rendering Failure` and `Reject` are left out. A `Reject` (SES
refused to send the message at all, e.g. a virus) is about the content,
not an address: as a hard bounce it would suppress recipients that are
fine, and mailgate has no event kind for a dropped message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.utils import getaddresses
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailgate.config import SesSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    EventWebhook,
    InboundEvent,
    Parsed,
    ProviderUnreachable,
    RawWebhook,
    WebhookRejected,
    check_timestamp,
    digest,
    from_iso,
)
from mailgate.providers.ses import MAILGATE_ID_TAG, decode_tag
from mailgate.streams import read_at_most

Fetch = Callable[[str], Awaitable[bytes]]
"""GET an https URL and return the body; raise on anything but a 2xx."""

FETCH_TIMEOUT_SECONDS = 5.0
MAX_FETCH_BYTES = 64 * 1024
"""A signing certificate is about 2 KB; a confirmation answer is small XML."""
MAX_CACHED_CERTIFICATES = 64
"""SNS rotates its certificate rarely; the oldest entries go first past this."""

NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
"""What SNS signs of a `Notification`, in order; `Subject` only when present."""
CONFIRMATION_KEYS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)  # fmt: skip
"""What SNS signs of a `SubscriptionConfirmation` or `UnsubscribeConfirmation`, in order."""
SIGNED_KEYS: dict[str, tuple[str, ...]] = {
    "Notification": NOTIFICATION_KEYS,
    "SubscriptionConfirmation": CONFIRMATION_KEYS,
    "UnsubscribeConfirmation": CONFIRMATION_KEYS,
}
OPTIONAL_KEYS = frozenset({"Subject"})

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{1,64}\.pem")
_URL_CHARACTERS = re.compile(r"[!-\[\]-~]+")
"""Printable ASCII without spaces or backslashes (urlsplit drops tabs and newlines)."""
_VALIDATION_NOTICE = "Successfully validated"
"""The start of the plain-text test message SES publishes when an SNS destination is set up."""


class FetchFailed(ProviderUnreachable):
    """An HTTPS GET to SNS (a certificate, a subscription confirmation) did not succeed."""


def string_to_sign(envelope: Mapping[str, Any]) -> str | None:
    """What SNS signed of this envelope, per AWS's "Verifying the signatures of Amazon
    SNS messages"; None when its `Type` is unknown or a signed field is missing or not text."""
    kind = envelope.get("Type")
    keys = SIGNED_KEYS.get(kind) if isinstance(kind, str) else None
    if keys is None:
        return None
    lines = []
    for key in keys:
        value = envelope.get(key)
        if value is None and key in OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            return None
        lines.append(f"{key}\n{value}\n")
    return "".join(lines)


def sns_hosts(region: str) -> frozenset[str]:
    """The SNS endpoint hosts of a region (the `.com.cn` one for the China regions)."""
    hosts = {f"sns.{region}.amazonaws.com"}
    if region.startswith("cn-"):
        hosts.add(f"sns.{region}.amazonaws.com.cn")
    return frozenset(hosts)


def _sns_url(url: object, region: str) -> tuple[str, str] | None:
    """(path, query) of an `https://sns.<region>.amazonaws.com` URL as SNS writes them.

    None for anything else: another scheme or host (`...amazonaws.com.evil.test`),
    a user (`sns...@evil.test`), a port, a fragment, spaces or backslashes.
    """
    if not isinstance(url, str) or not _URL_CHARACTERS.fullmatch(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "https" or parts.netloc not in sns_hosts(region) or parts.fragment:
        return None
    return parts.path, parts.query


def certificate_url_ok(url: object, region: str) -> TypeGuard[str]:
    """Whether `url` is an SNS signing certificate's URL in `region`."""
    found = _sns_url(url, region)
    return found is not None and not found[1] and _CERTIFICATE_PATH.fullmatch(found[0]) is not None


def subscribe_url_ok(url: object, region: str, topic_arn: str) -> TypeGuard[str]:
    """Whether `url` is SNS's `ConfirmSubscription` for `topic_arn` in `region`."""
    found = _sns_url(url, region)
    if found is None or found[0] not in ("", "/"):
        return False
    query = parse_qs(found[1])
    return query.get("Action") == ["ConfirmSubscription"] and query.get("TopicArn") in (
        None,
        [topic_arn],
    )


def topic_region(arn: str) -> str | None:
    """The region of an SNS topic ARN (`arn:aws:sns:<region>:<account>:<name>`)."""
    parts = arn.split(":")
    if len(parts) == 6 and parts[0] == "arn" and parts[2] == "sns" and _REGION.fullmatch(parts[3]):
        return parts[3]
    return None


class SesWebhook(EventWebhook):
    """SES events through SNS: verified as SNS signs them, for the configured topic only.

    Options: `fetch`, the async GET used for certificates and subscription
    confirmations (default: aiohttp, no redirects, a short timeout);
    `certificates`, certificate PEMs by URL to start the cache with. Options
    meant for other providers' webhooks are ignored.
    """

    provider_type = "ses"

    def __init__(
        self,
        settings: SesSettings,
        *,
        fetch: Fetch | None = None,
        certificates: Mapping[str, bytes] | None = None,
        **_other: Any,
    ) -> None:
        self.name = settings.name
        self.topic_arn = settings.webhook_sns_topic_arn
        self.region = (topic_region(self.topic_arn) if self.topic_arn else None) or settings.region
        self._fetch_given = fetch
        self._session: aiohttp.ClientSession | None = None
        self._pems: dict[str, bytes] = dict(certificates or {})
        self._certificates: dict[str, x509.Certificate] = {}

    @property
    def configured(self) -> bool:
        return bool(self.topic_arn)

    async def verify(self, request: RawWebhook) -> None:
        if not self.topic_arn:
            raise WebhookRejected("SES events are not configured (webhook_sns_topic_arn)")
        try:
            envelope = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookRejected("body is not an SNS message (not JSON)") from None
        if not isinstance(envelope, dict):
            raise WebhookRejected("body is not an SNS message (not an object)")
        kind = envelope.get("Type")
        if kind not in SIGNED_KEYS:
            raise WebhookRejected("body is not an SNS message (unknown Type)")
        if request.header("x-amz-sns-message-type") not in (None, kind):
            raise WebhookRejected("x-amz-sns-message-type does not match the body's Type")
        if request.header("x-amz-sns-message-id") not in (None, envelope.get("MessageId")):
            raise WebhookRejected("x-amz-sns-message-id does not match the body's MessageId")
        if envelope.get("TopicArn") != self.topic_arn:
            raise WebhookRejected("TopicArn is not the configured topic")
        algorithm = _HASHES.get(str(envelope.get("SignatureVersion")))
        if algorithm is None:
            raise WebhookRejected("SignatureVersion is neither 1 nor 2")
        cert_url = envelope.get("SigningCertURL")
        if not certificate_url_ok(cert_url, self.region):
            raise WebhookRejected(f"SigningCertURL is not an SNS certificate in {self.region}")
        if kind != "Notification" and not subscribe_url_ok(
            envelope.get("SubscribeURL"), self.region, self.topic_arn
        ):
            raise WebhookRejected("SubscribeURL is not SNS's ConfirmSubscription for the topic")
        stamp = envelope.get("Timestamp")
        try:
            signed_at = from_iso(stamp) if isinstance(stamp, str) else None
        except ValueError:
            signed_at = None
        if signed_at is None:
            raise WebhookRejected("Timestamp is missing or not a time")
        check_timestamp(signed_at.timestamp(), request.received_at)
        try:
            signature = base64.b64decode(str(envelope.get("Signature") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookRejected("Signature is not base64") from None
        text = string_to_sign(envelope)
        if text is None or not signature:
            raise WebhookRejected("a signed field is missing")
        key = await self._public_key(cert_url, request.received_at)
        try:
            key.verify(signature, text.encode(), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise WebhookRejected("the SNS signature does not match") from None

    async def parse(self, request: RawWebhook) -> Parsed:
        envelope = request.json()
        if not isinstance(envelope, dict):
            raise BadWebhook("the SNS message is not an object")
        kind = envelope.get("Type")
        if kind == "SubscriptionConfirmation":
            url = envelope.get("SubscribeURL")
            if not self.topic_arn or not subscribe_url_ok(url, self.region, self.topic_arn):
                raise BadWebhook("SubscribeURL is not SNS's ConfirmSubscription for the topic")
            try:
                await self._get(url)
            except Exception as exc:
                raise FetchFailed(f"confirming the SNS subscription failed: {exc}") from exc
            return Parsed(events=[], response={"confirmed": True})
        if kind == "UnsubscribeConfirmation":
            return Parsed(events=[])
        if kind != "Notification":
            raise BadWebhook(f"SNS message type {kind!r} is not a notification")
        message, sns_id = envelope.get("Message"), envelope.get("MessageId")
        if not isinstance(message, str) or not isinstance(sns_id, str) or not sns_id:
            raise BadWebhook("the notification has no Message or MessageId")
        try:
            event = json.loads(message)
        except ValueError:
            if message.startswith(_VALIDATION_NOTICE):
                return Parsed(events=[])
            raise BadWebhook("the notification's Message is not an SES event (not JSON)") from None
        try:
            return Parsed(events=ses_events(event, sns_id, envelope.get("Timestamp")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadWebhook(f"the SES event is not as SES writes it: {exc!r}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _public_key(self, url: str, now: float) -> rsa.RSAPublicKey:
        """The RSA key of the certificate at `url` (cached), refused when not valid at `now`."""
        certificate = self._certificates.get(url)
        if certificate is None:
            pem = self._pems.get(url)
            if pem is None:
                try:
                    pem = await self._get(url)
                except Exception as exc:
                    raise WebhookRejected(
                        f"the SNS signing certificate could not be fetched: {type(exc).__name__}"
                    ) from None
            try:
                certificate = x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise WebhookRejected("SigningCertURL did not give a PEM certificate") from None
            while len(self._certificates) >= MAX_CACHED_CERTIFICATES:
                oldest = next(iter(self._certificates))
                del self._certificates[oldest]
                self._pems.pop(oldest, None)
            self._pems[url] = pem
            self._certificates[url] = certificate
        when = datetime.fromtimestamp(now, certificate.not_valid_before_utc.tzinfo)
        if not certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc:
            raise WebhookRejected("the SNS signing certificate is expired or not yet valid")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRejected("the SNS signing certificate has no RSA key")
        return key

    async def _get(self, url: str) -> bytes:
        if self._fetch_given is not None:
            return await self._fetch_given(url)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
            )
        async with self._session.get(url, allow_redirects=False) as response:
            body = await read_at_most(response.content, MAX_FETCH_BYTES + 1)
            if not 200 <= response.status < 300:
                raise FetchFailed(f"GET {url} answered {response.status}")
            if len(body) > MAX_FETCH_BYTES:
                raise FetchFailed(f"GET {url} answered more than {MAX_FETCH_BYTES} bytes")
            return body


# --- the SES event inside a notification ---------------------------------------------

_PER_RECIPIENT: dict[str, tuple[EventKind, str, str]] = {
    # eventType: (kind, sibling object, its recipient list)
    "Delivery": (EventKind.DELIVERED, "delivery", "recipients"),
    "Bounce": (EventKind.BOUNCED, "bounce", "bouncedRecipients"),
    "Complaint": (EventKind.COMPLAINED, "complaint", "complainedRecipients"),
    "DeliveryDelay": (EventKind.DEFERRED, "deliveryDelay", "delayedRecipients"),
}
_UNNAMED: dict[str, tuple[EventKind, str]] = {
    # eventType: (kind, sibling object); these name no recipient
    "Open": (EventKind.OPENED, "open"),
    "Click": (EventKind.CLICKED, "click"),
    "Subscription": (EventKind.UNSUBSCRIBED, "subscription"),
}


def ses_events(event: Any, sns_id: str, published: Any = None) -> list[InboundEvent]:
    """The `InboundEvent`s of one SES event (`eventType`, or the older `notificationType`).

    Raises KeyError, TypeError or ValueError for a shape SES does not write.
    """
    if not isinstance(event, dict):
        raise TypeError("the event is not an object")
    event_type = event.get("eventType") or event.get("notificationType")
    if not isinstance(event_type, str):
        raise KeyError("eventType")
    mail = event["mail"]
    provider_id = mail["messageId"]
    if not isinstance(provider_id, str) or not provider_id:
        raise ValueError("mail.messageId is empty")
    message_id = our_message_id(mail)
    default_at = mail.get("timestamp") or published

    def at(part: Mapping[str, Any]) -> datetime:
        stamp = part.get("timestamp") or default_at
        if not isinstance(stamp, str):
            raise ValueError("the event has no timestamp")
        return from_iso(stamp)

    if event_type in _PER_RECIPIENT:
        kind, name, list_name = _PER_RECIPIENT[event_type]
        part = event[name]
        entries = part[list_name]
        if not isinstance(entries, list):
            raise TypeError(f"{name}.{list_name} is not a list")
        events = []
        for entry in entries:
            address = _address(entry if isinstance(entry, str) else entry["emailAddress"])
            fields = _details(event_type, part, entry if isinstance(entry, dict) else {})
            events.append(
                InboundEvent(
                    kind=kind,
                    key=digest(sns_id, address),
                    recipient=address,
                    at=at(part),
                    message_id=message_id,
                    provider_message_id=provider_id,
                    **fields,
                )
            )
        return events
    if event_type in _UNNAMED:
        kind, name = _UNNAMED[event_type]
        part = event[name]
        if not isinstance(part, dict):
            raise TypeError(f"{name} is not an object")
        destination = [_address(a) for a in mail.get("destination") or []]
        recipient = destination[0] if len(destination) == 1 else None
        detail = {
            k: v
            for k, v in (
                ("url", part.get("link")),
                ("user_agent", part.get("userAgent")),
                ("ip", part.get("ipAddress")),
                ("contact_list", part.get("contactList")),
            )
            if v
        }
        return [
            InboundEvent(
                kind=kind,
                key=digest(sns_id, recipient),
                recipient=recipient,
                at=at(part),
                detail=detail,
                message_id=message_id,
                provider_message_id=provider_id,
            )
        ]
    return []  # Send, Reject, Rendering Failure, and types mailgate does not track


def _details(event_type: str, part: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """`bounce`, `reason` and `detail` of one recipient's Delivery/Bounce/Complaint/Delay."""
    detail = {
        k: v for k, v in (("status", entry.get("status")), ("action", entry.get("action"))) if v
    }
    match event_type:
        case "Delivery":
            if part.get("smtpResponse"):
                detail["smtp_response"] = part["smtpResponse"]
            return {"detail": detail}
        case "Bounce":
            bounce_type = part.get("bounceType")
            sub_type = part.get("bounceSubType")
            detail.update({"bounce_type": bounce_type, "bounce_subtype": sub_type})
            return {
                "bounce": "hard" if bounce_type == "Permanent" else "soft",
                "reason": entry.get("diagnosticCode") or sub_type,
                "detail": {k: v for k, v in detail.items() if v},
            }
        case "Complaint":
            if part.get("complaintSubType"):
                detail["complaint_subtype"] = part["complaintSubType"]
            return {"reason": part.get("complaintFeedbackType"), "detail": detail}
        case _:  # DeliveryDelay
            if part.get("delayType"):
                detail["delay_type"] = part["delayType"]
            return {
                "reason": entry.get("diagnosticCode") or part.get("delayType"),
                "detail": detail,
            }


def our_message_id(mail: Mapping[str, Any]) -> str | None:
    """Our id from the `mailgate_id` tag (escaped, see `encode_tag`), else `X-Mailgate-Id`."""
    tags = mail.get("tags")
    if isinstance(tags, dict):
        values = tags.get(MAILGATE_ID_TAG)
        if isinstance(values, list) and values and isinstance(values[0], str):
            try:
                return decode_tag(values[0])
            except (ValueError, UnicodeDecodeError):
                pass
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "x-mailgate-id":
            value = header.get("value")
            return str(value) if value else None
    return None


def _address(value: Any) -> str:
    """The bare address of `a@x.test` or `Name <a@x.test>`."""
    if not isinstance(value, str) or not value:
        raise TypeError("a recipient is not an address")
    bare = getaddresses([value])[0][1]
    return bare if "@" in bare else value
