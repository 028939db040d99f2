"""Mailgun's webhooks: HMAC of timestamp + token, the token as replay key, and the events."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from mailgate.config import MailgunSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
    digest,
    from_unix,
)
from mailgate.message import Address
from mailgate.providers import MailgunProvider
from mailgate.providers.fakes import FakeMailgun
from mailgate.providers.fakes.base import SignedPost, outcomes
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.mailgun import MailgunWebhook
from tests.helpers import MAILGUN_DOMAIN, MAILGUN_KEY
from tests.providers.cases.mailgun import open_case
from tests.providers.support import email

URL = "https://gateway.example/v1/providers/mg/webhook"

# The published vector of Mailgun's own PHP library (mailgun/mailgun-php,
# tests/Api/WebhookTest.php, testVerifyWebhookGood / testVerifyWebhookBad). Data only.
VECTOR_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
VECTOR_TIMESTAMP = "1403645220"
VECTOR_TOKEN = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6"
VECTOR_OTHER_TOKEN = "owyldpe6nxhmrn78epljl6bj0orrki1u3d2v5e6cnlmmuox8jr"
VECTOR_SIGNATURE = "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33"


def settings(secret: str | None) -> MailgunSettings:
    return MailgunSettings(
        name="mg",
        type="mailgun",
        api_key=MAILGUN_KEY,
        domain=MAILGUN_DOMAIN,
        webhook_secret=secret,
    )


def hook(secret: str | None) -> MailgunWebhook:
    return MailgunWebhook(settings(secret))


def event_data(event: str = "delivered", **fields: Any) -> dict[str, Any]:
    return {
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1403645219.8,
        "event": event,
        "recipient": "b@example.org",
        "message": {"headers": {"message-id": "20140624213940.2.9371@mg.example.com"}},
        "user-variables": {"mailgate_id": "msg_7"},
        **fields,
    }


def vector_body(**signature: str) -> bytes:
    block = {
        "timestamp": VECTOR_TIMESTAMP,
        "token": VECTOR_TOKEN,
        "signature": VECTOR_SIGNATURE,
    } | signature
    return json.dumps({"signature": block, "event-data": event_data()}).encode()


def vector_request(body: bytes | None = None, **changes: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "url": URL,
        "headers": {"content-type": "application/json"},
        "body": vector_body() if body is None else body,
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


def fake_posts(fake: FakeMailgun, *recipients: str) -> list[SignedPost]:
    """What the fake posts for one message taken for these recipients (no network)."""
    fields = {
        "from": ["a@example.com"],
        "to": list(recipients),
        "subject": ["s"],
        "o:tag": ["welcome"],
        "v:mailgate_id": ["msg_1"],
        "v:tenant_ref": ["t-9"],
    }
    fake.record("20240101000000.abc@mg.example.com", "msg_1", fields, recipients=list(recipients))
    received = fake.received[-1]
    return fake.signed_posts([o for r in recipients for o in outcomes(r, received)])


async def events_of(webhook: MailgunWebhook, posts: list[SignedPost]) -> list[InboundEvent]:
    found: list[InboundEvent] = []
    for post in posts:
        raw = request(post)
        await webhook.verify(raw)
        found.extend((await webhook.parse(raw)).events)
    return found


# --- the published vector -------------------------------------------------------------


async def test_mailguns_published_vector_verifies_and_parses() -> None:
    webhook = hook(VECTOR_KEY)
    assert webhook.configured
    raw = vector_request()
    await webhook.verify(raw)
    parsed = await webhook.parse(raw)
    assert parsed.replay_key == VECTOR_TOKEN
    assert parsed.events == [
        InboundEvent(
            kind=EventKind.DELIVERED,
            key=digest("G9Bn5sl1TC6nu79C8C0bwg", 1403645219.8, "b@example.org"),
            recipient="b@example.org",
            at=from_unix(1403645219.8),
            message_id="msg_7",
            provider_message_id="20140624213940.2.9371@mg.example.com",
        )
    ]


async def test_the_published_bad_vector_is_refused() -> None:
    with pytest.raises(WebhookRejected, match="signature"):
        await hook(VECTOR_KEY).verify(vector_request(vector_body(token=VECTOR_OTHER_TOKEN)))


async def test_the_published_vector_is_stale_today() -> None:
    with pytest.raises(WebhookRejected, match="from now"):
        await hook(VECTOR_KEY).verify(vector_request(received_at=time.time()))


async def test_the_legacy_form_post_is_verified_and_read() -> None:
    form = {
        "event": "bounced",
        "recipient": "b@example.org",
        "code": "550",
        "error": "5.1.1 No such user",
        "Message-Id": "<20140624213940.2.9371@mg.example.com>",
        "mailgate_id": "msg_7",
        "timestamp": VECTOR_TIMESTAMP,
        "token": VECTOR_TOKEN,
        "signature": VECTOR_SIGNATURE,
    }
    raw = vector_request(
        urlencode(form).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    webhook = hook(VECTOR_KEY)
    await webhook.verify(raw)
    parsed = await webhook.parse(raw)
    assert parsed.replay_key == VECTOR_TOKEN
    (event,) = parsed.events
    assert (event.kind, event.bounce, event.reason, event.detail) == (
        EventKind.BOUNCED,
        "hard",
        "5.1.1 No such user",
        {"status": 550},
    )
    assert event.provider_message_id == "20140624213940.2.9371@mg.example.com"
    assert event.message_id == "msg_7" and event.at == from_unix(1403645220)
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(
            vector_request(
                urlencode(form | {"token": VECTOR_OTHER_TOKEN}).encode(),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        )


async def test_a_subaccounts_parent_signature_is_taken() -> None:
    body = vector_body(signature="0" * 64, **{"parent-signature": VECTOR_SIGNATURE})
    await hook(VECTOR_KEY).verify(vector_request(body))


# --- the fake's posts -----------------------------------------------------------------


async def test_the_fakes_events_match_the_adapters_ids() -> None:
    async with open_case() as case:
        provider = case.provider()
        assert isinstance(provider, MailgunProvider)
        result = await provider.send(
            "msg_1",
            email(to=(Address("a@example.org", "A"),), bcc=(Address("bounce@example.org"),)),
        )
        await provider.close()
        fake = case.fake
        assert isinstance(fake, FakeMailgun)
        received = fake.received[0]
        happened = [
            o for r in ("a@example.org", "bounce@example.org") for o in outcomes(r, received)
        ]
        events = await events_of(hook(fake.webhook_signing_key), fake.signed_posts(happened))
    assert [(e.kind, e.recipient, e.bounce) for e in events] == [
        (EventKind.DELIVERED, "a@example.org", None),
        (EventKind.BOUNCED, "bounce@example.org", "hard"),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {result.provider_message_id}


async def test_every_outcome_of_the_fake_becomes_its_mailgate_event() -> None:
    fake = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN)
    recipients = [
        "b@example.org",
        "bounce@example.org",
        "softbounce@example.org",
        "complaint@example.org",
        "unsubscribe@example.org",
        "defer@example.org",
        "open+1@example.org",
    ]
    posts = fake_posts(fake, *recipients)
    webhook = hook(fake.webhook_signing_key)
    events = await events_of(webhook, posts)
    assert len(posts) == len(events)  # one event per request, as Mailgun posts them
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
        ("open+1@example.org", EventKind.DELIVERED, None),
        ("open+1@example.org", EventKind.OPENED, None),
        ("open+1@example.org", EventKind.CLICKED, None),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {"20240101000000.abc@mg.example.com"}
    assert len({e.key for e in events}) == len(events)
    tokens = {(await webhook.parse(request(p))).replay_key for p in posts}
    assert len(tokens) == len(posts) and None not in tokens
    by_kind = {e.kind: e for e in events}
    assert by_kind[EventKind.CLICKED].detail["url"] == "https://example.com/"
    assert by_kind[EventKind.DEFERRED].reason and by_kind[EventKind.BOUNCED].reason
    assert all(abs(e.at.timestamp() - time.time()) < 60 for e in events)


# --- what is refused ------------------------------------------------------------------


@pytest.fixture
async def signed() -> tuple[MailgunWebhook, SignedPost]:
    fake = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN, webhook_signing_key="signing-key-1")
    assert fake.webhook_signing_key == "signing-key-1"
    (post,) = fake_posts(fake, "b@example.org")
    return hook(fake.webhook_signing_key), post


def resigned(post: SignedPost, **changes: Any) -> SignedPost:
    """The post with fields of its signature block changed (nothing re-signed)."""
    body = json.loads(post.body)
    body["signature"] |= changes
    return SignedPost(post.headers, json.dumps(body).encode())


def block(post: SignedPost) -> dict[str, str]:
    signature: dict[str, str] = json.loads(post.body)["signature"]
    return signature


async def test_an_untouched_post_verifies(signed: tuple[MailgunWebhook, SignedPost]) -> None:
    webhook, post = signed
    await webhook.verify(request(post))


async def test_one_byte_of_the_token_changed_is_refused(
    signed: tuple[MailgunWebhook, SignedPost],
) -> None:
    """Mailgun signs the timestamp and token only, not `event-data`: the token's byte it is.

    Replaying the token with other event data is what `replay_key` stops.
    """
    webhook, post = signed
    token = block(post)["token"]
    changed = token[:-1] + ("0" if token[-1] != "0" else "1")
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(resigned(post, token=changed)))


async def test_a_changed_timestamp_is_refused(signed: tuple[MailgunWebhook, SignedPost]) -> None:
    webhook, post = signed
    later = str(int(block(post)["timestamp"]) + 1)
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(resigned(post, timestamp=later)))


@pytest.mark.parametrize("value", ["0" * 64, VECTOR_SIGNATURE, "", "ü" * 64])
async def test_a_changed_signature_is_refused(
    signed: tuple[MailgunWebhook, SignedPost], value: str
) -> None:
    webhook, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(resigned(post, signature=value)))


async def test_another_key_is_refused(signed: tuple[MailgunWebhook, SignedPost]) -> None:
    _, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await hook("signing-key-2").verify(request(post))


@pytest.mark.parametrize("skew", [-301.0, 301.0])
async def test_a_timestamp_more_than_five_minutes_off_is_refused(
    signed: tuple[MailgunWebhook, SignedPost], skew: float
) -> None:
    webhook, post = signed
    sent = float(block(post)["timestamp"])
    with pytest.raises(WebhookRejected, match="from now"):
        await webhook.verify(request(post, received_at=sent - skew))
    await webhook.verify(request(post, received_at=sent + 299))


@pytest.mark.parametrize("missing", ["timestamp", "token", "signature", "block"])
async def test_a_missing_signature_part_is_refused(
    signed: tuple[MailgunWebhook, SignedPost], missing: str
) -> None:
    webhook, post = signed
    body = json.loads(post.body)
    if missing == "block":
        del body["signature"]
    else:
        del body["signature"][missing]
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(post, body=json.dumps(body).encode()))


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b"\xff\xfe", b"a=%zz&&b"])
async def test_a_body_without_a_signature_is_refused(
    signed: tuple[MailgunWebhook, SignedPost], body: bytes
) -> None:
    webhook, post = signed
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(post, body=body))


async def test_without_a_webhook_secret_everything_is_refused(
    signed: tuple[MailgunWebhook, SignedPost],
) -> None:
    _, post = signed
    webhook = webhook_for(settings(None))
    assert isinstance(webhook, MailgunWebhook) and not webhook.configured
    with pytest.raises(WebhookRejected, match="not set"):
        await webhook.verify(request(post))


# --- parsing --------------------------------------------------------------------------


async def parse(data: dict[str, Any]) -> list[InboundEvent]:
    body = json.dumps({"signature": {"token": "t"}, "event-data": data}).encode()
    parsed = await hook(VECTOR_KEY).parse(RawWebhook(URL, {}, body))
    assert parsed.replay_key == "t"
    return parsed.events


@pytest.mark.parametrize("name", ["accepted", "stored", "list_member_uploaded", "new_thing"])
async def test_events_mailgate_does_not_track_are_skipped(name: str) -> None:
    assert await parse(event_data(name)) == []


async def test_mailgun_event_names_map_to_mailgate_kinds() -> None:
    status = {"code": 550, "message": "5.1.1 no such user", "description": ""}
    cases = [
        (event_data("delivered"), EventKind.DELIVERED, None, None),
        (
            event_data(
                "failed", severity="permanent", reason="bounce", **{"delivery-status": status}
            ),
            EventKind.BOUNCED,
            "hard",
            "5.1.1 no such user",
        ),
        (
            event_data("failed", severity="permanent", reason="suppress-bounce"),
            EventKind.BOUNCED,
            "hard",
            "suppress-bounce",
        ),
        (
            event_data("failed", severity="permanent", reason="old"),
            EventKind.BOUNCED,
            "soft",
            "old",
        ),
        (
            event_data(
                "failed",
                severity="temporary",
                reason="generic",
                **{"delivery-status": {"code": 452, "message": "4.2.2 full"}},
            ),
            EventKind.DEFERRED,
            None,
            "4.2.2 full",
        ),
        (
            event_data("rejected", reject={"reason": "hacked", "description": "spam"}),
            EventKind.BOUNCED,
            "hard",
            "spam",
        ),
        (event_data("complained"), EventKind.COMPLAINED, None, None),
        (event_data("opened"), EventKind.OPENED, None, None),
        (event_data("clicked", url="https://x.example/a"), EventKind.CLICKED, None, None),
        (event_data("unsubscribed"), EventKind.UNSUBSCRIBED, None, None),
    ]
    for data, kind, bounce, reason in cases:
        (event,) = await parse(data)
        assert (event.kind, event.bounce, event.reason) == (kind, bounce, reason), data
    (click,) = await parse(event_data("clicked", url="https://x.example/a"))
    assert click.detail["url"] == "https://x.example/a"


async def test_angle_brackets_around_the_message_id_are_dropped() -> None:
    data = event_data(message={"headers": {"message-id": "<x.1@mg.example.com>"}})
    (event,) = await parse(data)
    assert event.provider_message_id == "x.1@mg.example.com"


async def test_the_same_event_id_on_another_day_is_another_event() -> None:
    (today,) = await parse(event_data())
    (again,) = await parse(event_data())
    (tomorrow,) = await parse(event_data(timestamp=1403645219.8 + 86400))
    assert today.key == again.key != tomorrow.key


@pytest.mark.parametrize(
    "body",
    [
        b'{"signature": {"token": "t"}}',
        b'{"signature": {"token": "t"}, "event-data": []}',
        json.dumps({"signature": {"token": "t"}, "event-data": {"timestamp": 1}}).encode(),
        json.dumps(
            {"signature": {"token": "t"}, "event-data": event_data(timestamp="soon")}
        ).encode(),
        b'{"event-data": {}}',
        b"token=t&timestamp=1",
    ],
)
async def test_a_malformed_body_is_a_bad_webhook(body: bytes) -> None:
    with pytest.raises(BadWebhook):
        await hook(VECTOR_KEY).parse(RawWebhook(URL, {}, body))
