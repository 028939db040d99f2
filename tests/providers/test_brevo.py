"""Brevo's own quirks."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Attachment
from mailgate.providers.base import HttpResponse
from mailgate.providers.brevo import BrevoProvider
from mailgate.providers.fakes.brevo import FakeBrevo
from tests.providers.cases.brevo import BrevoCase, open_case
from tests.providers.support import email


@pytest.fixture
async def brevo() -> AsyncIterator[BrevoCase]:
    async with open_case() as case:
        yield case


def adapter(brevo: BrevoCase) -> BrevoProvider:
    provider = brevo.provider()
    assert isinstance(provider, BrevoProvider)
    return provider


def fake(brevo: BrevoCase) -> FakeBrevo:
    assert isinstance(brevo.fake, FakeBrevo)
    return brevo.fake


def error(provider: BrevoProvider, status: int, code: str, **headers: str) -> Exception:
    body = json.dumps({"code": code, "message": "said Brevo"}).encode()
    return provider.classify_error(HttpResponse(status, headers, body))


async def test_the_id_is_brevos_message_id_with_its_brackets(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    result = await provider.send("msg_1", email())
    await provider.close()
    assert result.provider_message_id == brevo.fake.received[0].provider_message_id
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith("<")
    assert result.provider_message_id.endswith("@smtp-relay.mailin.fr>")


async def test_our_id_is_the_idempotency_key_and_in_x_mailin_custom(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    await provider.send("msg_1", email(metadata={"plan": "pro"}))
    await provider.close()
    headers = brevo.fake.received[0].fields["headers"]
    assert headers["idempotencyKey"] == "msg_1"
    assert headers["X-Mailgate-Id"] == "msg_1"
    assert json.loads(headers["X-Mailin-custom"]) == {"plan": "pro", "mailgate_id": "msg_1"}


async def test_a_repeat_with_the_same_key_is_not_sent_twice(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    first = await provider.send("msg_1", email())
    again = await provider.send("msg_1", email())  # e.g. after an ambiguous timeout
    other = await provider.send("msg_2", email())
    await provider.close()
    assert brevo.requests() == 3
    assert [r.mailgate_id for r in brevo.fake.received] == ["msg_1", "msg_2"]
    assert again.provider_message_id == first.provider_message_id
    assert other.provider_message_id != first.provider_message_id


async def test_the_key_expires_after_its_ttl(brevo: BrevoCase) -> None:
    fake(brevo).idempotency_ttl = 0.0
    provider = adapter(brevo)
    await provider.send("msg_1", email())
    await provider.send("msg_1", email())
    await provider.close()
    assert [r.mailgate_id for r in brevo.fake.received] == ["msg_1", "msg_1"]


async def test_429_waits_for_x_sib_ratelimit_reset(brevo: BrevoCase) -> None:
    brevo.fake.behaviour.status = 429  # no wait named: the fake's default reset, 10 s
    provider = adapter(brevo)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.retry_after == pytest.approx(10.0)


def test_retry_after_is_the_fallback_for_the_reset_header(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    both = error(provider, 429, "too_many_requests", **{"x-sib-ratelimit-reset": "3"})
    assert isinstance(both, ProviderThrottled) and both.retry_after == 3.0
    fallback = error(provider, 429, "too_many_requests", **{"Retry-After": "5"})
    assert isinstance(fallback, ProviderThrottled) and fallback.retry_after == 5.0
    neither = error(provider, 429, "too_many_requests")
    assert isinstance(neither, ProviderThrottled) and neither.retry_after is None
    nonsense = error(provider, 429, "x", **{"x-sib-ratelimit-reset": "soon", "Retry-After": "2"})
    assert isinstance(nonsense, ProviderThrottled) and nonsense.retry_after == 2.0


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "unauthorized"),
        (402, "not_enough_credits"),
        (403, "permission_denied"),
        (400, "not_enough_credits"),
        (400, "account_under_validation"),
    ],
)
def test_account_problems_fail_over(brevo: BrevoCase, status: int, code: str) -> None:
    failure = error(adapter(brevo), status, code)
    assert isinstance(failure, ProviderAuthError)
    assert failure.status_code == status and failure.detail == f"{code}: said Brevo"


async def test_402_from_the_wire_is_an_auth_error(brevo: BrevoCase) -> None:
    brevo.fake.behaviour.status = 402
    provider = adapter(brevo)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.status_code == 402 and "not_enough_credits" in info.value.detail


@pytest.mark.parametrize("code", ["invalid_parameter", "missing_parameter"])
def test_a_bad_parameter_is_a_rejected_message(brevo: BrevoCase, code: str) -> None:
    failure = error(adapter(brevo), 400, code)
    assert isinstance(failure, MessageRejected) and failure.detail == f"{code}: said Brevo"


async def test_a_proxy_page_is_unavailable_with_its_text(brevo: BrevoCase) -> None:
    brevo.fake.behaviour.status = 502
    provider = adapter(brevo)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert not info.value.ambiguous and "502" in info.value.detail


def test_a_2xx_without_a_message_id_is_not_a_send(brevo: BrevoCase) -> None:
    with pytest.raises(ProviderUnavailable, match="without a messageId"):
        adapter(brevo).parse_success(HttpResponse(200, {}, b"<html>welcome</html>"))


async def test_names_brevo_would_drop_go_out_rfc2047_encoded(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    await provider.send(
        "msg_1",
        email(
            sender=Address("a@example.com", "Dœ, Jöhn"),
            to=(Address("b@example.org", "Zoë"), Address("c@example.org", "Smith, Ann")),
            reply_to=(Address("r@example.com", "Zoë"),),
        ),
    )
    await provider.close()
    body = brevo.fake.received[0].fields
    assert body["sender"]["name"].startswith("=?utf-8?")  # kept by Brevo, shown decoded
    assert [a["name"] for a in body["to"]] == ["Zoë", "Smith, Ann"]  # Brevo handles these
    assert body["replyTo"]["name"].startswith("=?utf-8?")  # else sent as raw 8-bit
    [view] = brevo.taken()
    assert view["sender"] == {"email": "a@example.com", "name": "Dœ, Jöhn"}
    assert view["reply_to"] == [{"email": "r@example.com", "name": "Zoë"}]


async def test_only_the_first_reply_to_is_carried(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    await provider.send(
        "msg_1", email(reply_to=(Address("r@example.com"), Address("s@example.com")))
    )
    await provider.close()
    assert brevo.fake.received[0].fields["replyTo"] == {"email": "r@example.com"}


async def test_text_only_sends_no_html(brevo: BrevoCase) -> None:
    provider = adapter(brevo)
    await provider.send("msg_1", email())
    await provider.close()
    body = brevo.fake.received[0].fields
    assert body["textContent"] == "t" and "htmlContent" not in body


async def test_an_attachment_name_brevo_does_not_allow_is_rejected(brevo: BrevoCase) -> None:
    attachment = Attachment(
        "setup.exe", "application/octet-stream", base64.b64encode(b"MZ").decode()
    )
    provider = adapter(brevo)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", email(attachments=(attachment,)))
    await provider.close()
    assert "setup.exe" in info.value.detail and brevo.taken() == []


async def test_the_health_probe_reads_the_account(brevo: BrevoCase) -> None:
    good, bad = adapter(brevo), brevo.provider(good_credentials=False)
    await good.probe()
    with pytest.raises(ProviderAuthError):
        await bad.probe()
    brevo.fake.behaviour.status = 403
    with pytest.raises(ProviderAuthError, match="permission_denied"):
        await good.probe()
    await good.close()
    await bad.close()
    assert brevo.taken() == []
