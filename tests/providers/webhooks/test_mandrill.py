"""Mandrill's webhooks: HMAC-SHA1 over the URL and the form, a batch of `mandrill_events`."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from mailgate.config import MandrillSettings
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
from mailgate.providers.fakes.base import SignedPost, outcomes
from mailgate.providers.fakes.mandrill import FakeMandrill
from mailgate.providers.mandrill import MandrillProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.mandrill import MandrillWebhook
from tests.providers.cases.mandrill import MANDRILL_KEY, open_case
from tests.providers.support import email

URL = "https://gateway.example/v1/providers/md/webhook"

# Mandrill's own example batch (its "send test" button), posted by Mandrill and captured
# with its signature in the fixtures of the mandrill-webhook-validator npm package
# (MammothHR/mandrill-webhook-validator: test/fixtures/ci82n7lo30000f28333c73jge.json and
# the key and URL in test/mandrill-webhook-validator_test.js). Data only; the JSON text is
# rebuilt below exactly as posted (PHP's encoder, "/" written as "\/").
VECTOR_KEY = "Y-D2ZZseFJBYf4R7KPQovA"
VECTOR_URL = "http://maus.pw:3000/mandrill"
VECTOR_SIGNATURE = "C7xUEvDPtUHAqouuQBFXDEVD1pU="
VECTOR_TS = 1428129133
_NOT_TRACKED: dict[str, Any] = {"opens": [], "clicks": []}
_TRACKED: dict[str, Any] = {
    "opens": [{"ts": 1365111111}],
    "clicks": [{"ts": 1365111111, "url": "http://mandrill.com"}],
}
_VISIT: dict[str, Any] = {
    "ip": "127.0.0.1",
    "location": {
        "country_short": "US",
        "country": "United States",
        "region": "Oklahoma",
        "city": "Oklahoma City",
        "latitude": 35.4675598145,
        "longitude": -97.5164337158,
        "postal_code": "73101",
        "timezone": "-05:00",
    },
    "user_agent": (
        "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10.6; en-US; rv:1.9.1.8) "
        "Gecko/20100317 Postbox/1.1.3"
    ),
    "user_agent_parsed": {
        "type": "Email Client",
        "ua_family": "Postbox",
        "ua_name": "Postbox 1.1.3",
        "ua_version": "1.1.3",
        "ua_url": "http://www.postbox-inc.com/",
        "ua_company": "Postbox, Inc.",
        "ua_company_url": "http://www.postbox-inc.com/",
        "ua_icon": "http://cdn.mandrill.com/img/email-client-icons/postbox.png",
        "os_family": "OS X",
        "os_name": "OS X 10.6 Snow Leopard",
        "os_url": "http://www.apple.com/osx/",
        "os_company": "Apple Computer, Inc.",
        "os_company_url": "http://www.apple.com/",
        "os_icon": "http://cdn.mandrill.com/img/email-client-icons/macosx.png",
        "mobile": False,
    },
}


def _vector_event(
    n: int,
    event: str,
    state: str,
    tracking: dict[str, Any] | None,
    msg_extra: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event_id = "example" + "a" * 25 + (str(n) if n else "")
    msg = {
        "ts": 1365109999,
        "subject": "This an example webhook message",
        "email": "example.webhook@mandrillapp.com",
        "sender": "example.sender@mandrillapp.com",
        "tags": ["webhook-example"],
        **(tracking or {}),
        "state": state,
        "metadata": {"user_id": 111},
        "_id": event_id,
        "_version": "example" + "a" * 15,
        **(msg_extra or {}),
    }
    return {"event": event, "msg": msg, "_id": event_id, **(extra or {}), "ts": VECTOR_TS}


VECTOR_EVENTS = [
    _vector_event(0, "send", "sent", _NOT_TRACKED),
    _vector_event(
        1,
        "deferral",
        "deferred",
        _NOT_TRACKED,
        {
            "smtp_events": [
                {
                    "destination_ip": "127.0.0.1",
                    "diag": "451 4.3.5 Temporarily unavailable, try again later.",
                    "source_ip": "127.0.0.1",
                    "ts": 1365111111,
                    "type": "deferred",
                    "size": 0,
                }
            ]
        },
    ),
    _vector_event(
        2,
        "hard_bounce",
        "bounced",
        None,
        {
            "bounce_description": "bad_mailbox",
            "bgtools_code": 10,
            "diag": "smtp;550 5.1.1 The email account that you tried to reach does not exist. "
            "Please try double-checking the recipient's email address for typos or "
            "unnecessary spaces.",
        },
    ),
    _vector_event(
        3,
        "soft_bounce",
        "soft-bounced",
        None,
        {
            "bounce_description": "mailbox_full",
            "bgtools_code": 22,
            "diag": "smtp;552 5.2.2 Over Quota",
        },
    ),
    _vector_event(4, "open", "sent", _TRACKED, extra=_VISIT),
    _vector_event(5, "click", "sent", _TRACKED, extra=_VISIT | {"url": "http://mandrill.com"}),
    _vector_event(6, "spam", "sent", _TRACKED),
    _vector_event(7, "unsub", "sent", _TRACKED),
    _vector_event(8, "reject", "rejected", _NOT_TRACKED),
]
VECTOR_JSON = json.dumps(VECTOR_EVENTS, separators=(",", ":")).replace("/", "\\/")


def settings(secret: str | None) -> MandrillSettings:
    return MandrillSettings(name="md", type="mandrill", api_key=MANDRILL_KEY, webhook_secret=secret)


def hook(secret: str | None) -> MandrillWebhook:
    return MandrillWebhook(settings(secret))


def form(events_json: str) -> bytes:
    return urlencode({"mandrill_events": events_json}).encode()


def vector_request(**changes: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "url": VECTOR_URL,
        "headers": {"x-mandrill-signature": VECTOR_SIGNATURE},
        "body": form(VECTOR_JSON),
    }
    return RawWebhook(**(values | changes))


def request(post: SignedPost, **changes: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "url": URL,
        "headers": {k.lower(): v for k, v in post.headers.items()},
        "body": post.body,
    }
    return RawWebhook(**(values | changes))


def fake_posts(fake: FakeMandrill, *recipients: str) -> list[SignedPost]:
    """What the fake posts for one message taken for these recipients (no network)."""
    message = {
        "from_email": "a@example.com",
        "to": [{"email": r, "type": "to"} for r in recipients],
        "subject": "s",
        "tags": ["welcome"],
        "metadata": {"mailgate_id": "msg_1", "tenant_ref": "t-9"},
    }
    fake.record("first-recipient-id", "msg_1", message, recipients=list(recipients))
    received = fake.received[-1]
    return fake.signed_posts([o for r in recipients for o in outcomes(r, received)])


async def events_of(webhook: MandrillWebhook, posts: list[SignedPost]) -> list[InboundEvent]:
    found: list[InboundEvent] = []
    for post in posts:
        raw = request(post)
        await webhook.verify(raw)
        found.extend((await webhook.parse(raw)).events)
    return found


# --- the published vector -------------------------------------------------------------


async def test_mandrills_own_example_batch_verifies() -> None:
    webhook = hook(VECTOR_KEY)
    assert webhook.configured
    await webhook.verify(vector_request())


async def test_mandrills_own_example_batch_parses_to_every_kind() -> None:
    parsed = await hook(VECTOR_KEY).parse(vector_request())
    assert parsed.replay_key is None
    events = parsed.events
    assert [(e.kind, e.bounce) for e in events] == [
        (EventKind.DELIVERED, None),
        (EventKind.DEFERRED, None),
        (EventKind.BOUNCED, "hard"),
        (EventKind.BOUNCED, "soft"),
        (EventKind.OPENED, None),
        (EventKind.CLICKED, None),
        (EventKind.COMPLAINED, None),
        (EventKind.UNSUBSCRIBED, None),
        (EventKind.BOUNCED, "hard"),
    ]
    assert {e.recipient for e in events} == {"example.webhook@mandrillapp.com"}
    assert {e.at for e in events} == {from_unix(VECTOR_TS)}
    assert {e.message_id for e in events} == {None}  # metadata has no mailgate_id
    assert events[0].provider_message_id == "example" + "a" * 25
    assert events[0].key == digest("example" + "a" * 25, "send", VECTOR_TS)
    assert events[1].reason == "451 4.3.5 Temporarily unavailable, try again later."
    assert events[2].reason is not None and events[2].reason.startswith("smtp;550 5.1.1")
    assert events[2].detail["bounce_description"] == "bad_mailbox"
    assert events[3].reason == "smtp;552 5.2.2 Over Quota"
    assert events[5].detail["url"] == "http://mandrill.com"
    assert "Postbox" in events[4].detail["user_agent"]
    assert events[8].reason
    assert len({e.key for e in events}) == len(events)


async def test_the_example_batch_is_refused_at_another_url() -> None:
    webhook = hook(VECTOR_KEY)
    for url in ("https://maus.pw:3000/mandrill", VECTOR_URL + "/", VECTOR_URL + "?x=1"):
        with pytest.raises(WebhookRejected, match="signature"):
            await webhook.verify(vector_request(url=url))


# --- the fake's posts -----------------------------------------------------------------


async def test_the_fakes_events_match_the_adapters_ids() -> None:
    async with open_case() as case:
        provider = case.provider()
        assert isinstance(provider, MandrillProvider)
        result = await provider.send(
            "msg_1",
            email(to=(Address("a@example.org"),), cc=(Address("bounce@example.org"),)),
        )
        await provider.close()
        fake = case.fake
        assert isinstance(fake, FakeMandrill)
        fake.webhook_url = URL
        received = fake.received[0]
        happened = [
            o for r in ("a@example.org", "bounce@example.org") for o in outcomes(r, received)
        ]
        events = await events_of(hook(fake.webhook_key), fake.signed_posts(happened))
    assert [(e.kind, e.recipient, e.bounce) for e in events] == [
        (EventKind.DELIVERED, "a@example.org", None),
        (EventKind.BOUNCED, "bounce@example.org", "hard"),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    # Each recipient has its own `_id`; the send answer's first is the one the adapter keeps.
    assert events[0].provider_message_id == result.provider_message_id
    assert events[1].provider_message_id not in (None, result.provider_message_id)


async def test_every_outcome_of_the_fake_becomes_its_mailgate_event() -> None:
    fake = FakeMandrill(MANDRILL_KEY, webhook_key="webhook-key-1")
    assert fake.webhook_key == "webhook-key-1"
    fake.webhook_url = URL
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
    assert len(posts) == 1  # one batch, as Mandrill posts them
    assert b"%5C%2F" in posts[0].body  # "\/", as Mandrill's PHP writes "/"
    events = await events_of(hook("webhook-key-1"), posts)
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
    assert events[0].provider_message_id == "first-recipient-id"
    ids = {e.recipient: e.provider_message_id for e in events}
    assert len(set(ids.values())) == len(recipients)  # each recipient has its own `_id`
    assert len({e.key for e in events}) == len(events)
    by_kind = {e.kind: e for e in events}
    assert by_kind[EventKind.CLICKED].detail["url"] == "https://example.com/"
    assert by_kind[EventKind.DEFERRED].reason == "452 4.2.2 Mailbox full"
    assert all(abs(e.at.timestamp() - time.time()) < 60 for e in events)


async def test_the_fake_signs_the_url_it_posts_to() -> None:
    fake = FakeMandrill(MANDRILL_KEY)
    fake.webhook_url = URL
    (post,) = fake_posts(fake, "b@example.org")
    webhook = hook(fake.webhook_key)
    await webhook.verify(request(post, url=URL))
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(post, url=URL.replace("https:", "http:")))


# --- what is refused ------------------------------------------------------------------


@pytest.fixture
async def signed() -> tuple[MandrillWebhook, SignedPost]:
    fake = FakeMandrill(MANDRILL_KEY)
    fake.webhook_url = URL
    (post,) = fake_posts(fake, "b@example.org")
    return hook(fake.webhook_key), post


def flip(data: bytes, at: int) -> bytes:
    changed = data[at] ^ 0x01
    if chr(changed) in "&=%+":  # keep the form well-formed: only the value changes
        changed = data[at] ^ 0x02
    return data[:at] + bytes([changed]) + data[at + 1 :]


async def test_an_untouched_post_verifies(signed: tuple[MandrillWebhook, SignedPost]) -> None:
    webhook, post = signed
    await webhook.verify(request(post))


@pytest.mark.parametrize("at", [20, 100, -2])
async def test_one_body_byte_changed_is_refused(
    signed: tuple[MandrillWebhook, SignedPost], at: int
) -> None:
    webhook, post = signed
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(post, body=flip(post.body, at % len(post.body))))


async def test_another_parameter_added_is_refused(
    signed: tuple[MandrillWebhook, SignedPost],
) -> None:
    webhook, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(post, body=post.body + b"&extra=1"))


@pytest.mark.parametrize("value", ["AAAAAAAAAAAAAAAAAAAAAAAAAAA=", VECTOR_SIGNATURE, "é"])
async def test_a_changed_signature_is_refused(
    signed: tuple[MandrillWebhook, SignedPost], value: str
) -> None:
    webhook, post = signed
    headers = {k.lower(): v for k, v in post.headers.items()} | {"x-mandrill-signature": value}
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook.verify(request(post, headers=headers))


async def test_another_key_is_refused(signed: tuple[MandrillWebhook, SignedPost]) -> None:
    _, post = signed
    with pytest.raises(WebhookRejected, match="signature"):
        await hook("another-webhook-key").verify(request(post))


async def test_a_missing_signature_header_is_refused(
    signed: tuple[MandrillWebhook, SignedPost],
) -> None:
    webhook, post = signed
    headers = {k.lower(): v for k, v in post.headers.items() if k != "X-Mandrill-Signature"}
    with pytest.raises(WebhookRejected, match="header"):
        await webhook.verify(request(post, headers=headers))


async def test_a_body_that_is_no_form_is_refused(
    signed: tuple[MandrillWebhook, SignedPost],
) -> None:
    webhook, post = signed
    for body in (b"\xff\xfe", b"a=1&&b=2"):
        with pytest.raises(WebhookRejected):
            await webhook.verify(request(post, body=body))


async def test_a_replay_has_no_timestamp_to_refuse_but_the_same_event_keys(
    signed: tuple[MandrillWebhook, SignedPost],
) -> None:
    """Mandrill signs no time: a replay verifies, and the recorder drops its known keys."""
    webhook, post = signed
    later = request(post, received_at=time.time() + 86400)
    await webhook.verify(later)
    first, again = await webhook.parse(request(post)), await webhook.parse(later)
    assert [e.key for e in first.events] == [e.key for e in again.events]


async def test_without_a_webhook_secret_everything_is_refused(
    signed: tuple[MandrillWebhook, SignedPost],
) -> None:
    _, post = signed
    webhook = webhook_for(settings(None))
    assert isinstance(webhook, MandrillWebhook) and not webhook.configured
    with pytest.raises(WebhookRejected, match="not set"):
        await webhook.verify(request(post))


# --- parsing --------------------------------------------------------------------------


async def parse(events: Any) -> list[InboundEvent]:
    raw = RawWebhook(URL, {}, form(json.dumps(events)))
    return (await hook(VECTOR_KEY).parse(raw)).events


async def test_sync_and_inbound_events_are_skipped() -> None:
    sync = {"type": "blacklist", "action": "add", "reject": {"email": "b@example.org"}}
    inbound = {"event": "inbound", "msg": {"email": "in@example.org"}, "ts": VECTOR_TS}
    assert await parse([sync, inbound, _vector_event(9, "new_thing", "sent", None)]) == []


async def test_our_id_comes_from_the_metadata() -> None:
    event = _vector_event(0, "send", "sent", None)
    event["msg"]["metadata"] = {"mailgate_id": "msg_7"}
    (parsed,) = await parse([event])
    assert parsed.message_id == "msg_7"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"other=1",
        form("not json"),
        form('{"event": "send"}'),
        form("[1]"),
        form('[{"event": "send", "ts": 1}]'),
        form(json.dumps([_vector_event(0, "send", "sent", None) | {"ts": "now"}])),
    ],
)
async def test_a_malformed_body_is_a_bad_webhook(body: bytes) -> None:
    with pytest.raises(BadWebhook):
        await hook(VECTOR_KEY).parse(RawWebhook(URL, {}, body))
