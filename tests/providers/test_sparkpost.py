"""SparkPost's own quirks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email
from mailgate.providers import HttpResponse
from mailgate.providers.base import MAX_RETRY_AFTER_SECONDS
from mailgate.providers.fakes.sparkpost import FakeSparkPost
from mailgate.providers.sparkpost import THROTTLE_DEFAULT_SECONDS, SparkPostProvider
from tests.providers.cases.sparkpost import SparkPostCase, open_case
from tests.providers.support import EMAIL


@pytest.fixture
async def sp() -> AsyncIterator[SparkPostCase]:
    async with open_case() as case:
        yield case


def adapter(sp: SparkPostCase) -> SparkPostProvider:
    provider = sp.provider()
    assert isinstance(provider, SparkPostProvider)
    return provider


def fake(sp: SparkPostCase) -> FakeSparkPost:
    assert isinstance(sp.fake, FakeSparkPost)
    return sp.fake


def errors(*items: str) -> bytes:
    """A SparkPost error body with these codes."""
    parts = ", ".join(f'{{"message": "m{c}", "code": "{c}"}}' for c in items)
    return f'{{"errors": [{parts}]}}'.encode()


async def test_the_id_is_the_transmission_id(sp: SparkPostCase) -> None:
    provider = adapter(sp)
    result = await provider.send("msg_1", EMAIL)
    await provider.close()
    assert result.provider_message_id == sp.fake.received[0].provider_message_id
    assert (result.provider_message_id or "").isdigit()


async def test_cc_and_bcc_are_recipients_named_in_headers_or_not(sp: SparkPostCase) -> None:
    provider = adapter(sp)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org", "Bob"), Address("c@example.org")),
        cc=(Address("d@example.org", "Dee"),),
        bcc=(Address("e@example.org"),),
        subject="s",
        text="t",
    )
    await provider.send("msg_1", email)
    await provider.close()
    body = sp.fake.received[0].fields
    emails = [r["address"]["email"] for r in body["recipients"]]
    assert emails == ["b@example.org", "c@example.org", "d@example.org", "e@example.org"]
    # Everyone sees the same To line; only cc addresses appear in Cc; bcc nowhere.
    assert {r["address"]["header_to"] for r in body["recipients"]} == {
        "Bob <b@example.org>, c@example.org"
    }
    assert body["content"]["headers"]["Cc"] == "Dee <d@example.org>"
    assert "e@example.org" not in str(body["content"]["headers"])


async def test_every_tag_goes_on_every_recipient_and_no_campaign(sp: SparkPostCase) -> None:
    provider = adapter(sp)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"),),
        bcc=(Address("c@example.org"),),
        subject="s",
        text="t",
        tags=("one", "two"),
    )
    await provider.send("msg_1", email)
    await provider.close()
    body = sp.fake.received[0].fields
    assert [r["tags"] for r in body["recipients"]] == [["one", "two"], ["one", "two"]]
    assert "campaign_id" not in body


async def test_some_recipients_rejected_is_still_a_send(sp: SparkPostCase) -> None:
    fake(sp).rejected = {"c@example.org"}
    provider = adapter(sp)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"), Address("c@example.org")),
        subject="s",
        text="t",
    )
    result = await provider.send("msg_1", email)
    await provider.close()
    assert result.provider_message_id == sp.fake.received[0].provider_message_id


async def test_every_recipient_rejected_in_a_200_is_a_rejected_message(
    sp: SparkPostCase,
) -> None:
    fake(sp).rejected = {"b@example.org"}
    provider = adapter(sp)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 200
    assert "1 recipient(s) rejected" in info.value.detail
    assert "invalid recipient address b@example.org" in info.value.detail
    assert sp.taken() == []


@pytest.mark.parametrize("code", ["7001", "7000"])
async def test_an_unusable_sending_domain_fails_over(sp: SparkPostCase, code: str) -> None:
    sp.fake.behaviour.update({"status": 400, "error": code})
    provider = adapter(sp)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 400 and f"(code {code})" in info.value.detail


def test_other_400s_and_422s_reject_the_message(sp: SparkPostCase) -> None:
    provider = adapter(sp)
    for status, code in [(400, "1902"), (400, "1300"), (422, "1400"), (422, "1603"), (422, "1301")]:
        error = provider.classify_error(HttpResponse(status, {}, errors(code)))
        assert isinstance(error, MessageRejected), (status, code)


def test_server_resources_unavailable_is_provider_trouble(sp: SparkPostCase) -> None:
    error = adapter(sp).classify_error(HttpResponse(400, {}, errors("1502")))
    assert isinstance(error, ProviderUnavailable) and not error.ambiguous


async def test_420_sending_limit_pauses_the_provider_for_an_hour(sp: SparkPostCase) -> None:
    sp.fake.behaviour.status = 420  # code 2101, "Exceed Sending Limit (hourly)"
    provider = adapter(sp)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 420 and "2101" in info.value.detail
    assert info.value.retry_after == MAX_RETRY_AFTER_SECONDS
    daily = provider.classify_error(HttpResponse(420, {}, errors("2102")))
    assert isinstance(daily, ProviderThrottled) and daily.retry_after == MAX_RETRY_AFTER_SECONDS


async def test_a_spent_sandbox_is_an_account_problem(sp: SparkPostCase) -> None:
    sp.fake.behaviour.update({"status": 420, "error": "2103"})
    provider = adapter(sp)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 420 and "sandbox" in info.value.detail


async def test_429_waits_five_seconds_unless_told_otherwise(sp: SparkPostCase) -> None:
    sp.fake.behaviour.status = 429
    provider = adapter(sp)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", EMAIL)
    assert info.value.retry_after == THROTTLE_DEFAULT_SECONDS == 5.0
    sp.fake.behaviour.retry_after = "7"
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_2", EMAIL)
    await provider.close()
    assert info.value.retry_after == pytest.approx(7.0)


def test_a_200_without_a_transmission_id_is_not_a_send(sp: SparkPostCase) -> None:
    provider = adapter(sp)
    with pytest.raises(ProviderUnavailable, match="without a transmission id"):
        provider.parse_success(HttpResponse(200, {}, b"<html>welcome</html>"))


def test_error_details_carry_message_description_and_code(sp: SparkPostCase) -> None:
    body = (
        b'{"errors": [{"message": "required field is missing",'
        b' "description": "content.subject is a required field", "code": "1400"}]}'
    )
    error = adapter(sp).classify_error(HttpResponse(422, {}, body))
    assert (
        error.detail == "required field is missing: content.subject is a required field (code 1400)"
    )
    plain = adapter(sp).classify_error(HttpResponse(502, {}, b"bad gateway"))
    assert plain.detail == "bad gateway" and isinstance(plain, ProviderUnavailable)


async def test_the_probe_passes_a_key_that_may_only_send(sp: SparkPostCase) -> None:
    fake(sp).account_readable = False  # the key lacks Account: Read, a 403
    provider = adapter(sp)
    await provider.probe()
    await provider.close()
    bad = sp.provider(good_credentials=False)
    with pytest.raises(ProviderAuthError):
        await bad.probe()
    await bad.close()
