"""SendGrid's Signed Event Webhook: verification on the raw bytes, and the events it carries."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailgate.config import SendGridSettings
from mailgate.errors import ConfigError
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
    from_unix,
)
from mailgate.message import Address
from mailgate.providers import SendGridProvider
from mailgate.providers.fakes import FakeSendGrid
from mailgate.providers.fakes.base import SignedPost, outcomes
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.sendgrid import SendGridWebhook
from tests.helpers import SENDGRID_KEY
from tests.providers.cases.sendgrid import open_case
from tests.providers.support import email

URL = "https://gateway.example/v1/providers/sg/webhook"
SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"

# The published test vector of SendGrid's own Python library (sendgrid/sendgrid-python,
# test/unit/test_eventwebhook.py): a key, a signed `dropped` event and a timestamp, plus
# the library's "bad key" and "bad signature" values. Data only.
VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3G"
    "Rqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
VECTOR_OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWH"
    "w8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="
)
VECTOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15Tl"
    "uLtEZtM="
)
VECTOR_OTHER_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDW"
    "YNH3j/0="
)
VECTOR_TIMESTAMP = "1600112502"
VECTOR_EVENTS = [
    {
        "email": "hello@world.com",
        "event": "dropped",
        "reason": "Bounced Address",
        "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
        "sg_message_id": (
            "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
        ),
        "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
        "timestamp": 1600112492,
    }
]
# SendGrid's body ends in CRLF, and the signature covers it.
VECTOR_BODY = (json.dumps(VECTOR_EVENTS, sort_keys=True, separators=(",", ":")) + "\r\n").encode()


def settings(secret: str | None) -> SendGridSettings:
    return SendGridSettings(name="sg", type="sendgrid", api_key=SENDGRID_KEY, webhook_secret=secret)


def hook(secret: str | None) -> SendGridWebhook:
    return SendGridWebhook(settings(secret))


def vector_request(**changes: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "url": URL,
        "headers": {SIGNATURE: VECTOR_SIGNATURE, TIMESTAMP: VECTOR_TIMESTAMP},
        "body": VECTOR_BODY,
        "received_at": float(VECTOR_TIMESTAMP) + 30,
    }
    return RawWebhook(**(values | changes))


def request(post: SignedPost, **changes: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "url": URL,
        "headers": {k.lower(): v for k, v in post.headers.items()},
        "body": post.body,
    }
    return RawWebhook(**(values | changes))


def fake_posts(fake: FakeSendGrid, *recipients: str) -> list[SignedPost]:
    """What the fake posts for one message taken for these recipients (no network)."""
    body = {
        "personalizations": [{"to": [{"email": r} for r in recipients]}],
        "custom_args": {"mailgate_id": "msg_1", "tenant_ref": "t-9"},
        "categories": ["welcome"],
    }
    fake.record("ProviderId123456789012", "msg_1", body, recipients=list(recipients))
    received = fake.received[-1]
    return fake.signed_posts([o for r in recipients for o in outcomes(r, received)])


async def events_of(webhook: SendGridWebhook, posts: list[SignedPost]) -> list[InboundEvent]:
    found: list[InboundEvent] = []
    for post in posts:
        raw = request(post)
        await webhook.verify(raw)
        found.extend((await webhook.parse(raw)).events)
    return found


# --- the published vector -------------------------------------------------------------


async def test_sendgrids_published_vector_verifies_and_parses() -> None:
    webhook = hook(VECTOR_KEY)
    assert webhook.configured
    raw = vector_request()
    await webhook.verify(raw)
    parsed = await webhook.parse(raw)
    assert parsed.replay_key is None
    assert parsed.events == [
        InboundEvent(
            kind=EventKind.BOUNCED,
            key="ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
            recipient="hello@world.com",
            at=from_unix(1600112492),
            provider_message_id="LRzXl_NHStOGhQ4kofSm_A",
            bounce="hard",
            reason="Bounced Address",
        )
    ]


async def test_the_published_vector_is_refused_with_the_other_key_or_signature() -> None:
    with pytest.raises(WebhookRejected):
        await hook(VECTOR_OTHER_KEY).verify(vector_request())
    headers = {SIGNATURE: VECTOR_OTHER_SIGNATURE, TIMESTAMP: VECTOR_TIMESTAMP}
    with pytest.raises(WebhookRejected):
        await hook(VECTOR_KEY).verify(vector_request(headers=headers))


async def test_the_published_vector_is_stale_today() -> None:
    with pytest.raises(WebhookRejected, match="from now"):
        await hook(VECTOR_KEY).verify(vector_request(received_at=time.time()))


async def test_a_pem_key_works_too() -> None:
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(VECTOR_KEY[i : i + 64] for i in range(0, len(VECTOR_KEY), 64))
        + "\n-----END PUBLIC KEY-----\n"
    )
    await hook(pem).verify(vector_request())


@pytest.mark.parametrize(
    "secret",
    [
        "not base64 at all!",
        base64.b64encode(b"just some bytes").decode(),
        # A P-384 key: SendGrid's are P-256.
        base64.b64encode(
            ec.generate_private_key(ec.SECP384R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode(),
    ],
)
def test_a_webhook_secret_that_is_no_p256_key_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError, match="webhook_secret") as info:
        hook(secret)
    assert secret not in str(info.value)


# --- the fake's posts -----------------------------------------------------------------


async def test_the_fakes_events_match_the_adapters_ids() -> None:
    async with open_case() as case:
        provider = case.provider()
        assert isinstance(provider, SendGridProvider)
        result = await provider.send(
            "msg_1",
            email(to=(Address("a@example.org"),), cc=(Address("bounce@example.org"),)),
        )
        await provider.close()
        fake = case.fake
        assert isinstance(fake, FakeSendGrid)
        received = fake.received[0]
        happened = [
            o for r in ("a@example.org", "bounce@example.org") for o in outcomes(r, received)
        ]
        events = await events_of(hook(fake.webhook_public_key), fake.signed_posts(happened))
    assert [(e.kind, e.recipient, e.bounce) for e in events] == [
        (EventKind.DELIVERED, "a@example.org", None),
        (EventKind.BOUNCED, "bounce@example.org", "hard"),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {result.provider_message_id}


async def test_every_outcome_of_the_fake_becomes_its_mailgate_event() -> None:
    fake = FakeSendGrid(SENDGRID_KEY)
    recipients = [
        "b@example.org",
        "bounce@example.org",
        "softbounce@example.org",
        "complaint@example.org",
        "unsubscribe@example.org",
        "defer@example.org",
        "open@example.org",
    ]
    posts = fake_posts(fake, *recipients)
    assert len(posts) == 1  # one batch, as SendGrid posts them
    assert posts[0].body.endswith(b"\r\n")
    assert {e["event"] for e in json.loads(posts[0].body)} >= {"processed"}
    events = await events_of(hook(fake.webhook_public_key), posts)
    assert [(e.recipient, e.kind, e.bounce) for e in events] == [
        ("b@example.org", EventKind.DELIVERED, None),
        ("bounce@example.org", EventKind.BOUNCED, "hard"),
        ("softbounce@example.org", EventKind.DEFERRED, None),
        ("softbounce@example.org", EventKind.BOUNCED, "soft"),
        ("complaint@example.org", EventKind.DELIVERED, None),
        ("complaint@example.org", EventKind.COMPLAINED, None),
        ("unsubscribe@example.org", EventKind.DELIVERED, None),
        ("unsubscribe@example.org", EventKind.UNSUBSCRIBED, None),
        ("defer@example.org", EventKind.DEFERRED, None),
        ("defer@example.org", EventKind.DELIVERED, None),
        ("open@example.org", EventKind.DELIVERED, None),
        ("open@example.org", EventKind.OPENED, None),
        ("open@example.org", EventKind.CLICKED, None),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {"ProviderId123456789012"}
    assert len({e.key for e in events}) == len(events)
    by_kind = {e.kind: e for e in events}
    assert by_kind[EventKind.CLICKED].detail["url"] == "https://example.com/"
    assert by_kind[EventKind.BOUNCED].reason
    assert by_kind[EventKind.DEFERRED].reason == "452 4.2.2 Mailbox full"
    assert all(abs(e.at.timestamp() - time.time()) < 60 for e in events)


async def test_a_fake_signs_with_the_key_it_was_given() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    fake = FakeSendGrid(SENDGRID_KEY, webhook_private_key=private)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fake.webhook_public_key == base64.b64encode(public).decode()
    await events_of(hook(fake.webhook_public_key), fake_posts(fake, "b@example.org"))


# --- what is refused ------------------------------------------------------------------


@pytest.fixture
async def signed() -> tuple[SendGridWebhook, SignedPost]:
    fake = FakeSendGrid(SENDGRID_KEY)
    (post,) = fake_posts(fake, "b@example.org")
    return hook(fake.webhook_public_key), post


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


async def test_an_untouched_post_verifies(signed: tuple[SendGridWebhook, SignedPost]) -> None:
    webhook, post = signed
    await webhook.verify(request(post))


@pytest.mark.parametrize("at", [0, 40, -3, -1])
async def test_one_body_byte_changed_is_refused(
    signed: tuple[SendGridWebhook, SignedPost], at: int
) -> None:
    webhook, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(post, body=flip(post.body, at % len(post.body))))


async def test_a_changed_timestamp_is_refused(signed: tuple[SendGridWebhook, SignedPost]) -> None:
    webhook, post = signed
    headers = {k.lower(): v for k, v in post.headers.items()}
    headers[TIMESTAMP] = str(int(headers[TIMESTAMP]) + 1)
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(post, headers=headers))


@pytest.mark.parametrize("change", ["flip", "garbage", "other"])
async def test_a_changed_signature_is_refused(
    signed: tuple[SendGridWebhook, SignedPost], change: str
) -> None:
    webhook, post = signed
    headers = {k.lower(): v for k, v in post.headers.items()}
    der = base64.b64decode(headers[SIGNATURE])
    headers[SIGNATURE] = {
        "flip": base64.b64encode(flip(der, len(der) - 5)).decode(),
        "garbage": "%%% not base64 %%%",
        "other": VECTOR_SIGNATURE,
    }[change]
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(post, headers=headers))


async def test_another_key_is_refused(signed: tuple[SendGridWebhook, SignedPost]) -> None:
    _, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await hook(FakeSendGrid(SENDGRID_KEY).webhook_public_key).verify(request(post))


@pytest.mark.parametrize("skew", [-301.0, 301.0])
async def test_a_timestamp_more_than_five_minutes_off_is_refused(
    signed: tuple[SendGridWebhook, SignedPost], skew: float
) -> None:
    webhook, post = signed
    sent = float(post.headers["X-Twilio-Email-Event-Webhook-Timestamp"])
    with pytest.raises(WebhookRejected, match="from now"):
        await webhook.verify(request(post, received_at=sent - skew))
    await webhook.verify(request(post, received_at=sent + 299))


@pytest.mark.parametrize("missing", [SIGNATURE, TIMESTAMP])
async def test_a_missing_header_is_refused(
    signed: tuple[SendGridWebhook, SignedPost], missing: str
) -> None:
    webhook, post = signed
    headers = {k.lower(): v for k, v in post.headers.items() if k.lower() != missing}
    with pytest.raises(WebhookRejected, match="header"):
        await webhook.verify(request(post, headers=headers))


async def test_without_a_webhook_secret_everything_is_refused(
    signed: tuple[SendGridWebhook, SignedPost],
) -> None:
    _, post = signed
    webhook = webhook_for(settings(None))
    assert isinstance(webhook, SendGridWebhook) and not webhook.configured
    with pytest.raises(WebhookRejected, match="not set"):
        await webhook.verify(request(post))


# --- parsing --------------------------------------------------------------------------


def raw_event(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "email": "B@Example.org",
        "timestamp": 1700000000,
        "event": event,
        "sg_event_id": f"ev-{event}",
        "sg_message_id": "abc123.filterdrecv-1",
        "mailgate_id": "msg_7",
        **fields,
    }


async def parse(events: Any) -> list[InboundEvent]:
    body = json.dumps(events).encode()
    return (await hook(VECTOR_KEY).parse(RawWebhook(URL, {}, body))).events


async def test_events_mailgate_does_not_track_are_skipped() -> None:
    events = await parse(
        [
            raw_event("processed"),
            raw_event("group_resubscribe"),
            raw_event("some_future_event"),
            raw_event("delivered", response="250 OK"),
        ]
    )
    assert [(e.kind, e.key, e.message_id, e.provider_message_id) for e in events] == [
        (EventKind.DELIVERED, "ev-delivered", "msg_7", "abc123")
    ]
    assert events[0].at == from_unix(1700000000)


async def test_sendgrid_event_names_map_to_mailgate_kinds() -> None:
    events = await parse(
        [
            raw_event("bounce", type="bounce", reason="550 no such user", status="5.1.1"),
            raw_event("bounce", type="blocked", reason="421 try later", status="4.0.0"),
            raw_event("dropped", reason="Unsubscribed Address"),
            raw_event("deferred", response="451 busy", attempt="2"),
            raw_event("spamreport"),
            raw_event("open", useragent="UA"),
            raw_event("click", url="https://x.example/a", useragent="UA"),
            raw_event("unsubscribe"),
            raw_event("group_unsubscribe", asm_group_id=42),
        ]
    )
    assert [(e.kind, e.bounce, e.reason) for e in events] == [
        (EventKind.BOUNCED, "hard", "550 no such user"),
        (EventKind.BOUNCED, "soft", "421 try later"),
        (EventKind.BOUNCED, "hard", "Unsubscribed Address"),
        (EventKind.DEFERRED, None, "451 busy"),
        (EventKind.COMPLAINED, None, None),
        (EventKind.OPENED, None, None),
        (EventKind.CLICKED, None, None),
        (EventKind.UNSUBSCRIBED, None, None),
        (EventKind.UNSUBSCRIBED, None, None),
    ]
    assert events[0].detail["status"] == "5.1.1"
    assert events[6].detail == {"url": "https://x.example/a", "useragent": "UA"}
    assert events[8].detail["asm_group_id"] == 42


async def test_an_event_without_an_event_id_gets_a_stable_digest() -> None:
    event = raw_event("delivered")
    del event["sg_event_id"]
    first, second = await parse([event]), await parse([event])
    assert first[0].key.startswith("sha256:") and first[0].key == second[0].key


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"event": "delivered"}',
        b'["delivered"]',
        b'[{"email": "b@example.org"}]',
        json.dumps([raw_event("delivered", email=None)]).encode(),
        json.dumps([raw_event("delivered", timestamp="yesterday")]).encode(),
    ],
)
async def test_a_malformed_body_is_a_bad_webhook(body: bytes) -> None:
    with pytest.raises(BadWebhook):
        await hook(VECTOR_KEY).parse(RawWebhook(URL, {}, body))
