"""Resend's events through Svix: the Svix signature, then the `email.*` events."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.config import ResendSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
    digest,
)
from mailgate.message import Address
from mailgate.providers.fakes.base import Outcome, Received, SignedPost, outcomes
from mailgate.providers.fakes.resend import FakeResend
from mailgate.providers.resend import ResendProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.resend import ResendWebhook, signing_key, svix_signature
from mailgate.serving import serve_asgi
from tests.providers.cases.resend import RESEND_KEY, ResendCase, open_case
from tests.providers.support import TIMEOUT, email

URL = "https://gateway.example/v1/providers/rs/webhook"

# Svix's published test vector: the data of `test_sign_function` in
# svix/svix-webhooks python/tests/test_webhooks.py (the Standard Webhooks
# implementations reproduce the same value). Data only.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_BAD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
"""The same test file's invalid signature: the last byte changed."""


def settings(secret: str | None) -> ResendSettings:
    return ResendSettings(name="rs", type="resend", api_key=RESEND_KEY, webhook_secret=secret)


def vector(signature: str = VECTOR_SIGNATURE, **headers: str) -> RawWebhook:
    values = {
        "svix-id": VECTOR_ID,
        "svix-timestamp": str(VECTOR_TIMESTAMP),
        "svix-signature": signature,
        **headers,
    }
    return RawWebhook(URL, values, VECTOR_BODY, received_at=VECTOR_TIMESTAMP + 10)


def raw(post: SignedPost, *, at: float | None = None) -> RawWebhook:
    headers = {k.lower(): v for k, v in post.headers.items()}
    if at is None:
        return RawWebhook(URL, headers, post.body)
    return RawWebhook(URL, headers, post.body, received_at=at)


def signed(secret: str, body: dict[str, Any] | bytes, msg_id: str = "msg_2abc") -> SignedPost:
    """`body` signed for `secret` now, by the Standard Webhooks library (not by ours)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    now = datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, now, payload.decode())
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": signature,
    }
    return SignedPost(headers, payload)


SECRET = FakeResend(RESEND_KEY).webhook_secret


# --- Svix's signature -------------------------------------------------------------------


def test_the_published_vector_signs_alike() -> None:
    key = signing_key(VECTOR_SECRET)
    assert key is not None
    mac = svix_signature(key, VECTOR_ID, str(VECTOR_TIMESTAMP), VECTOR_BODY)
    assert "v1," + base64.b64encode(mac).decode() == VECTOR_SIGNATURE


async def test_the_published_vector_verifies() -> None:
    hook = ResendWebhook(settings(VECTOR_SECRET))
    await hook.verify(vector())
    await ResendWebhook(settings(VECTOR_SECRET.removeprefix("whsec_"))).verify(vector())
    with pytest.raises(BadWebhook):  # verified, but not a Resend event
        await hook.parse(vector())


async def test_the_published_bad_signature_is_refused() -> None:
    with pytest.raises(WebhookRejected, match="no svix-signature"):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(vector(VECTOR_BAD_SIGNATURE))


async def test_the_published_vector_is_stale_today() -> None:
    request = RawWebhook(URL, dict(vector().headers), VECTOR_BODY)
    with pytest.raises(WebhookRejected, match="from now"):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(request)


@pytest.mark.parametrize(
    "header",
    [
        f"{VECTOR_BAD_SIGNATURE} {VECTOR_SIGNATURE}",
        f"v2,{VECTOR_SIGNATURE[3:]} v1,bm90IGl0 {VECTOR_SIGNATURE}",
        f"v1,%%%notbase64 garbage {VECTOR_SIGNATURE} v1a,abc",
    ],
)
async def test_one_matching_entry_among_several_passes(header: str) -> None:
    await ResendWebhook(settings(VECTOR_SECRET)).verify(vector(header))


@pytest.mark.parametrize(
    "header",
    [VECTOR_SIGNATURE[3:], f"v2,{VECTOR_SIGNATURE[3:]}", f"v1a,{VECTOR_SIGNATURE[3:]}", "v1,"],
)
async def test_a_signature_without_v1_is_refused(header: str) -> None:
    with pytest.raises(WebhookRejected):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(vector(header))


@pytest.mark.parametrize(
    "headers",
    [
        {"svix-id": "msg_other"},
        {"svix-timestamp": str(VECTOR_TIMESTAMP + 1)},
        {"svix-id": "msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330"},
        {"svix-timestamp": "1614265330.0"},
        {"svix-timestamp": "soon"},
        {"svix-id": ""},
        {"svix-signature": ""},
    ],
)
async def test_changed_or_malformed_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookRejected):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(vector(**headers))


async def test_a_changed_body_is_refused() -> None:
    request = vector()
    tampered = RawWebhook(URL, request.headers, b'{"test": 2432232315}', request.received_at)
    with pytest.raises(WebhookRejected, match="no svix-signature"):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(tampered)


async def test_another_secret_is_refused() -> None:
    with pytest.raises(WebhookRejected):
        await ResendWebhook(settings(SECRET)).verify(vector())


async def test_standard_webhooks_headers_are_read_too() -> None:
    headers = {f"webhook-{k[5:]}": v for k, v in vector().headers.items()}
    request = RawWebhook(URL, headers, VECTOR_BODY, received_at=VECTOR_TIMESTAMP)
    await ResendWebhook(settings(VECTOR_SECRET)).verify(request)


@pytest.mark.parametrize("secret", [None, "whsec_", "whsec_not base64!"])
async def test_without_a_usable_secret_everything_is_refused(secret: str | None) -> None:
    hook = webhook_for(settings(secret))
    assert isinstance(hook, ResendWebhook) and not hook.configured
    with pytest.raises(WebhookRejected, match="not configured"):
        await hook.verify(vector())


async def test_refusals_never_show_the_secret() -> None:
    secret_part = VECTOR_SECRET.removeprefix("whsec_")
    for request in (vector(VECTOR_BAD_SIGNATURE), vector(**{"svix-timestamp": "x"})):
        with pytest.raises(WebhookRejected) as info:
            await ResendWebhook(settings(VECTOR_SECRET)).verify(request)
        assert secret_part not in str(info.value)


# --- the Standard Webhooks library as an independent signer and verifier -----------------


async def test_what_the_library_signs_we_verify() -> None:
    body = {"type": "email.delivered", "created_at": "2025-01-01T10:00:00.000Z", "data": {}}
    post = signed(SECRET, body)
    await ResendWebhook(settings(SECRET)).verify(raw(post))
    with pytest.raises(WebhookRejected):
        await ResendWebhook(settings(VECTOR_SECRET)).verify(raw(post))


def test_what_the_fake_signs_the_library_verifies() -> None:
    fake = FakeResend(RESEND_KEY)
    message = received("b@example.org")
    for post in fake.signed_posts(outcomes("open@example.org", message)):
        headers = {k.replace("svix-", "webhook-"): v for k, v in post.headers.items()}
        assert standardwebhooks.Webhook(fake.webhook_secret).verify(post.body, headers)


async def test_a_stale_post_is_refused() -> None:
    post = FakeResend(RESEND_KEY, webhook_secret=SECRET).signed_posts(
        [Outcome("delivered", "b@example.org", received("b@example.org"))]
    )[0]
    await ResendWebhook(settings(SECRET)).verify(raw(post))
    for skew in (-400, 400):
        with pytest.raises(WebhookRejected, match="from now"):
            await ResendWebhook(settings(SECRET)).verify(raw(post, at=time.time() + skew))


# --- events ---------------------------------------------------------------------------


def received(*recipients: str, mailgate_id: str = "msg_1") -> Received:
    """What the fake would have taken from the adapter for this message."""
    provider = ResendProvider(settings(None), timeout=TIMEOUT)
    message = email(to=tuple(Address(r) for r in recipients), metadata={"plan": "pro"})
    request = provider.build_request(mailgate_id, message)
    return Received("4ef9a417-02e9-4d39-ad75-9611e0fcc33c", mailgate_id, request.json)


async def events_of(fake: FakeResend, happened: list[Outcome]) -> list[InboundEvent]:
    hook = ResendWebhook(settings(fake.webhook_secret))
    out: list[InboundEvent] = []
    for post in fake.signed_posts(happened):
        await hook.verify(raw(post))
        out += (await hook.parse(raw(post))).events
    return out


ADDRESSES = [
    "bounce@example.org",
    "softbounce@example.org",
    "complaint@example.org",
    "open@example.org",
    "unsubscribe@example.org",
    "defer@example.org",
]
EXPECTED = [
    (EventKind.BOUNCED, "bounce@example.org", "hard"),
    (EventKind.DEFERRED, "softbounce@example.org", None),
    (EventKind.BOUNCED, "softbounce@example.org", "soft"),
    (EventKind.DELIVERED, "complaint@example.org", None),
    (EventKind.COMPLAINED, "complaint@example.org", None),
    (EventKind.DELIVERED, "open@example.org", None),
    (EventKind.OPENED, "open@example.org", None),
    (EventKind.CLICKED, "open@example.org", None),
    (EventKind.DELIVERED, "unsubscribe@example.org", None),  # Resend has no unsubscribe event
    (EventKind.DEFERRED, "defer@example.org", None),
    (EventKind.DELIVERED, "defer@example.org", None),
]


async def test_each_outcome_of_the_fake_becomes_its_event() -> None:
    fake = FakeResend(RESEND_KEY)
    message = received(*ADDRESSES)
    events = await events_of(fake, [o for a in ADDRESSES for o in outcomes(a, message)])
    assert [(e.kind, e.recipient, e.bounce) for e in events] == EXPECTED
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {message.provider_message_id}
    assert len({e.key for e in events}) == len(events)
    hard = events[0]
    assert hard.reason is not None and hard.detail["bounce_type"] == "Permanent"
    [click] = [e for e in events if e.kind is EventKind.CLICKED]
    assert click.detail["url"] == "https://example.com/welcome"


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "created_at": "2025-01-01T10:00:00.000Z",
        "data": {
            "email_id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
            "created_at": "2025-01-01T09:59:58.000Z",
            "from": "Acme <a@example.com>",
            "to": ["b@example.org"],
            "subject": "Hi",
            **data,
        },
    }


async def parsed(body: dict[str, Any] | bytes, msg_id: str = "msg_2abc") -> list[InboundEvent]:
    hook = ResendWebhook(settings(SECRET))
    request = raw(signed(SECRET, body, msg_id))
    await hook.verify(request)
    return (await hook.parse(request)).events


async def test_the_svix_id_is_the_key() -> None:
    [delivered] = await parsed(event("email.delivered"), msg_id="msg_same")
    [again] = await parsed(event("email.delivered"), msg_id="msg_same")
    assert delivered.key == again.key == "msg_same"
    assert delivered.at == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


async def test_an_event_naming_several_recipients_is_one_per_recipient() -> None:
    to = ["B <b@example.org>", "c@example.org"]
    events = await parsed(event("email.delivered", to=to), msg_id="msg_multi")
    assert [e.recipient for e in events] == ["b@example.org", "c@example.org"]
    assert [e.key for e in events] == [
        digest("msg_multi", r) for r in ("b@example.org", "c@example.org")
    ]


@pytest.mark.parametrize("kind", ["email.bounced", "email.complained"])
async def test_a_bounce_or_complaint_naming_several_blames_none(kind: str) -> None:
    [one] = await parsed(event(kind, to=["b@example.org", "c@example.org"]), msg_id="msg_b")
    assert one.recipient is None and one.key == "msg_b"


@pytest.mark.parametrize(
    ("bounce", "expected"),
    [
        ({"type": "Permanent", "subType": "Suppressed", "message": "suppressed"}, "hard"),
        ({"type": "Transient", "subType": "MailboxFull"}, "soft"),
        ({"type": "Undetermined"}, "soft"),
        (None, "hard"),
    ],
)
async def test_bounce_types(bounce: dict[str, str] | None, expected: str) -> None:
    [event_] = await parsed(event("email.bounced", **({"bounce": bounce} if bounce else {})))
    assert (event_.kind, event_.bounce) == (EventKind.BOUNCED, expected)
    if bounce and "message" in bounce:
        assert event_.reason == "suppressed"


async def test_our_id_comes_from_the_header_else_the_tag() -> None:
    headers = [{"name": "x-mailgate-id", "value": "msg_h"}]
    [by_header] = await parsed(event("email.opened", headers=headers, tags={"mailgate_id": "x"}))
    [by_tag] = await parsed(event("email.opened", tags={"mailgate_id": "msg_t"}))
    [by_tag_list] = await parsed(
        event("email.opened", tags=[{"name": "mailgate_id", "value": "msg_l"}])
    )
    [none] = await parsed(event("email.opened"))
    assert (by_header.message_id, by_tag.message_id, by_tag_list.message_id) == (
        "msg_h",
        "msg_t",
        "msg_l",
    )
    assert none.message_id is None and none.provider_message_id is not None


@pytest.mark.parametrize(
    "kind", ["email.sent", "email.failed", "email.scheduled", "email.received", "contact.created"]
)
async def test_types_mailgate_does_not_track_are_left_out(kind: str) -> None:
    assert await parsed(event(kind)) == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"data": {}}).encode(),
        json.dumps({"type": "email.delivered"}).encode(),
        json.dumps({"type": "email.delivered", "data": {"to": ["b@example.org"]}}).encode(),
        json.dumps(event("email.delivered") | {"created_at": "yesterday"}).encode(),
    ],
)
async def test_a_verified_body_resend_does_not_send_is_bad(body: bytes) -> None:
    with pytest.raises(BadWebhook):
        await parsed(body)


# --- the fake, end to end -------------------------------------------------------------


@pytest.fixture
async def rs() -> AsyncIterator[ResendCase]:
    async with open_case() as case:
        try:
            yield case
        finally:
            await case.fake.close()


async def test_the_fake_posts_verifiable_events_for_what_the_adapter_sent(rs: ResendCase) -> None:
    fake = rs.fake
    assert isinstance(fake, FakeResend) and fake.webhook_secret.startswith("whsec_")
    hook = ResendWebhook(settings(fake.webhook_secret))
    events: list[InboundEvent] = []

    async def receive(r: Request) -> Response:
        req = RawWebhook(str(r.url), dict(r.headers), await r.body())
        try:
            await hook.verify(req)
        except WebhookRejected:
            return Response(status_code=401)
        got = await hook.parse(req)
        events.extend(got.events)
        return JSONResponse({"received": len(got.events)})

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    async with serve_asgi(app) as server:
        fake.webhook_url = f"{server.url}/hook"
        provider = rs.make(base_url=rs.url, timeout=TIMEOUT, good_credentials=True)
        result = await provider.send(
            "msg_e2e",
            email(
                to=(Address("plain@example.org", "Plain, P."),),
                cc=(Address("bounce@example.org"),),
                bcc=(Address("open@example.org"),),
            ),
        )
        await provider.close()
        await fake.drain_events()
    assert fake.events_posted == 5 and fake.event_failures == 0
    assert sorted((e.kind, e.recipient or "") for e in events) == sorted(
        [
            (EventKind.DELIVERED, "plain@example.org"),
            (EventKind.BOUNCED, "bounce@example.org"),
            (EventKind.DELIVERED, "open@example.org"),
            (EventKind.OPENED, "open@example.org"),
            (EventKind.CLICKED, "open@example.org"),
        ]
    )
    assert {e.message_id for e in events} == {"msg_e2e"}
    assert {e.provider_message_id for e in events} == {result.provider_message_id}
