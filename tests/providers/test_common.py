"""What every provider must do: carry every field, map every failure, pass our id on."""

from __future__ import annotations

import base64

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Attachment, Email
from mailgate.providers import SimulatedFailure
from tests.providers.support import WRONG_SECRET, Failure, ProviderCase


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


FULL = Email(
    sender=Address("ada@example.com", "Ada Lovelace"),
    to=(Address("bob@example.org", "Bob"), Address("eve@example.org")),
    cc=(Address("carol@example.org", "Carol"),),
    bcc=(Address("dave@example.org"),),
    reply_to=(Address("help@example.com", "Help desk"),),
    subject="Your invoice — November",
    text="Plain body",
    html="<p>HTML body</p>",
    headers={"X-Campaign": "autumn", "List-Unsubscribe": "<mailto:unsub@example.com>"},
    attachments=(
        Attachment("invoice.pdf", "application/pdf", b64(b"%PDF-1.4 fake")),
        Attachment("notes.txt", "text/plain", b64("héllo".encode())),
    ),
    tags=("invoice", "monthly"),
    metadata={"customer": "42", "plan": "pro"},
)


async def test_every_field_reaches_the_provider(case: ProviderCase) -> None:
    provider = case.provider()
    result = await provider.send("msg_01TEST", FULL)
    await provider.close()

    [view] = case.taken()
    assert result.provider_message_id == view["provider_message_id"]
    assert view["mailgate_id"] == "msg_01TEST"
    assert view["sender"] == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert view["to"] == [{"email": "bob@example.org", "name": "Bob"}, {"email": "eve@example.org"}]
    assert view["cc"] == [{"email": "carol@example.org", "name": "Carol"}]
    assert view["bcc"] == [{"email": "dave@example.org"}]
    assert view["reply_to"] == [{"email": "help@example.com", "name": "Help desk"}]
    assert view["subject"] == "Your invoice — November"
    assert (view["text"], view["html"]) == ("Plain body", "<p>HTML body</p>")
    assert view["headers"] == {
        "X-Campaign": "autumn",
        "List-Unsubscribe": "<mailto:unsub@example.com>",
    }
    assert view["attachments"] == [
        {
            "filename": "invoice.pdf",
            "content_type": "application/pdf",
            "content": b64(b"%PDF-1.4 fake"),
        },
        {"filename": "notes.txt", "content_type": "text/plain", "content": b64("héllo".encode())},
    ]
    assert view["tags"] == list(FULL.tags)[: case.tags_kept]
    assert view["metadata"] == {"customer": "42", "plan": "pro"}


async def test_minimal_message(case: ProviderCase) -> None:
    minimal = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"),),
        subject="s",
        html="<b>x</b>",
    )
    provider = case.provider()
    await provider.send("msg_min", minimal)
    await provider.close()
    [view] = case.taken()
    assert (view["text"], view["html"], view["cc"], view["attachments"]) == (
        None,
        "<b>x</b>",
        [],
        [],
    )
    assert view["mailgate_id"] == "msg_min"


async def test_unicode_display_names(case: ProviderCase) -> None:
    email = Email(
        sender=Address("a@example.com", 'Jöhn "JD" Dœ'),
        to=(Address("b@example.org", "Lovelace, Ada"),),
        subject="s",
        text="t",
    )
    provider = case.provider()
    await provider.send("msg_names", email)
    await provider.close()
    [view] = case.taken()
    assert view["sender"] == {"email": "a@example.com", "name": 'Jöhn "JD" Dœ'}
    assert view["to"] == [{"email": "b@example.org", "name": "Lovelace, Ada"}]


@pytest.mark.parametrize(
    ("failure", "error", "ambiguous"),
    [
        (Failure.REJECTED, MessageRejected, None),
        (Failure.AUTH, ProviderAuthError, None),
        (Failure.THROTTLED, ProviderThrottled, None),
        (Failure.UNAVAILABLE, ProviderUnavailable, False),
        (Failure.SERVER_ERROR, ProviderUnavailable, True),
    ],
)
async def test_failure_classes(
    case: ProviderCase, failure: Failure, error: type[ProviderError], ambiguous: bool | None
) -> None:
    case.fail(failure)
    provider = case.provider()
    with pytest.raises(error) as info:
        await provider.send("msg_err", FULL)
    await provider.close()
    if ambiguous is not None:
        assert isinstance(info.value, ProviderUnavailable) and info.value.ambiguous is ambiguous
    assert info.value.provider and info.value.detail  # names the provider, says what happened
    assert case.taken() == []


async def test_throttled_carries_the_wait(case: ProviderCase) -> None:
    if not case.retry_after_given:
        pytest.skip(f"{case.name} says no wait time when it throttles")
    case.fail(Failure.THROTTLED, retry_after=7)
    provider = case.provider()
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_429", FULL)
    await provider.close()
    assert info.value.retry_after == pytest.approx(7.0, abs=1.0)


async def test_wrong_credentials(case: ProviderCase) -> None:
    provider = case.provider(good_credentials=False)
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_auth", FULL)
    await provider.close()
    assert WRONG_SECRET not in str(info.value)  # never the credentials


async def test_no_answer_is_an_ambiguous_timeout(case: ProviderCase) -> None:
    case.hang()
    provider = case.provider(timeout=case.hang_timeout)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_slow", FULL)
    await provider.close()
    assert info.value.ambiguous
    assert "no answer within" in info.value.detail


async def test_refused_connection_is_safe_to_retry(case: ProviderCase) -> None:
    provider = case.unreachable()
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_down", FULL)
    await provider.close()
    assert not info.value.ambiguous
    assert "cannot connect" in info.value.detail


async def test_simulated_error_fails_like_a_real_outage(case: ProviderCase) -> None:
    provider = case.provider()
    provider.simulated_failure = SimulatedFailure.ERROR
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_drill", FULL)
    assert not info.value.ambiguous
    provider.simulated_failure = SimulatedFailure.OFF
    await provider.send("msg_drill", FULL)
    await provider.close()
    assert case.requests() == 1  # the drill never reached the provider


async def test_simulated_timeout_fails_like_a_real_one(case: ProviderCase) -> None:
    provider = case.provider(timeout=0.2)
    provider.simulated_failure = SimulatedFailure.TIMEOUT
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_drill", FULL)
    await provider.close()
    assert info.value.ambiguous and "no answer within" in info.value.detail
    assert case.requests() == 0


async def test_connections_are_reused_and_can_be_reopened(case: ProviderCase) -> None:
    provider = case.provider()
    for i in range(5):
        await provider.send(f"msg_{i}", FULL)
    await provider.close()
    await provider.send("msg_again", FULL)
    await provider.close()
    assert [v["mailgate_id"] for v in case.taken()][-1] == "msg_again"


async def test_the_health_probe_proves_the_credentials(case: ProviderCase) -> None:
    good = case.provider()
    await good.probe()
    await good.close()
    bad = case.provider(good_credentials=False)
    with pytest.raises(ProviderAuthError) as info:
        await bad.probe()
    await bad.close()
    assert WRONG_SECRET not in str(info.value)
    down = case.unreachable()
    with pytest.raises(ProviderUnavailable):
        await down.probe()
    await down.close()
    assert case.taken() == []  # a probe never sends mail
