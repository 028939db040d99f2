"""Mandrill's own quirks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email
from mailgate.providers import HttpResponse
from mailgate.providers.fakes.mandrill import FakeMandrill
from mailgate.providers.mandrill import MandrillProvider
from tests.providers.cases.mandrill import MANDRILL_KEY, MandrillCase, open_case

EMAIL = Email(
    sender=Address("a@example.com"),
    to=(Address("b@example.org"), Address("c@example.org")),
    subject="s",
    text="t",
)


@pytest.fixture
async def md() -> AsyncIterator[MandrillCase]:
    async with open_case() as case:
        yield case


def adapter(md: MandrillCase) -> MandrillProvider:
    provider = md.provider()
    assert isinstance(provider, MandrillProvider)
    return provider


def fake(md: MandrillCase) -> FakeMandrill:
    assert isinstance(md.fake, FakeMandrill)
    return md.fake


def results(*items: dict[str, Any]) -> HttpResponse:
    return HttpResponse(200, {}, json.dumps(list(items)).encode())


def api_error(name: str, status: int = 500) -> HttpResponse:
    body = {"status": "error", "code": -1, "name": name, "message": f"about {name}"}
    return HttpResponse(status, {}, json.dumps(body).encode())


def test_the_key_travels_in_the_body_not_in_a_header(md: MandrillCase) -> None:
    request = adapter(md).build_request("msg_1", EMAIL)
    assert request.json["key"] == MANDRILL_KEY
    assert not any(k.lower() == "authorization" for k in request.headers)
    assert request.url.endswith("/api/1.0/messages/send.json")


async def test_recipients_are_typed_and_shown_to_each_other(md: MandrillCase) -> None:
    provider = adapter(md)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org", "Bob"),),
        cc=(Address("c@example.org"),),
        bcc=(Address("d@example.org"),),
        reply_to=(Address("r@example.com"), Address("s@example.com", "Sue")),
        subject="s",
        text="t",
    )
    await provider.send("msg_1", email)
    await provider.close()
    message = md.fake.received[0].fields
    assert message["to"] == [
        {"email": "b@example.org", "name": "Bob", "type": "to"},
        {"email": "c@example.org", "type": "cc"},
        {"email": "d@example.org", "type": "bcc"},
    ]
    assert message["preserve_recipients"] is True
    assert message["headers"]["Reply-To"] == "r@example.com, Sue <s@example.com>"
    assert "from_name" not in message and "key" not in message


async def test_the_id_is_the_first_accepted_recipients(md: MandrillCase) -> None:
    fake(md).rejects = {"b@example.org": "hard-bounce"}
    provider = adapter(md)
    result = await provider.send("msg_1", EMAIL)  # b refused, c sent: a send
    await provider.close()
    assert result.provider_message_id == md.fake.received[0].provider_message_id
    assert len(result.provider_message_id or "") == 32


async def test_every_recipient_on_the_rejection_list_rejects_the_message(
    md: MandrillCase,
) -> None:
    fake(md).rejects = {"b@example.org": "hard-bounce", "c@example.org": "unsub"}
    provider = adapter(md)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.status_code == 200
    assert "b@example.org: rejected (hard-bounce)" in info.value.detail
    assert "c@example.org: rejected (unsub)" in info.value.detail
    assert md.taken() == []


async def test_an_unsigned_sender_domain_fails_over(md: MandrillCase) -> None:
    fake(md).verified_domains = {"verified.example.com"}
    provider = adapter(md)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert "(unsigned)" in info.value.detail
    assert md.taken() == []


@pytest.mark.parametrize(
    ("outcomes", "error"),
    [
        ([("rejected", "invalid-sender")], ProviderAuthError),
        ([("rejected", "test-mode-limit")], ProviderAuthError),
        ([("rejected", "hard-bounce"), ("rejected", "unsigned")], ProviderAuthError),
        ([("rejected", "spam"), ("invalid", None)], MessageRejected),
        (
            [("rejected", "soft-bounce"), ("rejected", "custom"), ("rejected", "rule")],
            MessageRejected,
        ),
        ([("rejected", "something-new")], ProviderUnavailable),
    ],
)
def test_when_nobody_is_accepted_the_reasons_decide(
    md: MandrillCase, outcomes: list[tuple[str, str | None]], error: type[ProviderError]
) -> None:
    response = results(
        *(
            {"email": f"r{i}@example.org", "status": status, "reject_reason": reason}
            for i, (status, reason) in enumerate(outcomes)
        )
    )
    with pytest.raises(error) as info:
        adapter(md).parse_success(response)
    assert type(info.value) is error
    if isinstance(info.value, ProviderUnavailable):
        assert not info.value.ambiguous


@pytest.mark.parametrize("status", ["queued", "scheduled", "sent"])
def test_queued_and_scheduled_are_sends(md: MandrillCase, status: str) -> None:
    response = results(
        {"email": "a@example.org", "status": "rejected", "reject_reason": "unsub"},
        {"email": "b@example.org", "status": status, "_id": "abc", "queued_reason": "hourly-quota"},
    )
    assert adapter(md).parse_success(response).provider_message_id == "abc"


def test_a_200_without_results_is_not_a_send(md: MandrillCase) -> None:
    provider = adapter(md)
    for body in (b"[]", b'{"status": "ok"}', b"<html>Mandrill</html>"):
        with pytest.raises(ProviderUnavailable, match="without per-recipient results"):
            provider.parse_success(HttpResponse(200, {}, body))


@pytest.mark.parametrize(
    ("name", "error", "ambiguous"),
    [
        ("Invalid_Key", ProviderAuthError, None),
        ("PaymentRequired", ProviderAuthError, None),
        ("Unknown_Subaccount", ProviderAuthError, None),
        ("PoorReputation", ProviderAuthError, None),
        ("ValidationError", MessageRejected, None),
        ("ServiceUnavailable", ProviderUnavailable, False),
        ("GeneralError", ProviderUnavailable, True),
        ("Unknown_Template", ProviderUnavailable, False),
    ],
)
def test_errors_are_classified_by_name(
    md: MandrillCase, name: str, error: type[ProviderError], ambiguous: bool | None
) -> None:
    for status in (500, 400):  # some clients have seen 400; the name decides either way
        classified = adapter(md).classify_error(api_error(name, status))
        assert type(classified) is error
        assert classified.detail == f"{name}: about {name}"
        assert classified.status_code == status
        if ambiguous is not None:
            assert isinstance(classified, ProviderUnavailable)
            assert classified.ambiguous is ambiguous


def test_a_5xx_without_json_is_a_proxy_answer(md: MandrillCase) -> None:
    provider = adapter(md)
    bad_gateway = provider.classify_error(HttpResponse(502, {}, b"Bad Gateway"))
    assert isinstance(bad_gateway, ProviderUnavailable) and not bad_gateway.ambiguous
    internal = provider.classify_error(HttpResponse(500, {}, b"Internal Server Error"))
    assert isinstance(internal, ProviderUnavailable) and internal.ambiguous


async def test_a_front_door_429_throttles_with_its_retry_after(md: MandrillCase) -> None:
    md.fake.behaviour.update({"status": 429, "retry_after": "7"})
    provider = adapter(md)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert info.value.retry_after == pytest.approx(7.0)


async def test_a_tag_starting_with_underscore_is_refused(md: MandrillCase) -> None:
    provider = adapter(md)
    email = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"),),
        subject="s",
        text="t",
        tags=("_internal",),
    )
    with pytest.raises(MessageRejected, match="ValidationError"):
        await provider.send("msg_1", email)
    await provider.close()
