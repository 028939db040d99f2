"""SendGrid's own quirks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mailgate.errors import MessageRejected
from mailgate.message import Address
from mailgate.providers import HttpResponse, SendGridProvider
from tests.providers.cases.sendgrid import SendGridCase, open_case
from tests.providers.support import email


@pytest.fixture
async def sg() -> AsyncIterator[SendGridCase]:
    async with open_case() as case:
        yield case


def adapter(sg: SendGridCase) -> SendGridProvider:
    provider = sg.provider()
    assert isinstance(provider, SendGridProvider)
    return provider


async def test_the_id_comes_from_the_x_message_id_header(sg: SendGridCase) -> None:
    provider = adapter(sg)
    result = await provider.send("msg_1", email())
    await provider.close()
    assert result.provider_message_id == sg.fake.received[0].provider_message_id
    assert len(result.provider_message_id or "") == 22


async def test_one_reply_to_uses_reply_to_several_use_the_list(sg: SendGridCase) -> None:
    provider = adapter(sg)
    await provider.send("msg_1", email(reply_to=(Address("r@example.com"),)))
    await provider.send(
        "msg_2", email(reply_to=(Address("r@example.com"), Address("s@example.com")))
    )
    await provider.close()
    one, two = (r.fields for r in sg.fake.received)
    assert one["reply_to"] == {"email": "r@example.com"} and "reply_to_list" not in one
    assert two["reply_to_list"] == [{"email": "r@example.com"}, {"email": "s@example.com"}]


async def test_text_comes_before_html(sg: SendGridCase) -> None:
    provider = adapter(sg)
    await provider.send("msg_1", email(html="<b>h</b>"))
    await provider.close()
    assert [c["type"] for c in sg.fake.received[0].fields["content"]] == ["text/plain", "text/html"]


async def test_a_duplicate_recipient_is_a_rejected_message(sg: SendGridCase) -> None:
    provider = adapter(sg)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", email(cc=(Address("b@example.org"),)))
    await provider.close()
    assert "personalizations.0.cc" in info.value.detail and "unique" in info.value.detail


async def test_error_details_name_sendgrids_field(sg: SendGridCase) -> None:
    provider = adapter(sg)
    body = b'{"errors":[{"message":"Does not contain a valid address.","field":"from.email"}]}'
    error = provider.classify_error(HttpResponse(400, {}, body))
    assert isinstance(error, MessageRejected)
    assert error.detail == "from.email: Does not contain a valid address."
    plain = provider.classify_error(HttpResponse(503, {}, b"upstream overloaded"))
    assert plain.detail == "upstream overloaded"
