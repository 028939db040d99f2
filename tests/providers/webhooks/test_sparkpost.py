"""SparkPost's webhooks: basic auth, a batch of `{"msys": {<class>: event}}` elements."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.config import SparkPostSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
)
from mailgate.providers.fakes.base import Outcome, outcomes
from mailgate.providers.fakes.sparkpost import FakeSparkPost
from mailgate.providers.sparkpost import SparkPostProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.sparkpost import SparkPostWebhook
from mailgate.serving import serve_asgi
from tests.providers.cases.sparkpost import SparkPostCase, open_case
from tests.providers.support import TIMEOUT, email
from tests.providers.webhooks.support import EVERY, EXPECTED, HTML, RECIPIENTS, basic

URL = "https://gateway.example/v1/providers/sp/webhook"
USER = "sparkpost-hooks"
PASSWORD = "sp-Webhook-pass-3e8d"

# SparkPost's validation batch ("Sample Batch", developers.sparkpost.com
# content/api/webhooks.apib): a ping with no event.
DOC_PING: list[dict[str, Any]] = [{"msys": {}}]
# SparkPost's sample click event (content/api/message-events.apib: "the same event
# data that gets delivered to you through webhooks"), in its webhook wrapper. Data only.
DOC_CLICK: dict[str, Any] = {
    "type": "click",
    "campaign_id": "Example Campaign Name",
    "customer_id": "1",
    "delv_method": "esmtp",
    "event_id": "92356927693813856",
    "friendly_from": "sender@example.com",
    "injection_time": "2016-04-18T14:25:07.000Z",
    "ip_address": "127.0.0.1",
    "ip_pool": "Example-Ip-Pool",
    "message_id": "000443ee14578172be22",
    "msg_from": "sender@example.com",
    "msg_size": "1337",
    "num_retries": "2",
    "queue_time": "12",
    "rcpt_meta": {"customKey": "customValue"},
    "rcpt_tags": ["male", "US"],
    "rcpt_to": "recipient@example.com",
    "raw_rcpt_to": "recipient@example.com",
    "rcpt_type": "cc",
    "routing_domain": "example.com",
    "sending_ip": "127.0.0.1",
    "subaccount_id": "101",
    "subject": "Summer deals are here!",
    "target_link_name": "Example Link Name",
    "target_link_url": "http://example.com",
    "template_id": "templ-1234",
    "template_version": "1",
    "timestamp": "2016-04-18T14:25:07.000+00:00",
    "transmission_id": "65832150921904138",
    "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_3) AppleWebKit/537.36",
    "geo_ip": {"country": "US", "region": "MD", "city": "Columbia"},
}
# SparkPost's sample bounce, as quoted in django-anymail's tests/test_sparkpost_webhooks.py.
DOC_BOUNCE: dict[str, Any] = {
    "type": "bounce",
    "bounce_class": "10",
    "customer_id": "00000",
    "error_code": "550",
    "event_id": "84345317653491230",
    "message_id": "0004e3724f57753a3561",
    "raw_rcpt_to": "bounce@example.com",
    "raw_reason": "550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown",
    "rcpt_to": "bounce@example.com",
    "reason": "550 5.1.1 ...@... Recipient address rejected: ...",
    "timestamp": "1464824548",
    "transmission_id": "84345317650824116",
}


def settings(username: str | None = USER, password: str | None = PASSWORD) -> SparkPostSettings:
    return SparkPostSettings(
        name="sp",
        type="sparkpost",
        api_key="sparkpost-api-key",
        webhook_username=username,
        webhook_password=password,
    )


def request(body: Any, *, authorization: str | None = None) -> RawWebhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", "x-messagesystems-batch-id": "b1"}
    headers["authorization"] = authorization or basic(USER, PASSWORD)
    return RawWebhook(URL, headers, raw)


def batch(*events: dict[str, Any], event_class: str = "message_event") -> list[dict[str, Any]]:
    return [{"msys": {event_class: e}} for e in events]


async def parse(body: Any) -> list[InboundEvent]:
    webhook = SparkPostWebhook(settings())
    req = request(body)
    await webhook.verify(req)
    return (await webhook.parse(req)).events


# --- authorisation -------------------------------------------------------------------


async def test_the_configured_pair_is_let_in() -> None:
    webhook = webhook_for(settings())
    assert isinstance(webhook, SparkPostWebhook) and webhook.configured
    await webhook.verify(request(DOC_PING))


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, "wrong-password"),
        basic("someone-else", PASSWORD),
        PASSWORD,  # a bare token, as the deprecated auth_token scheme would send
        f"Bearer {PASSWORD}",
        "Basic ====",
        "Basic " + base64.b64encode(b"\xff\xfe").decode(),
        "",
    ],
)
async def test_anything_but_the_pair_is_refused(authorization: str) -> None:
    req = RawWebhook(URL, {"authorization": authorization} if authorization else {}, b"[]")
    with pytest.raises(WebhookRejected) as refused:
        await SparkPostWebhook(settings()).verify(req)
    assert PASSWORD not in str(refused.value)


async def test_the_deprecated_token_header_is_not_enough() -> None:
    req = RawWebhook(URL, {"x-messagesystems-webhook-token": PASSWORD}, b"[]")
    with pytest.raises(WebhookRejected, match="no Authorization"):
        await SparkPostWebhook(settings()).verify(req)


@pytest.mark.parametrize(("username", "password"), [(None, PASSWORD), (USER, None)])
async def test_without_both_settings_everything_is_refused(
    username: str | None, password: str | None
) -> None:
    webhook = SparkPostWebhook(settings(username, password))
    assert not webhook.configured
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(DOC_PING, authorization=basic(USER, PASSWORD)))


# --- SparkPost's documented payloads -------------------------------------------------


async def test_the_validation_ping_carries_no_event() -> None:
    assert await parse(DOC_PING) == []


async def test_documented_bounce() -> None:
    [event] = await parse(batch(DOC_BOUNCE))
    assert event == InboundEvent(
        kind=EventKind.BOUNCED,
        key="84345317653491230",
        recipient="bounce@example.com",
        at=datetime.fromtimestamp(1464824548, UTC),
        message_id=None,
        provider_message_id="84345317650824116",
        bounce="hard",
        reason="550 5.1.1 <bounce@example.com>: Recipient address rejected: User unknown",
        detail={"bounce_class": "10", "status": "550"},
    )


async def test_documented_click() -> None:
    [event] = await parse(batch(DOC_CLICK, event_class="track_event"))
    assert event.kind is EventKind.CLICKED
    assert event.key == "92356927693813856"
    assert event.at == datetime(2016, 4, 18, 14, 25, 7, tzinfo=UTC)
    assert event.provider_message_id == "65832150921904138"
    assert event.detail["url"] == "http://example.com"
    assert event.message_id is None  # rcpt_meta has no mailgate_id: not ours


@pytest.mark.parametrize(
    ("bounce_class", "bounce"),
    [
        ("10", "hard"),
        ("30", "hard"),
        ("90", "hard"),
        ("1", "soft"),
        ("20", "soft"),
        ("21", "soft"),
        ("22", "soft"),
        ("25", "soft"),
        ("50", "soft"),
        ("51", "soft"),
        ("70", "soft"),
        ("100", "soft"),
    ],
)
async def test_bounce_classes(bounce_class: str, bounce: str) -> None:
    [event] = await parse(batch({**DOC_BOUNCE, "bounce_class": bounce_class}))
    assert (event.kind, event.bounce) == (EventKind.BOUNCED, bounce)
    [oob] = await parse(batch({**DOC_BOUNCE, "type": "out_of_band", "bounce_class": bounce_class}))
    assert (oob.kind, oob.bounce) == (EventKind.BOUNCED, bounce)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ({**DOC_BOUNCE, "type": "delivery"}, EventKind.DELIVERED),
        ({**DOC_BOUNCE, "type": "delay", "bounce_class": "21"}, EventKind.DEFERRED),
        ({**DOC_BOUNCE, "type": "spam_complaint", "fbtype": "abuse"}, EventKind.COMPLAINED),
        ({**DOC_CLICK, "type": "open"}, EventKind.OPENED),
        ({**DOC_CLICK, "type": "initial_open"}, EventKind.OPENED),
        ({**DOC_CLICK, "type": "amp_click"}, EventKind.CLICKED),
        ({**DOC_BOUNCE, "type": "list_unsubscribe"}, EventKind.UNSUBSCRIBED),
        ({**DOC_BOUNCE, "type": "link_unsubscribe"}, EventKind.UNSUBSCRIBED),
    ],
)
async def test_event_types(raw: dict[str, Any], kind: EventKind) -> None:
    [event] = await parse(batch(raw))
    assert event.kind is kind


@pytest.mark.parametrize(
    "raw",
    [
        {**DOC_BOUNCE, "type": "injection"},
        {**DOC_BOUNCE, "type": "policy_rejection"},
        {**DOC_BOUNCE, "type": "generation_failure"},
        {**DOC_BOUNCE, "type": "something_new"},
        {**DOC_BOUNCE, "type": "out_of_band", "bounce_class": "60"},  # an auto-reply
    ],
)
async def test_events_mailgate_does_not_track_are_left_out(raw: dict[str, Any]) -> None:
    assert await parse(batch(raw)) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        {"msys": {"message_event": DOC_BOUNCE}},  # not a batch
        ["msys"],
        [{"msys": []}],
        batch({**DOC_BOUNCE, "type": None}),
        batch({**DOC_BOUNCE, "timestamp": "whenever"}),
        batch({**DOC_BOUNCE, "timestamp": None}),
        batch({**DOC_BOUNCE, "rcpt_meta": ["mailgate_id"]}),
        batch({**DOC_BOUNCE, "transmission_id": {"id": 1}}),
    ],
)
async def test_a_body_sparkpost_does_not_send_is_bad(body: Any) -> None:
    with pytest.raises(BadWebhook):
        await parse(body)


# --- the fake's events ---------------------------------------------------------------


@pytest.fixture
async def sp() -> AsyncIterator[SparkPostCase]:
    async with open_case() as case:
        try:
            yield case
        finally:
            await case.fake.close()


async def send(sp: SparkPostCase) -> str:
    provider = sp.make(base_url=sp.url, timeout=TIMEOUT, good_credentials=True)
    assert isinstance(provider, SparkPostProvider)
    result = await provider.send("msg_1", email(html=HTML, tags=("welcome",), **RECIPIENTS))
    await provider.close()
    assert result.provider_message_id is not None
    return result.provider_message_id


def happened(sp: SparkPostCase) -> list[Outcome]:
    [received] = sp.fake.received
    return [o for r in EVERY for o in outcomes(r, received)]


def check(events: list[InboundEvent], provider_id: str) -> None:
    assert [(e.kind, e.recipient, e.bounce) for e in events] == EXPECTED
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {provider_id}
    assert len({e.key for e in events}) == len(events)
    assert all(e.key.isdigit() for e in events)  # SparkPost's own event_id
    [clicked] = [e for e in events if e.kind is EventKind.CLICKED]
    assert clicked.detail["url"] == "https://example.com/welcome"


async def test_the_fakes_batch_verifies_and_parses(sp: SparkPostCase) -> None:
    provider_id = await send(sp)
    fake = sp.fake
    assert isinstance(fake, FakeSparkPost)
    webhook = SparkPostWebhook(settings(fake.webhook_username, fake.webhook_password))
    [post] = fake.signed_posts(happened(sp))
    assert post.headers["X-MessageSystems-Batch-ID"]
    req = RawWebhook(URL, {k.lower(): v for k, v in post.headers.items()}, post.body)
    await webhook.verify(req)
    body = json.loads(post.body)
    assert isinstance(body, list) and all(set(e) == {"msys"} for e in body)
    by_type = {next(iter(e["msys"].values()))["type"]: next(iter(e["msys"])) for e in body}
    assert by_type["open"] == by_type["click"] == "track_event"
    assert by_type["list_unsubscribe"] == "unsubscribe_event"
    assert by_type["delivery"] == by_type["bounce"] == "message_event"
    check((await webhook.parse(req)).events, provider_id)


async def test_the_fakes_events_know_cc_and_bcc(sp: SparkPostCase) -> None:
    await send(sp)
    [post] = sp.fake.signed_posts(happened(sp))
    events = [next(iter(e["msys"].values())) for e in json.loads(post.body)]
    types = {e["rcpt_to"]: e.get("rcpt_type") for e in events}
    assert types["bounce@example.org"] is None
    assert types["open@example.org"] == "cc"
    assert types["defer@example.org"] == "bcc"
    assert {e["rcpt_tags"] == ["welcome"] for e in events} == {True}


async def test_the_fake_posts_its_events_to_its_webhook_url(sp: SparkPostCase) -> None:
    fake = sp.fake
    assert isinstance(fake, FakeSparkPost)
    webhook = SparkPostWebhook(settings(fake.webhook_username, fake.webhook_password))
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
        provider_id = await send(sp)
        await fake.drain_events()
    assert fake.events_posted == 1 and fake.event_failures == 0
    check(events, provider_id)
