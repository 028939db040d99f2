"""Mailjet's own quirks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address
from mailgate.providers.base import HttpResponse
from mailgate.providers.fakes.mailjet import FakeMailjet
from mailgate.providers.mailjet import MailjetProvider
from tests.providers.cases.mailjet import MAILJET_KEY, MAILJET_SECRET, MailjetCase, open_case
from tests.providers.support import email


@pytest.fixture
async def mj() -> AsyncIterator[MailjetCase]:
    async with open_case() as case:
        yield case


def adapter(mj: MailjetCase) -> MailjetProvider:
    provider = mj.provider()
    assert isinstance(provider, MailjetProvider)
    return provider


def fake(mj: MailjetCase) -> FakeMailjet:
    assert isinstance(mj.fake, FakeMailjet)
    return mj.fake


def per_message(status: int, *errors: dict[str, object]) -> HttpResponse:
    body = {"Messages": [{"Status": "error", "Errors": list(errors)}]}
    return HttpResponse(status, {}, json.dumps(body).encode())


async def test_the_id_is_the_first_recipients_message_id_exactly(mj: MailjetCase) -> None:
    provider = adapter(mj)
    result = await provider.send(
        "msg_1", email(to=(Address("b@example.org"), Address("c@example.org")))
    )
    await provider.close()
    assert result.provider_message_id == mj.fake.received[0].provider_message_id
    assert result.provider_message_id is not None
    assert int(result.provider_message_id) > 2**53  # would lose digits as a double


async def test_one_message_per_call_with_our_id_tags_and_metadata(mj: MailjetCase) -> None:
    provider = adapter(mj)
    await provider.send("msg_1", email(tags=("welcome", "beta"), metadata={"plan": "pro"}))
    await provider.close()
    m = mj.fake.received[0].fields
    assert m["CustomID"] == "msg_1" and m["Headers"]["X-Mailgate-Id"] == "msg_1"
    assert m["CustomCampaign"] == "welcome"  # Mailjet's one grouping field: the first tag
    assert json.loads(m["EventPayload"]) == {
        "tags": ["welcome", "beta"],
        "metadata": {"plan": "pro"},
    }


async def test_no_tags_or_metadata_sends_no_payload(mj: MailjetCase) -> None:
    provider = adapter(mj)
    await provider.send("msg_1", email())
    await provider.close()
    m = mj.fake.received[0].fields
    assert "EventPayload" not in m and "CustomCampaign" not in m


@pytest.mark.parametrize(
    ("code", "error"),
    [("send-0003", MessageRejected), ("send-0008", ProviderAuthError)],
)
async def test_a_200_whose_message_failed_is_not_a_send(
    mj: MailjetCase, code: str, error: type[Exception]
) -> None:
    mj.fake.behaviour.update({"status": 200, "error": code})
    provider = adapter(mj)
    with pytest.raises(error) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert code in str(info.value) and mj.taken() == []


async def test_an_unauthorised_sender_fails_over_though_the_call_is_a_400(mj: MailjetCase) -> None:
    fake(mj).senders = {"someone-else@example.com"}
    provider = adapter(mj)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.status_code == 403  # the message's StatusCode, not the call's 400
    assert info.value.detail.startswith("send-0008: ") and "[From]" in info.value.detail


@pytest.mark.parametrize(
    ("status", "code"), [(401, "mj-0001"), (403, "send-0006"), (403, "send-0007")]
)
async def test_credential_and_sender_codes_fail_over(
    mj: MailjetCase, status: int, code: str
) -> None:
    mj.fake.behaviour.update({"status": status, "error": code})
    provider = adapter(mj)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.status_code == status and code in info.value.detail


async def test_validation_errors_reject_the_message_naming_the_field(mj: MailjetCase) -> None:
    provider = adapter(mj)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", email(text=None))
    await provider.close()
    assert info.value.status_code == 400
    assert info.value.detail.startswith("send-0003: ")
    assert "[TextPart, HTMLPart, TemplateID]" in info.value.detail


async def test_a_header_mailjet_reserves_is_refused(mj: MailjetCase) -> None:
    provider = adapter(mj)
    with pytest.raises(MessageRejected, match="send-0011"):
        await provider.send("msg_1", email(headers={"List-Id": "<news.example.com>"}))
    await provider.close()


async def test_429_is_an_html_page_without_a_wait(mj: MailjetCase) -> None:
    mj.fake.behaviour.update({"status": 429, "retry_after": "30"})  # Mailjet sends none
    provider = adapter(mj)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.retry_after is None
    assert info.value.detail.startswith("429 Too Many Requests")


def test_a_retry_after_would_still_be_honoured(mj: MailjetCase) -> None:
    error = adapter(mj).classify_error(HttpResponse(429, {"Retry-After": "12"}, b""))
    assert isinstance(error, ProviderThrottled) and error.retry_after == 12.0
    body = {"StatusCode": 429, "ErrorMessage": "slow down", "ErrorCode": ""}
    error = adapter(mj).classify_error(per_message(400, body))
    assert isinstance(error, ProviderThrottled)


async def test_a_500_quotes_mailjets_error_identifier(mj: MailjetCase) -> None:
    mj.fake.behaviour.status = 500
    provider = adapter(mj)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.ambiguous and "ErrorIdentifier" in info.value.detail


def test_provider_side_errors_win_over_validation_errors(mj: MailjetCase) -> None:
    provider = adapter(mj)
    invalid = {"ErrorCode": "mj-0013", "StatusCode": 400, "ErrorMessage": "bad address"}
    sender = {"ErrorCode": "send-0007", "StatusCode": 403, "ErrorMessage": "not validated"}
    error = provider.classify_error(per_message(400, invalid, sender))
    assert isinstance(error, ProviderAuthError)
    assert error.detail == "mj-0013: bad address; send-0007: not validated"
    outage = {"ErrorCode": "", "StatusCode": 503, "ErrorMessage": "try later"}
    error = provider.classify_error(per_message(400, invalid, outage))
    assert isinstance(error, ProviderUnavailable) and not error.ambiguous


def test_a_2xx_without_mailjets_result_is_not_a_send(mj: MailjetCase) -> None:
    with pytest.raises(ProviderUnavailable, match="without Mailjet's Messages result"):
        adapter(mj).parse_success(HttpResponse(200, {}, b"<html>hello</html>"))


def test_a_global_auth_code_fails_over_whatever_the_status(mj: MailjetCase) -> None:
    body = {"ErrorIdentifier": "x", "ErrorCode": "mj-0001", "StatusCode": 400, "ErrorMessage": "no"}
    error = adapter(mj).classify_error(HttpResponse(400, {}, json.dumps(body).encode()))
    assert (
        isinstance(error, ProviderAuthError) and error.detail == "mj-0001: no (ErrorIdentifier x)"
    )


async def test_only_the_first_reply_to_is_carried(mj: MailjetCase) -> None:
    provider = adapter(mj)
    await provider.send(
        "msg_1", email(reply_to=(Address("r@example.com"), Address("s@example.com")))
    )
    await provider.close()
    assert mj.fake.received[0].fields["ReplyTo"] == {"Email": "r@example.com"}


async def test_the_fake_sends_the_good_messages_of_a_mixed_batch(mj: MailjetCase) -> None:
    good = {"From": {"Email": "a@example.com"}, "To": [{"Email": "b@example.org"}],
            "Subject": "s", "TextPart": "t", "CustomID": "good"}  # fmt: skip
    bad = {**good, "TextPart": None, "CustomID": "bad"}
    async with httpx.AsyncClient(auth=(MAILJET_KEY, MAILJET_SECRET)) as client:
        answer = await client.post(f"{mj.url}/v3.1/send", json={"Messages": [good, bad]})
        sandbox = await client.post(
            f"{mj.url}/v3.1/send", json={"Messages": [good], "SandboxMode": True}
        )
    assert answer.status_code == 400  # though the first message was sent
    first, second = answer.json()["Messages"]
    assert first["Status"] == "success" and second["Status"] == "error"
    assert second["Errors"][0]["ErrorCode"] == "send-0003"
    assert sandbox.status_code == 200 and sandbox.json()["Messages"][0]["To"][0]["MessageID"] == 0
    assert [r.mailgate_id for r in mj.fake.received] == ["good"]  # sandbox sends nothing


async def test_the_health_probe_reads_the_profile(mj: MailjetCase) -> None:
    good, bad = adapter(mj), mj.provider(good_credentials=False)
    await good.probe()
    with pytest.raises(ProviderAuthError, match="mj-0015"):
        await bad.probe()
    mj.fake.behaviour.status = 503
    with pytest.raises(ProviderUnavailable):
        await good.probe()
    await good.close()
    await bad.close()
    assert mj.taken() == []
