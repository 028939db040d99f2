"""Mailjet's Event API: basic auth, one event object per POST or a grouped array."""

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

from mailgate.config import MailjetSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
)
from mailgate.providers.fakes.base import Outcome, outcomes
from mailgate.providers.fakes.mailjet import FakeMailjet
from mailgate.providers.mailjet import MailjetProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.mailjet import MailjetWebhook
from mailgate.serving import serve_asgi
from tests.providers.cases.mailjet import MAILJET_KEY, MAILJET_SECRET, MailjetCase
from tests.providers.support import TIMEOUT, email
from tests.providers.webhooks.support import EVERY, EXPECTED, HTML, RECIPIENTS, basic

URL = "https://gateway.example/v1/providers/mj/webhook"
USER = "mailjet-hooks"
PASSWORD = "mj-Webhook-pass-91c2"

# Mailjet's sample events, from its Event API guide (mailjet/api-documentation:
# guides/_event-api.md, "Sample ... event" and "Grouping events"). Data only.
DOC_SENT: dict[str, Any] = {
    "event": "sent",
    "time": 1433333949,
    "MessageID": 19421777835146490,
    "email": "api@mailjet.com",
    "mj_campaign_id": 7257,
    "mj_contact_id": 4,
    "customcampaign": "",
    "mj_message_id": "19421777835146490",
    "smtp_reply": "sent (250 2.0.0 OK 1433333948 fa5si855896wjc.199 - gsmtp)",
    "CustomID": "helloworld",
    "Payload": "",
}
DOC_OPEN: dict[str, Any] = {
    "event": "open",
    "time": 1433103519,
    "MessageID": 19421777396190490,
    "email": "api@mailjet.com",
    "mj_campaign_id": 7173,
    "mj_contact_id": 320,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "ip": "127.0.0.1",
    "geo": "US",
    "agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0",
}
DOC_CLICK: dict[str, Any] = {
    "event": "click",
    "time": 1433334653,
    "MessageID": 19421777836302490,
    "email": "api@mailjet.com",
    "mj_campaign_id": 7272,
    "mj_contact_id": 4,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "url": "https://mailjet.com",
    "ip": "127.0.0.1",
    "geo": "FR",
    "agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_0) AppleWebKit/537.36",
}
DOC_BOUNCE: dict[str, Any] = {
    "event": "bounce",
    "time": 1430812195,
    "MessageID": 13792286917004336,
    "email": "bounce@mailjet.com",
    "mj_campaign_id": 0,
    "mj_contact_id": 0,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "blocked": True,
    "hard_bounce": True,
    "error_related_to": "recipient",
    "error": "user unknown",
}
DOC_BLOCKED: dict[str, Any] = {
    "event": "blocked",
    "time": 1430812195,
    "MessageID": 13792286917004336,
    "email": "bounce@mailjet.com",
    "mj_campaign_id": 0,
    "mj_contact_id": 0,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "error_related_to": "recipient",
    "error": "user unknown",
}
DOC_SPAM: dict[str, Any] = {
    "event": "spam",
    "time": 1430812195,
    "MessageID": 13792286917004336,
    "email": "bounce@mailjet.com",
    "mj_campaign_id": 0,
    "mj_contact_id": 0,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "source": "JMRPP",
}
DOC_UNSUB: dict[str, Any] = {
    "event": "unsub",
    "time": 1433334941,
    "MessageID": 20547674933128000,
    "email": "api@mailjet.com",
    "mj_campaign_id": 7276,
    "mj_contact_id": 126,
    "customcampaign": "",
    "CustomID": "helloworld",
    "Payload": "",
    "mj_list_id": 1,
    "ip": "127.0.0.1",
    "geo": "FR",
    "agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_0) AppleWebKit/537.36",
}
DOC_GROUPED: list[dict[str, Any]] = [
    {
        "customcampaign": "test",
        "email": "api@mailjet.com",
        "event": "sent",
        "mj_campaign_id": 483,
        "mj_contact_id": 4,
        "mj_message_id": "18858825588804172",
        "smtp_reply": "sent (250 2.0.0 OK 1424873937 fn1si2587485pab.205 - gsmtp)",
        "time": 1424873938,
    },
    {
        "customcampaign": "test",
        "email": "api@mailjet.com",
        "event": "sent",
        "mj_campaign_id": 483,
        "mj_contact_id": 4,
        "mj_message_id": "18858825588803684",
        "smtp_reply": "sent (250 2.0.0 OK 1424873937 av4si15414111pbd.46 - gsmtp)",
        "time": 1424873938,
    },
]


def settings(username: str | None = USER, password: str | None = PASSWORD) -> MailjetSettings:
    return MailjetSettings(
        name="mj",
        type="mailjet",
        api_key="mj-api-key",
        api_secret="mj-api-secret",
        webhook_username=username,
        webhook_password=password,
    )


def request(body: Any, *, authorization: str | None = None) -> RawWebhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    headers["authorization"] = authorization or basic(USER, PASSWORD)
    return RawWebhook(URL, headers, raw)


async def parse(body: Any) -> list[InboundEvent]:
    webhook = MailjetWebhook(settings())
    req = request(body)
    await webhook.verify(req)
    return (await webhook.parse(req)).events


# --- authorisation -------------------------------------------------------------------


async def test_the_configured_pair_is_let_in() -> None:
    webhook = webhook_for(settings())
    assert isinstance(webhook, MailjetWebhook) and webhook.configured
    await webhook.verify(request(DOC_SENT))


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, "wrong-password"),
        basic("someone-else", PASSWORD),
        basic(USER, ""),
        f"Bearer {PASSWORD}",
        f"Digest username={USER}",
        "Basic %%%garbage%%%",
        "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no user, no colon
        "",
    ],
)
async def test_anything_but_the_pair_is_refused(authorization: str) -> None:
    req = RawWebhook(URL, {"authorization": authorization} if authorization else {}, b"{}")
    with pytest.raises(WebhookRejected) as refused:
        await MailjetWebhook(settings()).verify(req)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(("username", "password"), [(None, PASSWORD), (USER, None), (USER, "")])
async def test_without_both_settings_everything_is_refused(
    username: str | None, password: str | None
) -> None:
    webhook = MailjetWebhook(settings(username, password))
    assert not webhook.configured
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(DOC_SENT, authorization=basic(USER, PASSWORD)))


# --- Mailjet's documented payloads ---------------------------------------------------


async def test_documented_sent_event() -> None:
    [event] = await parse(DOC_SENT)
    assert event.kind is EventKind.DELIVERED
    assert event.recipient == "api@mailjet.com"
    assert event.at == datetime.fromtimestamp(1433333949, UTC)
    assert event.message_id == "helloworld"
    assert event.provider_message_id == "19421777835146490"  # exact: an int64, no float
    assert event.detail["status"].startswith("sent (250 2.0.0 OK")
    assert event.key.startswith("sha256:")


async def test_documented_bounce_and_blocked_are_hard() -> None:
    [bounce] = await parse(DOC_BOUNCE)
    assert (bounce.kind, bounce.bounce) == (EventKind.BOUNCED, "hard")
    assert bounce.reason == "recipient: user unknown"
    assert bounce.provider_message_id == "13792286917004336"
    [blocked] = await parse(DOC_BLOCKED)
    assert (blocked.kind, blocked.bounce) == (EventKind.BOUNCED, "hard")
    assert blocked.key != bounce.key


async def test_a_soft_bounce_and_a_greylisting() -> None:
    soft = {**DOC_BOUNCE, "blocked": False, "hard_bounce": False, "error": "quota exceeded"}
    [event] = await parse(soft)
    assert (event.kind, event.bounce) == (EventKind.BOUNCED, "soft")
    grey = {**soft, "error_related_to": "domain", "error": "greylisted"}
    [event] = await parse(grey)
    assert (event.kind, event.bounce) == (EventKind.DEFERRED, None)
    assert event.reason == "domain: greylisted"


async def test_documented_engagement_events() -> None:
    [opened] = await parse(DOC_OPEN)
    assert opened.kind is EventKind.OPENED
    assert opened.detail == {"user_agent": DOC_OPEN["agent"]}
    [clicked] = await parse(DOC_CLICK)
    assert clicked.kind is EventKind.CLICKED
    assert clicked.detail["url"] == "https://mailjet.com"
    [spam] = await parse(DOC_SPAM)
    assert (spam.kind, spam.reason) == (EventKind.COMPLAINED, "JMRPP")
    [unsub] = await parse(DOC_UNSUB)
    assert unsub.kind is EventKind.UNSUBSCRIBED
    assert unsub.provider_message_id == "20547674933128000"


async def test_documented_grouped_events() -> None:
    events = await parse(DOC_GROUPED)
    assert [e.kind for e in events] == [EventKind.DELIVERED, EventKind.DELIVERED]
    # No MessageID in this older form: the deprecated mj_message_id stands in.
    assert [e.provider_message_id for e in events] == ["18858825588804172", "18858825588803684"]
    assert [e.message_id for e in events] == [None, None]
    assert events[0].key != events[1].key


async def test_unknown_events_are_left_out() -> None:
    events = await parse([{**DOC_SENT, "event": "something_new"}, DOC_OPEN])
    assert [e.kind for e in events] == [EventKind.OPENED]
    assert await parse({**DOC_SENT, "event": "something_new"}) == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html>",
        "sent",
        [DOC_SENT, "sent"],
        {**DOC_SENT, "event": None},
        {**DOC_SENT, "time": None},
        {**DOC_SENT, "time": "noon"},
        {**DOC_SENT, "MessageID": 1.5},
        {**DOC_SENT, "MessageID": "abc"},
    ],
)
async def test_a_body_mailjet_does_not_send_is_bad(body: Any) -> None:
    with pytest.raises(BadWebhook):
        await parse(body)


async def test_keys_are_stable() -> None:
    assert (await parse(DOC_SENT))[0].key == (await parse(DOC_SENT))[0].key
    moved = {**DOC_SENT, "time": DOC_SENT["time"] + 1}
    assert (await parse(moved))[0].key != (await parse(DOC_SENT))[0].key


# --- the fake's events ---------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["one-per-post", "grouped"])
async def mj(request: pytest.FixtureRequest) -> AsyncIterator[MailjetCase]:
    fake = FakeMailjet(MAILJET_KEY, MAILJET_SECRET, group_events=request.param)
    async with serve_asgi(fake.app()) as server:
        try:
            yield MailjetCase(fake, server.url)
        finally:
            await fake.close()


async def send(mj: MailjetCase) -> str:
    provider = mj.make(base_url=mj.url, timeout=TIMEOUT, good_credentials=True)
    assert isinstance(provider, MailjetProvider)
    result = await provider.send("msg_1", email(html=HTML, tags=("welcome",), **RECIPIENTS))
    await provider.close()
    assert result.provider_message_id is not None
    return result.provider_message_id


def happened(mj: MailjetCase) -> list[Outcome]:
    [received] = mj.fake.received
    return [o for r in EVERY for o in outcomes(r, received)]


def check(events: list[InboundEvent], provider_id: str) -> None:
    assert [(e.kind, e.recipient, e.bounce) for e in events] == EXPECTED
    assert {e.message_id for e in events} == {"msg_1"}
    # Each recipient has its own MessageID; the first To recipient's is the adapter's.
    ids = {e.recipient: e.provider_message_id for e in events}
    assert ids["bounce@example.org"] == provider_id
    assert len(set(ids.values())) == len(EVERY)
    assert all(i is not None and i.isdigit() for i in ids.values())
    assert len({e.key for e in events}) == len(events)
    [clicked] = [e for e in events if e.kind is EventKind.CLICKED]
    assert clicked.detail["url"] == "https://example.com/welcome"


async def test_the_fakes_events_verify_and_parse(mj: MailjetCase) -> None:
    provider_id = await send(mj)
    fake = mj.fake
    assert isinstance(fake, FakeMailjet)
    webhook = MailjetWebhook(settings(fake.webhook_username, fake.webhook_password))
    posts = fake.signed_posts(happened(mj))
    assert len(posts) == (1 if fake.group_events else len(EXPECTED))
    events: list[InboundEvent] = []
    for post in posts:
        req = RawWebhook(URL, {k.lower(): v for k, v in post.headers.items()}, post.body)
        await webhook.verify(req)
        assert isinstance(json.loads(post.body), list if fake.group_events else dict)
        events += (await webhook.parse(req)).events
    check(events, provider_id)


async def test_the_fakes_per_recipient_ids_are_the_ones_it_answered(mj: MailjetCase) -> None:
    await send(mj)
    [received] = mj.fake.received
    first = int(received.provider_message_id)
    posts = mj.fake.signed_posts(happened(mj))
    bodies = [json.loads(p.body) for p in posts]
    flat = [e for b in bodies for e in (b if isinstance(b, list) else [b])]
    ids = {e["email"]: e["MessageID"] for e in flat}
    assert ids == {address: first + i for i, address in enumerate(EVERY)}


async def test_the_fake_posts_its_events_to_its_webhook_url(mj: MailjetCase) -> None:
    fake = mj.fake
    assert isinstance(fake, FakeMailjet)
    webhook = MailjetWebhook(settings(fake.webhook_username, fake.webhook_password))
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
        provider_id = await send(mj)
        await fake.drain_events()
    assert fake.event_failures == 0
    check(events, provider_id)
