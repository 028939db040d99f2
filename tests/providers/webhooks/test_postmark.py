"""Postmark's webhooks: basic auth, one `RecordType` object per POST."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.config import PostmarkSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
)
from mailgate.message import Address
from mailgate.providers.fakes.base import Outcome, outcomes
from mailgate.providers.postmark import PostmarkProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.postmark import PostmarkWebhook
from mailgate.serving import serve_asgi
from tests.providers.cases.postmark import PostmarkCase, open_case
from tests.providers.support import TIMEOUT, email
from tests.providers.webhooks.support import basic

URL = "https://gateway.example/v1/providers/pm/webhook"
USER = "postmark-hooks"
PASSWORD = "pm-Webhook-pass-7f3a"
EDT = timezone(timedelta(hours=-4))

# Postmark's documented webhook examples (postmarkapp.com/developer/webhooks/*), as
# quoted in django-anymail's tests/test_postmark_webhooks.py. Data only.
DOC_BOUNCE: dict[str, Any] = {
    "RecordType": "Bounce",
    "ID": 901542550,
    "Type": "HardBounce",
    "TypeCode": 1,
    "ServerID": 23,
    "Name": "Hard bounce",
    "MessageID": "2706ee8a-737c-4285-b032-ccd317af53ed",
    "Description": "The server was unable to deliver your message "
    "(ex: unknown user, mailbox not found).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
    "Email": "bounce@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2016-04-27T16:28:50.3963933-04:00",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Postmark event test",
    "Content": "...",
}
DOC_DELIVERY: dict[str, Any] = {
    "RecordType": "Delivery",
    "ServerId": 23,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Recipient": "recipient@example.com",
    "Tag": "welcome-email",
    "Metadata": {"cohort": "2014-08-A", "userid": "12345"},
    "DeliveredAt": "2014-08-01T13:28:10.2735393-04:00",
    "Details": "Test delivery webhook details",
}
DOC_OPEN: dict[str, Any] = {
    "RecordType": "Open",
    "FirstOpen": True,
    "Client": {"Name": "Gmail", "Company": "Google", "Family": "Gmail"},
    "OS": {"Name": "unknown", "Company": "unknown", "Family": "unknown"},
    "Platform": "Unknown",
    "UserAgent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
    "ReadSeconds": 0,
    "Geo": {},
    "MessageID": "f4830d10-9c35-4f0c-bca3-3d9b459821f8",
    "ReceivedAt": "2016-04-27T16:21:41.2493688-04:00",
    "Recipient": "recipient@example.com",
}
DOC_CLICK: dict[str, Any] = {
    "RecordType": "Click",
    "ClickLocation": "HTML",
    "Platform": "Desktop",
    "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) etc.",
    "OriginalLink": "https://example.com/click/me",
    "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "City": "Novi Sad"},
    "MessageID": "f4830d10-9c35-4f0c-bca3-3d9b459821f8",
    "ReceivedAt": "2017-10-25T15:21:11.9065619Z",
    "Tag": "welcome-email",
    "Recipient": "recipient@example.com",
}
DOC_SPAM: dict[str, Any] = {
    "RecordType": "SpamComplaint",
    "ID": 901542551,
    "Type": "SpamComplaint",
    "TypeCode": 512,
    "Name": "Spam complaint",
    "Tag": "Test",
    "MessageID": "2706ee8a-737c-4285-b032-ccd317af53ed",
    "ServerID": 1234,
    "Description": "",
    "Details": "Test spam complaint details",
    "Email": "spam@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2016-04-27T16:28:50.3963933-04:00",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": False,
    "Subject": "Postmark event test",
}
DOC_UNSUBSCRIBE: dict[str, Any] = {
    "RecordType": "SubscriptionChange",
    "MessageID": "a4909a96-73d7-4c49-b148-a54522d3f7ac",
    "ServerID": 23,
    "MessageStream": "outbound",
    "ChangedAt": "2022-06-05T17:17:32Z",
    "Recipient": "john@example.com",
    "Origin": "Recipient",
    "SuppressSending": True,
    "SuppressionReason": "ManualSuppression",
    "Tag": "welcome-email",
    "Metadata": {"example": "value", "example_2": "value"},
}


def settings(username: str | None = USER, password: str | None = PASSWORD) -> PostmarkSettings:
    return PostmarkSettings(
        name="pm",
        type="postmark",
        api_key="0f8c2a3e-server-token",
        webhook_username=username,
        webhook_password=password,
    )


def request(body: Any, *, authorization: str | None = None) -> RawWebhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    headers["authorization"] = authorization or basic(USER, PASSWORD)
    return RawWebhook(URL, headers, raw)


async def parse(body: Any) -> list[InboundEvent]:
    webhook = PostmarkWebhook(settings())
    req = request(body)
    await webhook.verify(req)
    return (await webhook.parse(req)).events


# --- authorisation -------------------------------------------------------------------


async def test_the_configured_pair_is_let_in() -> None:
    webhook = webhook_for(settings())
    assert isinstance(webhook, PostmarkWebhook) and webhook.configured
    await webhook.verify(request(DOC_DELIVERY))


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, "wrong-password"),
        basic("someone-else", PASSWORD),
        basic(USER, PASSWORD + "x"),
        basic(USER.upper(), PASSWORD),
        f"Bearer {PASSWORD}",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),  # no colon
        "Basic",
        "Basic ünïcode",
        "",
    ],
)
async def test_anything_but_the_pair_is_refused(authorization: str) -> None:
    req = RawWebhook(URL, {"authorization": authorization} if authorization else {}, b"{}")
    with pytest.raises(WebhookRejected) as refused:
        await PostmarkWebhook(settings()).verify(req)
    assert PASSWORD not in str(refused.value)


async def test_no_authorization_header_is_refused() -> None:
    with pytest.raises(WebhookRejected, match="no Authorization"):
        await PostmarkWebhook(settings()).verify(RawWebhook(URL, {}, b"{}"))


@pytest.mark.parametrize(
    ("username", "password"), [(None, PASSWORD), (USER, None), (None, None), ("", PASSWORD)]
)
async def test_without_both_settings_everything_is_refused(
    username: str | None, password: str | None
) -> None:
    webhook = PostmarkWebhook(settings(username, password))
    assert not webhook.configured
    with pytest.raises(WebhookRejected) as refused:
        await webhook.verify(request(DOC_DELIVERY, authorization=basic(USER, PASSWORD)))
    assert PASSWORD not in str(refused.value)


# --- Postmark's documented payloads --------------------------------------------------


async def test_documented_hard_bounce() -> None:
    [event] = await parse(DOC_BOUNCE)
    assert event == InboundEvent(
        kind=EventKind.BOUNCED,
        key="bounce:901542550",
        recipient="bounce@example.com",
        at=datetime(2016, 4, 27, 16, 28, 50, 396393, tzinfo=EDT),
        message_id=None,
        provider_message_id="2706ee8a-737c-4285-b032-ccd317af53ed",
        bounce="hard",
        reason="smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        detail={"type": "HardBounce"},
    )


async def test_documented_delivery() -> None:
    [event] = await parse(DOC_DELIVERY)
    assert event.kind is EventKind.DELIVERED
    assert event.recipient == "recipient@example.com"
    assert event.at == datetime(2014, 8, 1, 13, 28, 10, 273539, tzinfo=EDT)
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.message_id is None  # not one of ours: no mailgate_id in Metadata
    assert event.key.startswith("sha256:")
    assert event.detail == {"status": "Test delivery webhook details"}


async def test_documented_open_click_complaint_and_unsubscribe() -> None:
    [opened] = await parse(DOC_OPEN)
    assert opened.kind is EventKind.OPENED
    assert opened.at == datetime(2016, 4, 27, 16, 21, 41, 249368, tzinfo=EDT)
    assert opened.detail["user_agent"].startswith("Mozilla/5.0")
    [clicked] = await parse(DOC_CLICK)
    assert clicked.kind is EventKind.CLICKED
    assert clicked.detail["url"] == "https://example.com/click/me"
    assert clicked.at == datetime(2017, 10, 25, 15, 21, 11, 906561, tzinfo=UTC)
    [complaint] = await parse(DOC_SPAM)
    assert complaint.kind is EventKind.COMPLAINED
    assert complaint.key == "bounce:901542551"
    assert complaint.recipient == "spam@example.com"
    [unsubscribed] = await parse(DOC_UNSUBSCRIBE)
    assert unsubscribed.kind is EventKind.UNSUBSCRIBED
    assert unsubscribed.recipient == "john@example.com"
    assert unsubscribed.at == datetime(2022, 6, 5, 17, 17, 32, tzinfo=UTC)


@pytest.mark.parametrize(
    ("bounce_type", "inactive", "kind", "bounce"),
    [
        ("HardBounce", True, EventKind.BOUNCED, "hard"),
        ("BadEmailAddress", False, EventKind.BOUNCED, "hard"),
        ("ManuallyDeactivated", True, EventKind.BOUNCED, "hard"),
        ("SoftBounce", False, EventKind.BOUNCED, "soft"),
        ("Blocked", False, EventKind.BOUNCED, "soft"),
        ("DMARCPolicy", False, EventKind.BOUNCED, "soft"),
        ("SpamNotification", False, EventKind.BOUNCED, "soft"),
        ("Unknown", False, EventKind.BOUNCED, "soft"),
        ("SoftBounce", True, EventKind.BOUNCED, "hard"),  # Postmark deactivated the address
        ("Transient", False, EventKind.DEFERRED, None),
        ("DnsError", False, EventKind.DEFERRED, None),
        ("Unsubscribe", False, EventKind.UNSUBSCRIBED, None),
    ],
)
async def test_bounce_types(
    bounce_type: str, inactive: bool, kind: EventKind, bounce: str | None
) -> None:
    [event] = await parse({**DOC_BOUNCE, "Type": bounce_type, "Inactive": inactive})
    assert (event.kind, event.bounce) == (kind, bounce)
    assert event.detail["type"] == bounce_type


@pytest.mark.parametrize(
    "body",
    [
        {**DOC_BOUNCE, "Type": "AutoResponder", "Inactive": False},
        {**DOC_UNSUBSCRIBE, "SuppressionReason": "HardBounce"},  # the Bounce event says it
        {**DOC_UNSUBSCRIBE, "SuppressSending": False, "SuppressionReason": None},  # reactivated
        {"RecordType": "SomethingNew", "MessageID": "x"},
    ],
)
async def test_records_mailgate_does_not_track_are_left_out(body: dict[str, Any]) -> None:
    assert await parse(body) == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        [DOC_DELIVERY],  # Postmark posts one object, never an array
        {"FromFull": {"Email": "from@example.org"}},  # the inbound webhook's shape
        {**DOC_DELIVERY, "DeliveredAt": "yesterday"},
        {**DOC_DELIVERY, "DeliveredAt": 1400000000},
        {**DOC_DELIVERY, "MessageID": 42},
        {**DOC_DELIVERY, "Metadata": "mailgate_id=msg_1"},
        {**DOC_BOUNCE, "ID": {"id": 1}},
    ],
)
async def test_a_body_postmark_does_not_send_is_bad(body: Any) -> None:
    with pytest.raises(BadWebhook):
        await parse(body)


async def test_an_event_without_an_id_has_a_stable_key() -> None:
    first, again = await parse(DOC_DELIVERY), await parse(DOC_DELIVERY)
    other = await parse({**DOC_DELIVERY, "Recipient": "other@example.com"})
    assert first[0].key == again[0].key != other[0].key


# --- the fake's events ---------------------------------------------------------------

RECIPIENTS = {
    "to": (Address("bounce@example.org"), Address("softbounce@example.org")),
    "cc": (Address("complaint@example.org"), Address("Open@Example.org", "Opener")),
    "bcc": (
        Address("unsubscribe@example.org"),
        Address("defer@example.org"),
        Address("plain@example.org"),
    ),
}
EXPECTED = [
    (EventKind.BOUNCED, "bounce@example.org", "hard"),
    (EventKind.DEFERRED, "softbounce@example.org", None),
    (EventKind.BOUNCED, "softbounce@example.org", "soft"),
    (EventKind.DELIVERED, "complaint@example.org", None),
    (EventKind.COMPLAINED, "complaint@example.org", None),
    (EventKind.DELIVERED, "Open@Example.org", None),
    (EventKind.OPENED, "Open@Example.org", None),
    (EventKind.CLICKED, "Open@Example.org", None),
    (EventKind.DELIVERED, "unsubscribe@example.org", None),
    (EventKind.UNSUBSCRIBED, "unsubscribe@example.org", None),
    (EventKind.DEFERRED, "defer@example.org", None),
    (EventKind.DELIVERED, "defer@example.org", None),
    (EventKind.DELIVERED, "plain@example.org", None),
]
HTML = '<p>Welcome! <a href="https://example.com/welcome?x=1">start</a></p>'


@pytest.fixture
async def pm() -> AsyncIterator[PostmarkCase]:
    async with open_case() as case:
        try:
            yield case
        finally:
            await case.fake.close()


async def send(pm: PostmarkCase) -> str:
    provider = pm.make(base_url=pm.url, timeout=TIMEOUT, good_credentials=True)
    assert isinstance(provider, PostmarkProvider)
    result = await provider.send("msg_1", email(html=HTML, **RECIPIENTS))
    await provider.close()
    assert result.provider_message_id is not None
    return result.provider_message_id


def happened(pm: PostmarkCase) -> list[Outcome]:
    [received] = pm.fake.received
    every = [a.email for a in (*RECIPIENTS["to"], *RECIPIENTS["cc"], *RECIPIENTS["bcc"])]
    return [o for r in every for o in outcomes(r, received)]


def check(events: list[InboundEvent], provider_id: str) -> None:
    assert [(e.kind, e.recipient, e.bounce) for e in events] == EXPECTED
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {provider_id}
    assert len({e.key for e in events}) == len(events)
    [clicked] = [e for e in events if e.kind is EventKind.CLICKED]
    assert clicked.detail["url"] == "https://example.com/welcome?x=1"


async def test_the_fakes_events_verify_and_parse(pm: PostmarkCase) -> None:
    provider_id = await send(pm)
    fake = pm.fake
    webhook = PostmarkWebhook(settings(fake.webhook_username, fake.webhook_password))
    events: list[InboundEvent] = []
    for post in pm.fake.signed_posts(happened(pm)):
        req = RawWebhook(URL, {k.lower(): v for k, v in post.headers.items()}, post.body)
        await webhook.verify(req)
        assert isinstance(json.loads(post.body), dict)  # one object per POST
        events += (await webhook.parse(req)).events
    check(events, provider_id)


async def test_the_fakes_events_need_the_right_pair(pm: PostmarkCase) -> None:
    await send(pm)
    [post, *_] = pm.fake.signed_posts(happened(pm))
    req = RawWebhook(URL, {k.lower(): v for k, v in post.headers.items()}, post.body)
    with pytest.raises(WebhookRejected):
        await PostmarkWebhook(settings(pm.fake.webhook_username, "not-it")).verify(req)


async def test_the_fake_posts_its_events_to_its_webhook_url(pm: PostmarkCase) -> None:
    fake = pm.fake
    webhook = PostmarkWebhook(settings(fake.webhook_username, fake.webhook_password))
    events: list[InboundEvent] = []

    async def receive(r: Request) -> Response:
        req = RawWebhook(str(r.url), dict(r.headers), await r.body())
        try:
            await webhook.verify(req)
        except WebhookRejected:
            return Response(status_code=401)
        parsed = await webhook.parse(req)
        events.extend(parsed.events)
        return JSONResponse({"received": len(parsed.events)})

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    async with serve_asgi(app) as server:
        fake.webhook_url = f"{server.url}/hook"
        provider_id = await send(pm)
        await fake.drain_events()
    assert fake.events_posted == len(EXPECTED) and fake.event_failures == 0
    check(events, provider_id)
