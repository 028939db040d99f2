"""Mailgun's own quirks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest

from mailgate.errors import ProviderThrottled, ProviderUnavailable
from mailgate.message import Address, Email
from mailgate.providers import HttpResponse, MailgunProvider
from tests.helpers import MAILGUN_DOMAIN
from tests.providers.cases.mailgun import MailgunCase, open_case
from tests.providers.support import EMAIL, TIMEOUT


@pytest.fixture
async def mg() -> AsyncIterator[MailgunCase]:
    async with open_case() as case:
        yield case


def adapter(mg: MailgunCase, **overrides: str) -> MailgunProvider:
    provider = mg.make(base_url=mg.url, timeout=TIMEOUT, good_credentials=True, **overrides)
    assert isinstance(provider, MailgunProvider)
    return provider


async def test_the_id_loses_its_angle_brackets(mg: MailgunCase) -> None:
    provider = adapter(mg)
    result = await provider.send("msg_1", EMAIL)
    await provider.close()
    assert result.provider_message_id == mg.fake.received[0].provider_message_id
    assert result.provider_message_id and result.provider_message_id.endswith(f"@{MAILGUN_DOMAIN}")
    assert "<" not in result.provider_message_id


async def test_an_unknown_domain_fails_over(mg: MailgunCase) -> None:
    provider = adapter(mg, domain="wrong.example.com")
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 404 and "Domain not found" in info.value.detail


async def test_420_is_a_sending_limit_until_the_date_given(mg: MailgunCase) -> None:
    mg.fake.behaviour.status = 420
    provider = adapter(mg)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 420
    assert info.value.retry_after is not None and 3500 < info.value.retry_after <= 3600


def test_420_without_a_date_has_no_retry_after(mg: MailgunCase) -> None:
    provider = adapter(mg)
    error = provider.classify_error(HttpResponse(420, {}, b'{"message": "limit reached"}'))
    assert isinstance(error, ProviderThrottled) and error.retry_after is None
    soon = formatdate(time.time() + 60, usegmt=True)
    body = f'{{"message": "not allowed to send, try again after {soon}"}}'.encode()
    error = provider.classify_error(HttpResponse(420, {}, body))
    assert isinstance(error, ProviderThrottled)
    assert error.retry_after is not None and 55 < error.retry_after <= 60


def test_a_200_that_is_not_a_send_is_not_a_success(mg: MailgunCase) -> None:
    provider = adapter(mg)
    with pytest.raises(ProviderUnavailable, match="without a message id"):
        provider.parse_success(HttpResponse(200, {}, b"Mailgun Magnificent API"))


async def test_the_form_is_multipart_with_repeated_fields(mg: MailgunCase) -> None:
    provider = adapter(mg)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"), Address("c@example.org")),
        subject="s",
        text="t",
        tags=("one", "two"),
    )
    await provider.send("msg_1", email)
    await provider.close()
    fields = mg.fake.received[0].fields
    assert fields["to"] == ["b@example.org", "c@example.org"]
    assert fields["o:tag"] == ["one", "two"]
