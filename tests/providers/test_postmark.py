"""Postmark's own quirks: ErrorCodes, one tag, inactive recipients, the batch endpoint."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address
from mailgate.providers import HttpResponse, SendResult
from mailgate.providers.postmark import PostmarkProvider
from tests.providers.cases.postmark import PostmarkCase, open_case
from tests.providers.support import TIMEOUT, email


@pytest.fixture
async def pm() -> AsyncIterator[PostmarkCase]:
    async with open_case() as case:
        yield case


def adapter(pm: PostmarkCase, **overrides: str) -> PostmarkProvider:
    provider = pm.make(base_url=pm.url, timeout=TIMEOUT, good_credentials=True, **overrides)
    assert isinstance(provider, PostmarkProvider)
    return provider


def answer(code: int, message: str = "problem") -> bytes:
    return json.dumps({"ErrorCode": code, "Message": message}).encode()


async def test_the_id_is_the_message_id_and_the_stream_comes_from_settings(
    pm: PostmarkCase,
) -> None:
    provider = adapter(pm, message_stream="billing")
    result = await provider.send("msg_1", email(tags=("first", "second")))
    await provider.close()
    [received] = pm.fake.received
    assert result.provider_message_id == received.provider_message_id
    uuid.UUID(result.provider_message_id or "")
    assert received.fields["MessageStream"] == "billing"
    assert received.fields["Tag"] == "first"  # one Tag per message, and every tag in Metadata
    assert json.loads(received.fields["Metadata"]["mailgate_tags"]) == ["first", "second"]
    assert {"Name": "X-Mailgate-Id", "Value": "msg_1"} in received.fields["Headers"]


async def test_addresses_are_rfc_5322_strings(pm: PostmarkCase) -> None:
    provider = adapter(pm)
    await provider.send(
        "msg_1",
        email(
            sender=Address("a@example.com", "Jöhn Dœ"),
            to=(Address("b@example.org", "Lovelace, Ada"), Address("c@example.org")),
        ),
    )
    await provider.close()
    fields = pm.fake.received[0].fields
    assert fields["From"].startswith("=?utf-8?") and fields["From"].endswith(" <a@example.com>")
    assert fields["To"] == '"Lovelace, Ada" <b@example.org>, c@example.org'


@pytest.mark.parametrize(
    ("code", "error"),
    [
        *((code, MessageRejected) for code in (300, 402, 403, 406, 409, 410, 411)),
        *((code, ProviderAuthError) for code in (10, 400, 401, 405, 412, 413)),
        (100, ProviderUnavailable),
        (429, ProviderThrottled),
        (1234, MessageRejected),  # an unlisted code explaining a 422
    ],
)
def test_error_codes_decide_the_class(
    pm: PostmarkCase, code: int, error: type[ProviderError]
) -> None:
    provider = adapter(pm)
    classified = provider.classify_error(HttpResponse(422, {}, answer(code, "why")))
    assert type(classified) is error
    assert classified.detail == f"ErrorCode {code}: why"
    if isinstance(classified, ProviderUnavailable):
        assert not classified.ambiguous  # maintenance: Postmark did not take it


def test_the_http_status_wins_outside_a_422(pm: PostmarkCase) -> None:
    provider = adapter(pm)
    too_big = provider.classify_error(HttpResponse(413, {}, answer(413)))
    assert isinstance(too_big, MessageRejected)  # not code 413, "account may not send"
    bad_token = provider.classify_error(HttpResponse(401, {}, answer(10)))
    assert isinstance(bad_token, ProviderAuthError)
    maintenance = provider.classify_error(HttpResponse(503, {}, answer(100)))
    assert isinstance(maintenance, ProviderUnavailable) and not maintenance.ambiguous


async def test_a_403_html_page_is_not_from_the_api(pm: PostmarkCase) -> None:
    pm.fake.behaviour.status = 403
    provider = adapter(pm)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert "HTML page" in info.value.detail and "<html>" not in info.value.detail


async def test_a_wait_is_honoured_only_when_given(pm: PostmarkCase) -> None:
    pm.fake.behaviour.update({"status": 429, "error": "429"})
    provider = adapter(pm)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", email())
    assert info.value.retry_after is None
    pm.fake.behaviour.retry_after = "5"
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_2", email())
    await provider.close()
    assert info.value.retry_after == pytest.approx(5.0, abs=1.0)


async def test_inactive_recipients(pm: PostmarkCase) -> None:
    pm.fake.inactive = {"b@example.org"}
    provider = adapter(pm)
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", email())  # every recipient suppressed: 406
    assert "ErrorCode 406" in info.value.detail and "b@example.org" in info.value.detail
    result = await provider.send("msg_2", email(cc=(Address("c@example.org"),)))
    await provider.close()
    assert result.provider_message_id  # "Message OK, but will not deliver to ..." is a send
    assert [r.mailgate_id for r in pm.fake.received] == ["msg_2"]


async def test_an_unconfirmed_sender_fails_over(pm: PostmarkCase) -> None:
    pm.fake.sender_signatures = {"example.net"}
    provider = adapter(pm)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.status_code == 422 and "ErrorCode 400" in info.value.detail


def test_a_200_is_a_success_only_with_error_code_0_and_a_message_id(pm: PostmarkCase) -> None:
    provider = adapter(pm)
    with pytest.raises(MessageRejected, match="ErrorCode 406"):
        provider.parse_success(HttpResponse(200, {}, answer(406, "inactive")))
    with pytest.raises(ProviderUnavailable, match="without a MessageID"):
        provider.parse_success(HttpResponse(200, {}, b'{"ErrorCode": 0, "Message": "OK"}'))
    with pytest.raises(ProviderUnavailable, match="without a MessageID"):
        provider.parse_success(HttpResponse(200, {}, b"<html>welcome</html>"))
    # ErrorCode is sometimes missing when Postmark delays delivery; still a send.
    delayed = b'{"MessageID": "m-1", "Message": "Message accepted, but delivery may be delayed."}'
    assert provider.parse_success(HttpResponse(200, {}, delayed)).provider_message_id == "m-1"


# --- batch -------------------------------------------------------------------


async def test_a_batch_gives_each_message_its_own_outcome(pm: PostmarkCase) -> None:
    pm.fake.inactive = {"gone@example.org"}
    pm.fake.sender_signatures = {"example.com"}
    provider = adapter(pm)
    results = await provider.send_batch(
        [
            ("msg_ok", email()),
            ("msg_bad", email(to=(Address("not-an-address"),))),
            ("msg_gone", email(to=(Address("gone@example.org"),))),
            ("msg_sender", email(sender=Address("a@unconfirmed.test"))),
            ("msg_ok2", email(tags=("t",), metadata={"k": "v"})),
        ]
    )
    await provider.close()
    ok, bad, gone, sender, ok2 = results
    assert isinstance(ok, SendResult) and isinstance(ok2, SendResult)
    assert isinstance(bad, MessageRejected) and "ErrorCode 300" in bad.detail
    assert isinstance(gone, MessageRejected) and "ErrorCode 406" in gone.detail
    assert isinstance(sender, ProviderAuthError) and "ErrorCode 400" in sender.detail
    assert pm.requests() == 1
    taken = pm.taken()
    assert [v["mailgate_id"] for v in taken] == ["msg_ok", "msg_ok2"]
    assert [v["provider_message_id"] for v in taken] == [
        ok.provider_message_id,
        ok2.provider_message_id,
    ]
    assert taken[1]["tags"] == ["t"] and taken[1]["metadata"] == {"k": "v"}


@pytest.mark.parametrize(
    ("status", "code", "error", "ambiguous"),
    [
        (401, "10", ProviderAuthError, None),
        (500, None, ProviderUnavailable, True),
        (503, None, ProviderUnavailable, False),
        (429, "429", ProviderThrottled, None),
    ],
)
async def test_a_failed_batch_request_fails_every_item(
    pm: PostmarkCase,
    status: int,
    code: str | None,
    error: type[ProviderError],
    ambiguous: bool | None,
) -> None:
    pm.fake.behaviour.update({"status": status, "error": code})
    provider = adapter(pm)
    results = await provider.send_batch([("msg_1", email()), ("msg_2", email())])
    await provider.close()
    assert len(results) == 2
    for result in results:
        assert type(result) is error
        if ambiguous is not None:
            assert isinstance(result, ProviderUnavailable) and result.ambiguous is ambiguous
    assert pm.taken() == []


async def test_a_batch_with_no_answer_is_ambiguous_for_every_item(pm: PostmarkCase) -> None:
    pm.hang()
    provider = pm.make(base_url=pm.url, timeout=0.2, good_credentials=True)
    assert isinstance(provider, PostmarkProvider)
    results = await provider.send_batch([("msg_1", email()), ("msg_2", email())])
    await provider.close()
    assert all(isinstance(r, ProviderUnavailable) and r.ambiguous for r in results)


async def test_wrong_token_fails_the_whole_batch(pm: PostmarkCase) -> None:
    provider = pm.make(base_url=pm.url, timeout=TIMEOUT, good_credentials=False)
    assert isinstance(provider, PostmarkProvider)
    results = await provider.send_batch([("msg_1", email())])
    await provider.close()
    assert [type(r) for r in results] == [ProviderAuthError]


async def test_a_batch_too_large_as_a_whole_is_not_about_each_message(pm: PostmarkCase) -> None:
    pm.fake.behaviour.status = 413
    provider = adapter(pm)
    several = await provider.send_batch([("msg_1", email()), ("msg_2", email())])
    alone = await provider.send_batch([("msg_3", email())])
    await provider.close()
    assert all(isinstance(r, ProviderUnavailable) and not r.ambiguous for r in several)
    assert [type(r) for r in alone] == [MessageRejected]


async def test_batch_limits(pm: PostmarkCase) -> None:
    provider = adapter(pm)
    assert await provider.send_batch([]) == []
    with pytest.raises(ValueError, match="at most 500"):
        await provider.send_batch([(f"msg_{i}", email()) for i in range(501)])
    await provider.close()
    assert pm.requests() == 0


def test_a_batch_answer_that_does_not_match_is_ambiguous(pm: PostmarkCase) -> None:
    provider = adapter(pm)
    one = b'[{"ErrorCode": 0, "Message": "OK", "MessageID": "m-1"}]'
    results = provider._batch_outcomes(HttpResponse(200, {}, one), 2)
    assert all(isinstance(r, ProviderUnavailable) and r.ambiguous for r in results)


async def test_the_health_probe_reads_the_server(pm: PostmarkCase) -> None:
    good = adapter(pm)
    bad = pm.make(base_url=pm.url, timeout=TIMEOUT, good_credentials=False)
    await good.probe()
    with pytest.raises(ProviderAuthError, match="ErrorCode 10"):
        await bad.probe()
    pm.fake.behaviour.update({"status": 503, "error": "100"})
    with pytest.raises(ProviderUnavailable, match="ErrorCode 100"):
        await good.probe()
    await good.close()
    await bad.close()
    assert pm.taken() == []
