"""Amazon SES events through SNS: the SNS signature, the certificate URL, the topic, the events."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.config import SesSettings
from mailgate.events.inbound import (
    BadWebhook,
    EventKind,
    InboundEvent,
    RawWebhook,
    WebhookRejected,
)
from mailgate.message import Address
from mailgate.providers.fakes.base import Outcome, Received, SignedPost, outcomes
from mailgate.providers.fakes.ses import FakeSes
from mailgate.providers.ses import SesProvider
from mailgate.providers.webhooks import webhook_for
from mailgate.providers.webhooks.ses import (
    FetchFailed,
    SesWebhook,
    certificate_url_ok,
    string_to_sign,
    subscribe_url_ok,
)
from mailgate.serving import serve_asgi
from tests.providers.cases.ses import SES_KEY_ID, SES_REGION, SES_SECRET, SesCase, open_case
from tests.providers.support import TIMEOUT, email

URL = "https://gateway.example/v1/providers/ses/webhook"
CERT_NAME = "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"


class Fetcher:
    """The injected GET: answers from `pages`, remembers every URL asked for."""

    def __init__(self, pages: dict[str, bytes] | None = None) -> None:
        self.pages = pages or {}
        self.calls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.pages:
            raise FetchFailed(f"no page at {url}")
        return self.pages[url]


def settings(topic_arn: str | None, region: str = SES_REGION) -> SesSettings:
    return SesSettings(
        name="ses",
        type="ses",
        access_key_id=SES_KEY_ID,
        secret_access_key=SES_SECRET,
        region=region,
        webhook_sns_topic_arn=topic_arn,
    )


def webhook(fake: FakeSes, fetcher: Fetcher | None = None, *, seed: bool = True) -> SesWebhook:
    """The SES webhook for `fake`'s topic, its certificate pre-seeded (AWS is unreachable)."""
    seeded = {fake.certificate_url: fake.certificate_pem} if seed else {}
    return SesWebhook(settings(fake.sns_topic_arn), fetch=fetcher or Fetcher(), certificates=seeded)


def raw(post: SignedPost, *, at: float | None = None) -> RawWebhook:
    headers = {k.lower(): v for k, v in post.headers.items()}
    if at is None:
        return RawWebhook(URL, headers, post.body)
    return RawWebhook(URL, headers, post.body, received_at=at)


def changed(post: SignedPost, **fields: Any) -> SignedPost:
    """`post` with envelope fields replaced after it was signed."""
    envelope = json.loads(post.body)
    envelope.update(fields)
    return SignedPost(post.headers, json.dumps(envelope).encode())


@pytest.fixture(scope="module")
def fake() -> FakeSes:
    """One fake (one RSA key) for the module: making keys is the slow part."""
    return FakeSes(SES_KEY_ID, SES_SECRET, region=SES_REGION)


def received(fake: FakeSes, *recipients: str, mailgate_id: str = "msg_1") -> Received:
    """What the fake would have taken from the adapter for this message."""
    provider = SesProvider(settings(None), timeout=TIMEOUT)
    request = provider.build_request(
        mailgate_id, email(to=tuple(Address(r) for r in recipients), tags=("welcome",))
    )
    assert request.data is not None
    return Received("0100018f-fake-id-000000", mailgate_id, json.loads(request.data))


def notification(fake: FakeSes, kind: str = "delivered", to: str = "b@example.org") -> SignedPost:
    """One signed notification of the fake for a message to `to`."""
    [post] = fake.signed_posts([Outcome(kind, to, received(fake, to))])
    return post


# --- the string to sign, as AWS documents it --------------------------------------------


def test_the_string_to_sign_of_a_notification() -> None:
    envelope = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Subject": "My First Message",
        "Message": "Hello world!",
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEw6JRN...",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/" + CERT_NAME,
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }
    assert string_to_sign(envelope) == (
        "Message\nHello world!\n"
        "MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n"
        "Subject\nMy First Message\n"
        "Timestamp\n2012-05-02T00:54:06.655Z\n"
        "TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n"
        "Type\nNotification\n"
    )
    del envelope["Subject"]  # only signed when present
    assert "Subject" not in (string_to_sign(envelope) or "")


def test_the_string_to_sign_of_a_subscription_confirmation() -> None:
    envelope = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37f",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        "Timestamp": "2012-04-26T20:45:04.751Z",
    }
    assert string_to_sign(envelope) == (
        "Message\nYou have chosen to subscribe to the topic.\n"
        "MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n"
        "SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription\n"
        "Timestamp\n2012-04-26T20:45:04.751Z\n"
        "Token\n2336412f37f\n"
        "TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n"
        "Type\nSubscriptionConfirmation\n"
    )
    del envelope["Token"]  # required for a confirmation
    assert string_to_sign(envelope) is None
    assert string_to_sign({"Type": "Other", "Message": "x"}) is None


# --- the signature --------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
async def test_both_signature_versions_verify(fake: FakeSes, version: str) -> None:
    fake.signature_version = version
    try:
        post = notification(fake)
    finally:
        fake.signature_version = "1"
    assert json.loads(post.body)["SignatureVersion"] == version
    fetcher = Fetcher()
    await webhook(fake, fetcher).verify(raw(post))
    assert fetcher.calls == []  # the seeded certificate was used


async def test_a_subject_is_signed_too(fake: FakeSes) -> None:
    message = json.dumps({"eventType": "Send", "mail": {"messageId": "x"}})
    post = fake.sns_post("Notification", message, subject="Amazon SES Email Event Notification")
    hook = webhook(fake)
    await hook.verify(raw(post))
    with pytest.raises(WebhookRejected, match="signature"):
        await hook.verify(raw(changed(post, Subject="Another subject")))


@pytest.mark.parametrize(
    "tamper",
    [
        {"Message": json.dumps({"eventType": "Bounce"})},
        {"MessageId": "00000000-0000-0000-0000-000000000000"},
        {"Signature": base64.b64encode(b"\x00" * 256).decode()},
        {"Type": "SubscriptionConfirmation"},
    ],
    ids=["message", "message-id", "signature", "type"],
)
async def test_a_changed_envelope_is_refused(fake: FakeSes, tamper: dict[str, str]) -> None:
    post = changed(notification(fake), **tamper)
    headers = {k: v for k, v in post.headers.items() if not k.startswith("x-amz-sns-")}
    with pytest.raises(WebhookRejected):
        await webhook(fake).verify(raw(SignedPost(headers, post.body)))


async def test_a_changed_timestamp_is_refused(fake: FakeSes) -> None:
    post = notification(fake)
    stamp = json.loads(post.body)["Timestamp"]
    later = stamp[:-2] + ("1Z" if stamp[-2] != "1" else "2Z")  # a millisecond off
    with pytest.raises(WebhookRejected, match="signature"):
        await webhook(fake).verify(raw(changed(post, Timestamp=later)))


async def test_a_stale_or_future_timestamp_is_refused(fake: FakeSes) -> None:
    post = fake.sns_post("Notification", "{}", at=time.time() - 600)
    with pytest.raises(WebhookRejected, match="from now"):
        await webhook(fake).verify(raw(post))
    fresh = notification(fake)
    with pytest.raises(WebhookRejected, match="from now"):
        await webhook(fake).verify(raw(fresh, at=time.time() - 400))


async def test_another_keys_certificate_is_refused(fake: FakeSes) -> None:
    other = FakeSes(SES_KEY_ID, SES_SECRET, region=SES_REGION)
    post = notification(fake)
    hook = SesWebhook(
        settings(fake.sns_topic_arn), certificates={fake.certificate_url: other.certificate_pem}
    )
    with pytest.raises(WebhookRejected, match="signature does not match"):
        await hook.verify(raw(post))


@pytest.mark.parametrize("version", ["", "3", "SHA1"])
async def test_an_unknown_signature_version_is_refused(fake: FakeSes, version: str) -> None:
    with pytest.raises(WebhookRejected, match="SignatureVersion"):
        await webhook(fake).verify(raw(changed(notification(fake), SignatureVersion=version)))


async def test_headers_that_contradict_the_body_are_refused(fake: FakeSes) -> None:
    post = notification(fake)
    for name, value in [
        ("x-amz-sns-message-type", "SubscriptionConfirmation"),
        ("x-amz-sns-message-id", "another-id"),
    ]:
        with pytest.raises(WebhookRejected, match=name):
            await webhook(fake).verify(raw(SignedPost({**post.headers, name: value}, post.body)))


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"Type": "Notification"}'])
async def test_what_is_not_a_signed_sns_message_is_refused(fake: FakeSes, body: bytes) -> None:
    with pytest.raises(WebhookRejected):
        await webhook(fake).verify(RawWebhook(URL, {}, body))


# --- the certificate URL, checked before anything is fetched ----------------------------

BAD_CERTIFICATE_URLS = [
    f"http://sns.us-east-1.amazonaws.com/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com.evil.test/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com@evil.test/{CERT_NAME}",
    f"https://evil.test@sns.us-east-1.amazonaws.com/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com:evil@evil.test/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com\\@evil.test/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com:8443/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com./{CERT_NAME}",
    f"https://SNS.us-east-1.amazonaws.com/{CERT_NAME}",
    f"https://sns.eu-west-1.amazonaws.com/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com.cn/{CERT_NAME}",
    f"https://evil.test/{CERT_NAME}",
    f"https://sqs.us-east-1.amazonaws.com/{CERT_NAME}",
    f"https://sns.us-east-1.amazonaws.com/{CERT_NAME}?x=1",
    f"https://sns.us-east-1.amazonaws.com/{CERT_NAME}#x",
    "https://sns.us-east-1.amazonaws.com/evil.pem",
    "https://sns.us-east-1.amazonaws.com/../SimpleNotificationService-ab.pem",
    f"https://sns.us-east-1.amazonaws.com/ {CERT_NAME}",
    f"https://sns.us-east-1.amazon\naws.com/{CERT_NAME}",
    f"file:///etc/{CERT_NAME}",
    "",
]


@pytest.mark.parametrize("url", BAD_CERTIFICATE_URLS)
async def test_a_certificate_url_that_is_not_snss_is_refused_unfetched(
    fake: FakeSes, url: str
) -> None:
    fetcher = Fetcher({url: fake.certificate_pem})
    hook = webhook(fake, fetcher, seed=False)
    with pytest.raises(WebhookRejected, match="SigningCertURL"):
        await hook.verify(raw(changed(notification(fake), SigningCertURL=url)))
    assert fetcher.calls == []


def test_sns_certificate_urls_in_china_and_elsewhere() -> None:
    name = "SimpleNotificationService-0123abcd.pem"
    assert certificate_url_ok(f"https://sns.us-east-1.amazonaws.com/{name}", "us-east-1")
    assert certificate_url_ok(f"https://sns.cn-north-1.amazonaws.com.cn/{name}", "cn-north-1")
    assert not certificate_url_ok(f"https://sns.cn-north-1.amazonaws.com.cn/{name}", "us-east-1")
    assert not certificate_url_ok(None, "us-east-1")


async def test_an_unseeded_certificate_is_fetched_once_then_cached(fake: FakeSes) -> None:
    fetcher = Fetcher({fake.certificate_url: fake.certificate_pem})
    hook = webhook(fake, fetcher, seed=False)
    await hook.verify(raw(notification(fake)))
    await hook.verify(raw(notification(fake)))
    assert fetcher.calls == [fake.certificate_url]


async def test_a_certificate_that_cannot_be_had_is_refused(fake: FakeSes) -> None:
    for pages in ({}, {fake.certificate_url: b"<html>not a certificate</html>"}):
        fetcher = Fetcher(pages)
        with pytest.raises(WebhookRejected, match="certificate"):
            await webhook(fake, fetcher, seed=False).verify(raw(notification(fake)))
        assert fetcher.calls == [fake.certificate_url]


async def test_another_topic_is_refused_unfetched(fake: FakeSes) -> None:
    other = "arn:aws:sns:us-east-1:123456789012:someone-elses-topic"
    fetcher = Fetcher({fake.certificate_url: fake.certificate_pem})
    hook = SesWebhook(settings(other), fetch=fetcher)
    with pytest.raises(WebhookRejected, match="TopicArn"):
        await hook.verify(raw(notification(fake)))
    assert fetcher.calls == []


async def test_without_a_topic_everything_is_refused(fake: FakeSes) -> None:
    hook = webhook_for(settings(None), certificates={fake.certificate_url: fake.certificate_pem})
    assert isinstance(hook, SesWebhook) and not hook.configured
    with pytest.raises(WebhookRejected, match="not configured"):
        await hook.verify(raw(notification(fake)))
    assert webhook(fake).configured


async def test_options_for_other_providers_are_ignored(fake: FakeSes) -> None:
    hook = webhook_for(settings(fake.sns_topic_arn), something_else=1)
    assert isinstance(hook, SesWebhook)
    await hook.close()


# --- subscriptions --------------------------------------------------------------------


async def test_a_subscription_confirmation_is_confirmed_through_the_fetcher(
    fake: FakeSes,
) -> None:
    post = fake.subscription_confirmation()
    subscribe_url = json.loads(post.body)["SubscribeURL"]
    assert subscribe_url.startswith(
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
    )
    fetcher = Fetcher({subscribe_url: b"<ConfirmSubscriptionResponse/>"})
    hook = webhook(fake, fetcher)
    await hook.verify(raw(post))
    parsed = await hook.parse(raw(post))
    assert parsed.events == [] and parsed.response == {"confirmed": True}
    assert fetcher.calls == [subscribe_url]


async def test_a_failed_confirmation_is_an_error_not_a_success(fake: FakeSes) -> None:
    post = fake.subscription_confirmation()
    hook = webhook(fake, Fetcher())
    await hook.verify(raw(post))
    with pytest.raises(FetchFailed):
        await hook.parse(raw(post))


async def test_a_subscribe_url_elsewhere_is_refused_unfetched(fake: FakeSes) -> None:
    post = fake.subscription_confirmation()
    fetcher = Fetcher()
    evil = "https://sns.us-east-1.amazonaws.com.evil.test/?Action=ConfirmSubscription"
    with pytest.raises(WebhookRejected, match="SubscribeURL"):
        await webhook(fake, fetcher).verify(raw(changed(post, SubscribeURL=evil)))
    assert fetcher.calls == []
    topic = fake.sns_topic_arn
    base = "https://sns.us-east-1.amazonaws.com/"
    assert subscribe_url_ok(
        f"{base}?Action=ConfirmSubscription&TopicArn={topic}", SES_REGION, topic
    )
    assert not subscribe_url_ok(f"{base}?Action=Unsubscribe", SES_REGION, topic)
    assert not subscribe_url_ok(f"{base}?Action=ConfirmSubscription&TopicArn=x", SES_REGION, topic)
    assert not subscribe_url_ok(f"http://{base[8:]}?Action=ConfirmSubscription", SES_REGION, topic)


async def test_an_unsubscribe_confirmation_has_no_events(fake: FakeSes) -> None:
    post = fake.sns_post("UnsubscribeConfirmation", "You have unsubscribed.")
    fetcher = Fetcher()
    hook = webhook(fake, fetcher)
    await hook.verify(raw(post))
    parsed = await hook.parse(raw(post))
    assert parsed.events == [] and parsed.response is None and fetcher.calls == []


# --- events ---------------------------------------------------------------------------


async def events_of(fake: FakeSes, happened: list[Outcome]) -> list[InboundEvent]:
    hook = webhook(fake)
    out: list[InboundEvent] = []
    for post in fake.signed_posts(happened):
        await hook.verify(raw(post))
        out += (await hook.parse(raw(post))).events
    return out


async def test_each_outcome_becomes_its_event(fake: FakeSes) -> None:
    addresses = ["bounce@example.org", "softbounce@example.org", "complaint@example.org"]
    addresses += ["defer@example.org", "plain@example.org"]
    message = received(fake, *addresses)
    events = await events_of(fake, [o for a in addresses for o in outcomes(a, message)])
    assert [(e.kind, e.recipient, e.bounce) for e in events] == [
        (EventKind.BOUNCED, "bounce@example.org", "hard"),
        (EventKind.DEFERRED, "softbounce@example.org", None),
        (EventKind.BOUNCED, "softbounce@example.org", "soft"),
        (EventKind.DELIVERED, "complaint@example.org", None),
        (EventKind.COMPLAINED, "complaint@example.org", None),
        (EventKind.DEFERRED, "defer@example.org", None),
        (EventKind.DELIVERED, "defer@example.org", None),
        (EventKind.DELIVERED, "plain@example.org", None),
    ]
    assert {e.message_id for e in events} == {"msg_1"}
    assert {e.provider_message_id for e in events} == {message.provider_message_id}
    assert len({e.key for e in events}) == len(events)
    hard, soft = (e for e in events if e.kind is EventKind.BOUNCED)
    assert hard.reason == "smtp; 550 5.1.1 user unknown" and hard.detail["status"] == "5.1.1"
    assert soft.reason == "smtp; 452 4.2.2 mailbox full"
    [complaint] = (e for e in events if e.kind is EventKind.COMPLAINED)
    assert complaint.reason == "abuse"


async def test_opens_clicks_and_unsubscribes_of_a_one_recipient_message(fake: FakeSes) -> None:
    opened = received(fake, "open@example.org")
    unsubscribed = received(fake, "unsubscribe@example.org")
    happened = outcomes("open@example.org", opened)
    happened += outcomes("unsubscribe@example.org", unsubscribed)
    events = await events_of(fake, happened)
    assert [(e.kind, e.recipient) for e in events] == [
        (EventKind.DELIVERED, "open@example.org"),
        (EventKind.OPENED, "open@example.org"),
        (EventKind.CLICKED, "open@example.org"),
        (EventKind.DELIVERED, "unsubscribe@example.org"),
        (EventKind.UNSUBSCRIBED, "unsubscribe@example.org"),
    ]
    assert events[2].detail["url"] == "https://example.com/welcome"


async def test_an_open_of_a_message_to_several_names_no_recipient(fake: FakeSes) -> None:
    message = received(fake, "open@example.org", "other@example.org")
    [event] = await events_of(fake, [Outcome("opened", "open@example.org", message)])
    assert event.kind is EventKind.OPENED and event.recipient is None
    assert event.message_id == "msg_1"


async def test_a_redelivered_notification_has_the_same_keys(fake: FakeSes) -> None:
    [post] = fake.signed_posts([Outcome("delivered", "b@example.org", received(fake, "b@x.org"))])
    hook = webhook(fake)
    first = (await hook.parse(raw(post))).events
    again = (await hook.parse(raw(post))).events
    assert [e.key for e in first] == [e.key for e in again]


def ses_notification(fake: FakeSes, event: dict[str, Any]) -> SignedPost:
    return fake.sns_post("Notification", json.dumps(event))


async def test_one_event_for_several_recipients_is_one_per_recipient(fake: FakeSes) -> None:
    mail = {
        "messageId": "0100-abc",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "destination": ["a@example.org", "b@example.org"],
        "tags": {"mailgate_id": ["_msg_2E1"]},  # escaped: "msg.1"
    }
    post = ses_notification(
        fake,
        {
            "eventType": "Delivery",
            "mail": mail,
            "delivery": {
                "timestamp": "2024-05-01T10:00:01.000Z",
                "recipients": ["a@example.org", "b@example.org"],
                "smtpResponse": "250 ok",
            },
        },
    )
    hook = webhook(fake)
    await hook.verify(raw(post))
    events = (await hook.parse(raw(post))).events
    assert [e.recipient for e in events] == ["a@example.org", "b@example.org"]
    assert len({e.key for e in events}) == 2
    assert {e.message_id for e in events} == {"msg.1"}
    assert events[0].detail["smtp_response"] == "250 ok"
    assert events[0].at.isoformat() == "2024-05-01T10:00:01+00:00"


async def test_the_older_notification_format_and_the_header_id_are_read(fake: FakeSes) -> None:
    event = {
        "notificationType": "Bounce",
        "mail": {
            "messageId": "0100-abc",
            "timestamp": "2024-05-01T10:00:00.000Z",
            "headers": [{"name": "X-Mailgate-Id", "value": "msg_9"}],
        },
        "bounce": {
            "bounceType": "Undetermined",
            "bounceSubType": "Undetermined",
            "bouncedRecipients": [{"emailAddress": "a@example.org"}],
            "timestamp": "2024-05-01T10:00:02.000Z",
        },
    }
    [bounce] = (await webhook(fake).parse(raw(ses_notification(fake, event)))).events
    assert (bounce.kind, bounce.bounce, bounce.reason) == (
        EventKind.BOUNCED,
        "soft",
        "Undetermined",
    )
    assert bounce.message_id == "msg_9"


@pytest.mark.parametrize("event_type", ["Send", "Reject", "Rendering Failure", "Something New"])
async def test_types_mailgate_does_not_track_are_left_out(fake: FakeSes, event_type: str) -> None:
    event = {"eventType": event_type, "mail": {"messageId": "0100-abc"}, "reject": {}}
    assert (await webhook(fake).parse(raw(ses_notification(fake, event)))).events == []


async def test_ses_validation_notice_is_no_event(fake: FakeSes) -> None:
    post = fake.sns_post(
        "Notification", "Successfully validated SNS topic for Amazon SES event publishing."
    )
    hook = webhook(fake)
    await hook.verify(raw(post))
    assert (await hook.parse(raw(post))).events == []


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[]",
        json.dumps({"mail": {"messageId": "x"}}),
        json.dumps({"eventType": "Delivery", "mail": {"messageId": "x"}}),
        json.dumps({"eventType": "Delivery", "delivery": {"recipients": ["a@x.org"]}}),
        json.dumps(
            {"eventType": "Bounce", "mail": {"messageId": "x"}, "bounce": {"bouncedRecipients": 5}}
        ),
        json.dumps(
            {
                "eventType": "Delivery",
                "mail": {"messageId": "x"},
                "delivery": {"recipients": ["a@x.org"], "timestamp": "yesterday"},
            }
        ),
    ],
)
async def test_a_verified_body_ses_does_not_send_is_bad(fake: FakeSes, message: str) -> None:
    post = fake.sns_post("Notification", message)
    hook = webhook(fake)
    await hook.verify(raw(post))
    with pytest.raises(BadWebhook):
        await hook.parse(raw(post))


# --- the fake, end to end -------------------------------------------------------------


@pytest.fixture
async def ses() -> AsyncIterator[SesCase]:
    async with open_case() as case:
        try:
            yield case
        finally:
            await case.fake.close()


async def test_the_fake_posts_verifiable_events_for_what_the_adapter_sent(ses: SesCase) -> None:
    fake = ses.fake
    hook = SesWebhook(
        settings(fake.sns_topic_arn), certificates={fake.certificate_url: fake.certificate_pem}
    )
    events: list[InboundEvent] = []

    async def receive(r: Request) -> Response:
        req = RawWebhook(str(r.url), dict(r.headers), await r.body())
        try:
            await hook.verify(req)
        except WebhookRejected:
            return Response(status_code=401)
        parsed = await hook.parse(req)
        events.extend(parsed.events)
        return JSONResponse({"received": len(parsed.events)})

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    async with serve_asgi(app) as server:
        fake.webhook_url = f"{server.url}/hook"
        provider = ses.make(base_url=ses.url, timeout=TIMEOUT, good_credentials=True)
        result = await provider.send(
            "msg_e2e",
            email(
                to=(Address("plain@example.org"),),
                cc=(Address("bounce@example.org"),),
                bcc=(Address("complaint@example.org", "C"),),
            ),
        )
        await provider.close()
        await fake.drain_events()
    assert fake.events_posted == 4 and fake.event_failures == 0
    assert sorted((e.kind, e.recipient or "") for e in events) == sorted(
        [
            (EventKind.DELIVERED, "plain@example.org"),
            (EventKind.BOUNCED, "bounce@example.org"),
            (EventKind.DELIVERED, "complaint@example.org"),
            (EventKind.COMPLAINED, "complaint@example.org"),
        ]
    )
    assert {e.message_id for e in events} == {"msg_e2e"}
    assert {e.provider_message_id for e in events} == {result.provider_message_id}
    await hook.close()


async def test_the_default_fetcher_gets_2xx_bodies_only() -> None:
    """aiohttp, no redirects, bounded: what fetches certificates when none is injected."""

    async def page(r: Request) -> Response:
        status = int(r.path_params["status"])
        headers = {"location": "https://evil.test/"} if status == 302 else {}
        return Response(b"-----BEGIN CERTIFICATE-----", status_code=status, headers=headers)

    async def big(_: Request) -> Response:
        return Response(b"x" * 100_000)

    app = Starlette(routes=[Route("/s/{status}", page), Route("/big", big)])
    hook = SesWebhook(settings("arn:aws:sns:us-east-1:123456789012:t"))
    async with serve_asgi(app) as server:
        assert await hook._get(f"{server.url}/s/200") == b"-----BEGIN CERTIFICATE-----"
        for url in (f"{server.url}/s/404", f"{server.url}/s/302", f"{server.url}/big"):
            with pytest.raises(FetchFailed):
                await hook._get(url)
    await hook.close()
    await hook.close()  # twice is fine
