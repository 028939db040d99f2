"""Resend's own quirks: the idempotency key, tag characters, display names, error names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
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
from mailgate.providers.base import MAX_RETRY_AFTER_SECONDS
from mailgate.providers.resend import ResendProvider, tag_name
from tests.providers.cases.resend import RESEND_KEY, ResendCase, open_case
from tests.providers.support import email


@pytest.fixture
async def rs() -> AsyncIterator[ResendCase]:
    async with open_case() as case:
        yield case


def adapter(rs: ResendCase) -> ResendProvider:
    provider = rs.provider()
    assert isinstance(provider, ResendProvider)
    return provider


def error(status: int, name: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = {"statusCode": status, "name": name, "message": "why"}
    return HttpResponse(status, headers or {}, json.dumps(body).encode())


async def test_our_id_is_the_idempotency_key_a_header_and_a_tag(rs: ResendCase) -> None:
    provider = adapter(rs)
    result = await provider.send("msg_1", email())
    await provider.close()
    [received] = rs.fake.received
    assert result.provider_message_id == received.provider_message_id
    assert list(rs.fake.keys) == ["msg_1"]
    assert received.fields["headers"]["X-Mailgate-Id"] == "msg_1"
    assert {"name": "mailgate_id", "value": "msg_1"} in received.fields["tags"]


async def test_a_repeat_with_the_same_key_sends_nothing_new(rs: ResendCase) -> None:
    provider = adapter(rs)
    first = await provider.send("msg_1", email())
    again = await provider.send("msg_1", email())  # e.g. after an ambiguous timeout
    await provider.close()
    assert again.provider_message_id == first.provider_message_id
    assert rs.requests() == 2 and len(rs.fake.received) == 1


async def test_the_same_key_with_another_body_is_rejected(rs: ResendCase) -> None:
    provider = adapter(rs)
    await provider.send("msg_1", email())
    with pytest.raises(MessageRejected) as info:
        await provider.send("msg_1", email(subject="changed"))
    await provider.close()
    assert info.value.status_code == 409
    assert info.value.detail.startswith("invalid_idempotent_request:")
    assert len(rs.fake.received) == 1


async def test_a_key_still_in_flight_is_ambiguous(rs: ResendCase) -> None:
    rs.fake.behaviour.latency = 0.3
    provider = adapter(rs)
    outcomes = await asyncio.gather(
        provider.send("msg_1", email()), provider.send("msg_1", email()), return_exceptions=True
    )
    again = await provider.send("msg_1", email())
    await provider.close()
    [sent] = [o for o in outcomes if isinstance(o, SendResult)]
    [busy] = [o for o in outcomes if isinstance(o, ProviderError)]
    # The first request will most likely send it: not the provider slowing down.
    assert isinstance(busy, ProviderUnavailable) and busy.ambiguous and busy.status_code == 409
    assert "concurrent_idempotent_requests" in busy.detail
    assert again.provider_message_id == sent.provider_message_id
    assert len(rs.fake.received) == 1


async def test_a_failed_request_is_not_remembered(rs: ResendCase) -> None:
    rs.fake.behaviour.update({"status": 500, "error": "internal_server_error", "fail_count": 1})
    provider = adapter(rs)
    with pytest.raises(ProviderUnavailable):
        await provider.send("msg_1", email())
    result = await provider.send("msg_1", email())  # the retry with the same key goes through
    await provider.close()
    assert result.provider_message_id == rs.fake.received[0].provider_message_id


async def test_keys_are_kept_for_24_hours(rs: ResendCase) -> None:
    provider = adapter(rs)
    first = await provider.send("msg_1", email())
    rs.fake.keys["msg_1"].at -= 24 * 3600 + 1
    second = await provider.send("msg_1", email())
    await provider.close()
    assert second.provider_message_id != first.provider_message_id
    assert len(rs.fake.received) == 2


async def test_tags_follow_resends_character_rules(rs: ResendCase) -> None:
    provider = adapter(rs)
    await provider.send("msg_1", email(tags=("invoice", "Black Friday!", "Black_Friday_", "ü")))
    await provider.close()
    assert rs.fake.received[0].fields["tags"] == [
        {"name": "invoice", "value": "true"},
        {"name": "Black_Friday_", "value": "true"},  # both spellings end up the same
        {"name": "_", "value": "true"},
        {"name": "mailgate_id", "value": "msg_1"},
    ]
    assert tag_name("x" * 300) == "x" * 256


async def test_metadata_travels_as_json_in_a_header(rs: ResendCase) -> None:
    provider = adapter(rs)
    await provider.send("msg_1", email(metadata={"order": "#42 & co", "who": "zoë"}))
    await provider.send("msg_2", email())
    await provider.close()
    with_metadata, without = (r.fields["headers"] for r in rs.fake.received)
    assert json.loads(with_metadata["X-Metadata"]) == {"order": "#42 & co", "who": "zoë"}
    assert with_metadata["X-Metadata"].isascii()
    assert "X-Metadata" not in without


async def test_display_names_avoid_resends_parser_bugs(rs: ResendCase) -> None:
    provider = adapter(rs)
    await provider.send(
        "msg_1",
        email(
            sender=Address("a@example.com", 'Zoë "Z" Ng'),
            to=(Address("b@example.org", "Lovelace, Ada"), Address("c@example.org", "Bob")),
            reply_to=(Address("r@example.com", "Zoë"),),
            html="<p>h</p>",
            text=None,
        ),
    )
    await provider.close()
    fields = rs.fake.received[0].fields
    assert fields["from"] == 'Zoë "Z" Ng <a@example.com>'  # bare: no quotes, no encoding
    assert fields["to"] == ["=?utf-8?q?Lovelace=2C_Ada?= <b@example.org>", "Bob <c@example.org>"]
    assert fields["reply_to"][0].startswith("=?utf-8?q?")
    assert "text" not in fields  # Resend derives the plain part from the html


async def test_the_fake_refuses_what_resend_refuses(rs: ResendCase) -> None:
    async def post(body: dict[str, object]) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {RESEND_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{rs.url}/emails", json=body, headers=headers) as response,
        ):
            return response.status, (await response.json())["name"]

    base = {"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"}
    assert await post({**base, "to": ['"Lovelace, Ada" <b@example.org>']}) == (
        422,
        "validation_error",
    )
    assert await post({**base, "from": "=?utf-8?q?Zo=C3=AB?= <a@example.com>"}) == (
        451,
        "security_error",
    )
    assert await post({**base, "tags": [{"name": "a b", "value": "x"}]}) == (
        422,
        "validation_error",
    )
    assert len(rs.fake.received) == 0


async def test_an_unverified_sender_domain_fails_over(rs: ResendCase) -> None:
    rs.fake.verified_domains = {"example.net"}
    provider = adapter(rs)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.status_code == 403 and "domain is not verified" in info.value.detail


@pytest.mark.parametrize(
    ("status", "name", "expected", "ambiguous"),
    [
        (400, "validation_error", MessageRejected, None),
        (400, "invalid_idempotency_key", MessageRejected, None),
        (401, "missing_api_key", ProviderAuthError, None),
        (401, "restricted_api_key", ProviderAuthError, None),
        (403, "invalid_api_key", ProviderAuthError, None),
        (403, "validation_error", ProviderAuthError, None),  # domain not verified: config
        (404, "not_found", ProviderUnavailable, False),  # a wrong base_url
        (409, "invalid_idempotent_request", MessageRejected, None),
        (409, "concurrent_idempotent_requests", ProviderUnavailable, True),
        (422, "invalid_from_address", MessageRejected, None),
        (422, "invalid_attachment", MessageRejected, None),
        (451, "security_error", MessageRejected, None),
        (500, "application_error", ProviderUnavailable, True),
        (500, "internal_server_error", ProviderUnavailable, True),
    ],
)
def test_errors_are_classified_by_status_and_name(
    rs: ResendCase,
    status: int,
    name: str,
    expected: type[ProviderError],
    ambiguous: bool | None,
) -> None:
    classified = adapter(rs).classify_error(error(status, name))
    assert type(classified) is expected
    assert classified.detail == f"{name}: why" and classified.status_code == status
    if ambiguous is not None:
        assert isinstance(classified, ProviderUnavailable) and classified.ambiguous is ambiguous


def test_throttling_waits_for_the_rate_limit_and_longer_for_a_quota(rs: ResendCase) -> None:
    provider = adapter(rs)
    rate = provider.classify_error(error(429, "rate_limit_exceeded", {"retry-after": "2"}))
    assert isinstance(rate, ProviderThrottled) and rate.retry_after == 2.0
    reset = provider.classify_error(error(429, "rate_limit_exceeded", {"ratelimit-reset": "3"}))
    assert isinstance(reset, ProviderThrottled) and reset.retry_after == 3.0
    unknown = provider.classify_error(error(429, "rate_limit_exceeded"))
    assert isinstance(unknown, ProviderThrottled) and unknown.retry_after is None
    for quota in ("daily_quota_exceeded", "monthly_quota_exceeded"):
        used_up = provider.classify_error(error(429, quota, {"retry-after": "1"}))
        assert isinstance(used_up, ProviderThrottled)
        assert used_up.retry_after == MAX_RETRY_AFTER_SECONDS


async def test_a_used_up_quota_pauses_the_provider(rs: ResendCase) -> None:
    rs.fake.behaviour.update({"status": 429, "error": "daily_quota_exceeded"})
    provider = adapter(rs)
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_1", email())
    await provider.close()
    assert info.value.retry_after == MAX_RETRY_AFTER_SECONDS
    assert info.value.detail.startswith("daily_quota_exceeded:")


def test_edge_errors_and_odd_successes(rs: ResendCase) -> None:
    provider = adapter(rs)
    edge = provider.classify_error(HttpResponse(502, {}, b"error code: 502"))
    assert isinstance(edge, ProviderUnavailable) and not edge.ambiguous
    assert edge.detail == "error code: 502"
    with pytest.raises(ProviderUnavailable, match="without an id"):
        provider.parse_success(HttpResponse(200, {}, b"<html>hello</html>"))


async def test_the_health_probe_passes_a_sending_only_key(rs: ResendCase) -> None:
    good, bad = adapter(rs), rs.provider(good_credentials=False)
    await good.probe()  # 401 restricted_api_key: the key is known, it may only send
    rs.fake.full_access = True
    await good.probe()
    with pytest.raises(ProviderAuthError, match="invalid_api_key"):
        await bad.probe()
    rs.fake.behaviour.update({"status": 500, "error": "internal_server_error"})
    with pytest.raises(ProviderUnavailable):
        await good.probe()
    await good.close()
    await bad.close()
    assert rs.taken() == []
