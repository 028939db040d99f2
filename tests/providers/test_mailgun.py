"""Mailgun's own quirks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest

from mailgate.errors import ProviderThrottled, ProviderUnavailable
from mailgate.message import Address, Email
from mailgate.providers import HttpResponse
from mailgate.providers.fakes import FakeMailgun
from mailgate.serving import serve_asgi
from tests.helpers import MAILGUN_DOMAIN, MAILGUN_KEY
from tests.providers.conftest import TIMEOUT, _make_mailgun

EMAIL = Email(
    sender=Address("a@example.com"), to=(Address("b@example.org"),), subject="s", text="t"
)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeMailgun, str]]:
    fake = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN)
    async with serve_asgi(fake.app()) as server:
        yield fake, server.url


async def test_the_id_loses_its_angle_brackets(fake: tuple[FakeMailgun, str]) -> None:
    mg, url = fake
    provider = _make_mailgun(base_url=url, timeout=TIMEOUT)
    result = await provider.send("msg_1", EMAIL)
    await provider.close()
    assert result.provider_message_id == mg.received[0].provider_message_id
    assert result.provider_message_id and result.provider_message_id.endswith(f"@{MAILGUN_DOMAIN}")
    assert "<" not in result.provider_message_id


async def test_an_unknown_domain_fails_over(fake: tuple[FakeMailgun, str]) -> None:
    _, url = fake
    provider = _make_mailgun(base_url=url, timeout=TIMEOUT, domain="wrong.example.com")
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 404 and "Domain not found" in info.value.detail


async def test_420_is_a_sending_limit_until_the_date_given(fake: tuple[FakeMailgun, str]) -> None:
    mg, url = fake
    mg.behaviour.status = 420
    provider = _make_mailgun(base_url=url, timeout=TIMEOUT)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 420
    assert info.value.retry_after is not None and 3500 < info.value.retry_after <= 3600


def test_420_without_a_date_has_no_retry_after() -> None:
    provider = _make_mailgun(base_url="http://unused", timeout=TIMEOUT)
    error = provider.classify_error(HttpResponse(420, {}, b'{"message": "limit reached"}'))
    assert isinstance(error, ProviderThrottled) and error.retry_after is None
    soon = formatdate(time.time() + 60, usegmt=True)
    body = f'{{"message": "not allowed to send, try again after {soon}"}}'.encode()
    error = provider.classify_error(HttpResponse(420, {}, body))
    assert isinstance(error, ProviderThrottled)
    assert error.retry_after is not None and 55 < error.retry_after <= 60


def test_a_200_that_is_not_a_send_is_not_a_success() -> None:
    provider = _make_mailgun(base_url="http://unused", timeout=TIMEOUT)
    with pytest.raises(ProviderUnavailable, match="without a message id"):
        provider.parse_success(HttpResponse(200, {}, b"Mailgun Magnificent API"))


async def test_the_form_is_multipart_with_repeated_fields(fake: tuple[FakeMailgun, str]) -> None:
    mg, url = fake
    provider = _make_mailgun(base_url=url, timeout=TIMEOUT)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"), Address("c@example.org")),
        subject="s",
        text="t",
        tags=("one", "two"),
    )
    await provider.send("msg_1", email)
    await provider.close()
    fields = mg.received[0].fields
    assert fields["to"] == ["b@example.org", "c@example.org"]
    assert fields["o:tag"] == ["one", "two"]
