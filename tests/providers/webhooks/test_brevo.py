"""Brevo's transactional webhooks: basic auth, one event object per POST."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.config import BrevoSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
)
from mailgate.providers.brevo import BrevoProvider
from mailgate.providers.fakes.base import Outcome, outcomes
from mailgate.providers.fakes.brevo import FakeBrevo
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.brevo import BrevoWebhook
from mailgate.serving import serve_asgi
from tests.providers.cases.brevo import BrevoCase, open_case
from tests.providers.support import TIMEOUT, email
from tests.providers.webhooks.support import EVERY, EXPECTED, HTML, RECIPIENTS, basic

URL = "https://gateway.example/v1/providers/brevo/webhook"
USER = "brevo-hooks"
PASSWORD = "brevo-Webhook-pass-5b0c"

# Brevo's "Sent" sample (developers.brevo.com/docs/transactional-webhooks), with the
# page's placeholders (`"id": xxxxx`, an elided address) filled in. Data only.
DOC_REQUEST: dict[str, Any] = {
    "event": "request",
    "email": "example@domain.com",
    "id": 123456,
    "date": "2020-10-09 00:00:00",
    "ts": 1604933619,
    "message-id": "201798300811.5787683@relay.domain.com",
    "ts_event": 1604933654,
    "subject": "My first Transactional",
    "X-Mailin-custom": "some_custom_header",
    "sending_ip": "xxx.xxx.xxx.xxx",
    "ts_epoch": 1604933654,
    "template_id": 22,
    "mirror_link": "https://app-smtp.brevo.com/log/preview/1a2000f4-4e33-23aa-ab68-900dxxx9152c",
    "contact_id": 8,
    "tags": ["transac_messages"],
}
# Events captured from Brevo by django-anymail (tests/test_brevo_webhooks.py). Data only.
DOC_DELIVERED: dict[str, Any] = {
    "event": "delivered",
    "email": "recipient@example.com",
    "ts_epoch": 1520363423000,
    "message-id": "<201803011158.9876543210@smtp-relay.mailin.fr>",
}
DOC_HARD_BOUNCE: dict[str, Any] = {
    "event": "hard_bounce",
    "email": "not-a-user@example.com",
    "ts_epoch": 1520363423000,
    "message-id": "<201803011158.9876543210@smtp-relay.mailin.fr>",
    "reason": " RecipientError: 550 5.5.0 Requested action not taken: mailbox unavailable.",
    "tag": "header-tag",
}
DOC_SOFT_BOUNCE: dict[str, Any] = {
    "event": "soft_bounce",
    "email": "recipient@no-mx.example.com",
    "ts_epoch": 1520363423000,
    "message-id": "<201803011158.9876543210@smtp-relay.mailin.fr>",
    "reason": "undefined Unable to find MX of domain no-mx.example.com",
}
DOC_COMPLAINT: dict[str, Any] = {
    "event": "complaint",
    "email": "example@domain.com",
    "id": "xxxxx",
    "date": "2020-10-09 00:00:00",
    "ts": 1604933619,
    "message-id": "201798300811.5787683@relay.domain.com",
    "ts_event": 1604933654,
    "X-Mailin-custom": '{"meta": "data"}',
    "tags": ["transac_messages"],
}
MARCH_2018 = datetime(2018, 3, 6, 19, 10, 23, tzinfo=UTC)


def settings(username: str | None = USER, password: str | None = PASSWORD) -> BrevoSettings:
    return BrevoSettings(
        name="brevo",
        type="brevo",
        api_key="xkeysib-api-key",
        webhook_username=username,
        webhook_password=password,
    )


def request(body: Any, *, authorization: str | None = None) -> RawWebhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    headers["authorization"] = authorization or basic(USER, PASSWORD)
    return RawWebhook(URL, headers, raw)


async def parse(body: Any) -> list[InboundEvent]:
    webhook = BrevoWebhook(settings())
    req = request(body)
    await webhook.verify(req)
    return (await webhook.parse(req)).events


# --- authorisation -------------------------------------------------------------------


async def test_the_configured_pair_is_let_in() -> None:
    webhook = webhook_for(settings())
    assert isinstance(webhook, BrevoWebhook) and webhook.configured
    await webhook.verify(request(DOC_DELIVERED))


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, "wrong-password"),
        basic("someone-else", PASSWORD),
        basic(f"{USER}:{PASSWORD}", ""),
        f"Bearer {PASSWORD}",  # Brevo's other auth type: a token, not this pair
        f"Token {PASSWORD}",
        "Basic not base64 at all",
        "",
    ],
)
async def test_anything_but_the_pair_is_refused(authorization: str) -> None:
    req = RawWebhook(URL, {"authorization": authorization} if authorization else {}, b"{}")
    with pytest.raises(WebhookRejected) as refused:
        await BrevoWebhook(settings()).verify(req)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(("username", "password"), [(None, PASSWORD), (USER, None), ("", "")])
async def test_without_both_settings_everything_is_refused(
    username: str | None, password: str | None
) -> None:
    webhook = BrevoWebhook(settings(username, password))
    assert not webhook.configured
    with pytest.raises(WebhookRejected):
        await webhook.verify(request(DOC_DELIVERED, authorization=basic(USER, PASSWORD)))


# --- Brevo's documented payloads -----------------------------------------------------


async def test_a_request_event_is_not_tracked() -> None:
    assert await parse(DOC_REQUEST) == []


async def test_documented_delivered() -> None:
    [event] = await parse(DOC_DELIVERED)
    assert event.kind is EventKind.DELIVERED
    assert event.recipient == "recipient@example.com"
    assert event.at == MARCH_2018  # ts_epoch is milliseconds
    assert event.provider_message_id == "<201803011158.9876543210@smtp-relay.mailin.fr>"
    assert event.message_id is None
    assert event.key.startswith("sha256:")


async def test_documented_bounces() -> None:
    [hard] = await parse(DOC_HARD_BOUNCE)
    assert (hard.kind, hard.bounce) == (EventKind.BOUNCED, "hard")
    assert (
        hard.reason == "RecipientError: 550 5.5.0 Requested action not taken: mailbox unavailable."
    )
    [soft] = await parse(DOC_SOFT_BOUNCE)
    assert (soft.kind, soft.bounce) == (EventKind.BOUNCED, "soft")
    assert soft.reason == "undefined Unable to find MX of domain no-mx.example.com"


async def test_documented_complaint_without_brackets_or_ts_epoch() -> None:
    [event] = await parse(DOC_COMPLAINT)
    assert event.kind is EventKind.COMPLAINED
    # Brackets added: the adapter keeps the send answer's `<...>` form.
    assert event.provider_message_id == "<201798300811.5787683@relay.domain.com>"
    assert event.at == datetime.fromtimestamp(1604933654, UTC)  # ts_event
    assert event.message_id is None  # X-Mailin-custom without our mailgate_id


@pytest.mark.parametrize(
    ("name", "kind", "bounce"),
    [
        ("blocked", EventKind.BOUNCED, "hard"),
        ("invalid_email", EventKind.BOUNCED, "hard"),
        ("deferred", EventKind.DEFERRED, None),
        ("spam", EventKind.COMPLAINED, None),
        ("opened", EventKind.OPENED, None),
        ("unique_opened", EventKind.OPENED, None),
        ("proxy_open", EventKind.OPENED, None),
        ("unsubscribed", EventKind.UNSUBSCRIBED, None),
    ],
)
async def test_event_names(name: str, kind: EventKind, bounce: str | None) -> None:
    [event] = await parse({**DOC_DELIVERED, "event": name})
    assert (event.kind, event.bounce) == (kind, bounce)
    assert event.detail.get("proxy", False) is (name == "proxy_open")


async def test_a_click_keeps_its_link_and_ours_comes_from_x_mailin_custom() -> None:
    custom = json.dumps({"plan": "pro", "mailgate_id": "msg_9"})
    click = {
        **DOC_DELIVERED,
        "event": "click",
        "link": "https://example.com/a",
        "X-Mailin-custom": custom,
    }
    [event] = await parse(click)
    assert event.kind is EventKind.CLICKED
    assert event.detail == {"url": "https://example.com/a"}
    assert event.message_id == "msg_9"
    [other] = await parse({**click, "link": "https://example.com/b"})
    assert other.key != event.key


async def test_a_batched_post_is_an_array() -> None:
    events = await parse([DOC_DELIVERED, DOC_REQUEST, DOC_HARD_BOUNCE])
    assert [e.kind for e in events] == [EventKind.DELIVERED, EventKind.BOUNCED]


async def test_keys_are_stable() -> None:
    assert (await parse(DOC_DELIVERED))[0].key == (await parse(DOC_DELIVERED))[0].key
    later = {**DOC_DELIVERED, "ts_epoch": DOC_DELIVERED["ts_epoch"] + 1}
    assert (await parse(later))[0].key != (await parse(DOC_DELIVERED))[0].key


@pytest.mark.parametrize(
    "body",
    [
        b"event=delivered",
        "delivered",
        [DOC_DELIVERED, 7],
        {**DOC_DELIVERED, "event": 3},
        {**DOC_DELIVERED, "ts_epoch": "noon"},
        {**DOC_DELIVERED, "ts_epoch": None},  # no time at all
        {**DOC_DELIVERED, "message-id": ["<a@b>"]},
    ],
)
async def test_a_body_brevo_does_not_send_is_bad(body: Any) -> None:
    with pytest.raises(BadWebhook):
        await parse(body)


# --- the fake's events ---------------------------------------------------------------


@pytest.fixture
async def br() -> AsyncIterator[BrevoCase]:
    async with open_case() as case:
        try:
            yield case
        finally:
            await case.fake.close()


async def send(br: BrevoCase) -> str:
    provider = br.make(base_url=br.url, timeout=TIMEOUT, good_credentials=True)
    assert isinstance(provider, BrevoProvider)
    result = await provider.send("msg_1", email(html=HTML, **RECIPIENTS))
    await provider.close()
    assert result.provider_message_id is not None
    return result.provider_message_id


def happened(br: BrevoCase) -> list[Outcome]:
    [received] = br.fake.received
    return [o for r in EVERY for o in outcomes(r, received)]


def check(events: list[InboundEvent], provider_id: str) -> None:
    assert [(e.kind, e.recipient, e.bounce) for e in events] == EXPECTED
    assert {e.message_id for e in events} == {"msg_1"}
    assert provider_id.startswith("<") and provider_id.endswith(">")
    assert {e.provider_message_id for e in events} == {provider_id}
    assert len({e.key for e in events}) == len(events)
    [clicked] = [e for e in events if e.kind is EventKind.CLICKED]
    assert clicked.detail["url"] == "https://example.com/welcome"


async def test_the_fakes_events_verify_and_parse(br: BrevoCase) -> None:
    provider_id = await send(br)
    fake = br.fake
    assert isinstance(fake, FakeBrevo)
    webhook = BrevoWebhook(settings(fake.webhook_username, fake.webhook_password))
    events: list[InboundEvent] = []
    for post in fake.signed_posts(happened(br)):
        req = RawWebhook(URL, {k.lower(): v for k, v in post.headers.items()}, post.body)
        await webhook.verify(req)
        assert isinstance(json.loads(post.body), dict)
        events += (await webhook.parse(req)).events
    check(events, provider_id)


async def test_the_fake_posts_its_events_to_its_webhook_url(br: BrevoCase) -> None:
    fake = br.fake
    assert isinstance(fake, FakeBrevo)
    webhook = BrevoWebhook(settings(fake.webhook_username, fake.webhook_password))
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
        provider_id = await send(br)
        await fake.drain_events()
    assert fake.events_posted == len(EXPECTED) and fake.event_failures == 0
    check(events, provider_id)
