"""The cases every provider must pass: each field mapped, each error class, our id passed."""

from __future__ import annotations

import socket

import pytest

from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Attachment, Email
from mailgate.providers import SimulatedFailure
from tests.providers.conftest import Case, b64

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


async def test_every_field_reaches_the_provider(case: Case) -> None:
    provider = case.provider()
    result = await provider.send("msg_01TEST", FULL)
    await provider.close()

    [received] = case.fake.received
    assert result.provider_message_id == received.provider_message_id
    assert received.mailgate_id == "msg_01TEST"
    view = case.view(received)
    assert view["from"] == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert view["to"] == [{"email": "bob@example.org", "name": "Bob"}, {"email": "eve@example.org"}]
    assert view["cc"] == [{"email": "carol@example.org", "name": "Carol"}]
    assert view["bcc"] == [{"email": "dave@example.org"}]
    assert view["reply_to"] == [{"email": "help@example.com", "name": "Help desk"}]
    assert view["subject"] == "Your invoice — November"
    assert (view["text"], view["html"]) == ("Plain body", "<p>HTML body</p>")
    assert view["headers"] == {
        "X-Campaign": "autumn",
        "List-Unsubscribe": "<mailto:unsub@example.com>",
        "X-Mailgate-Id": "msg_01TEST",
    }
    assert view["attachments"] == [
        {
            "filename": "invoice.pdf",
            "content_type": "application/pdf",
            "content": b64(b"%PDF-1.4 fake"),
        },
        {"filename": "notes.txt", "content_type": "text/plain", "content": b64("héllo".encode())},
    ]
    assert view["tags"] == ["invoice", "monthly"]
    assert view["metadata"] == {"customer": "42", "plan": "pro"}
    assert view["mailgate_id"] == "msg_01TEST"


async def test_minimal_message(case: Case) -> None:
    minimal = Email(
        sender=Address("a@example.com"),
        to=(Address("b@example.org"),),
        subject="s",
        html="<b>x</b>",
    )
    provider = case.provider()
    await provider.send("msg_min", minimal)
    await provider.close()
    view = case.view(case.fake.received[0])
    assert (view["text"], view["html"], view["cc"], view["attachments"]) == (
        None,
        "<b>x</b>",
        [],
        [],
    )


async def test_unicode_display_names(case: Case) -> None:
    email = Email(
        sender=Address("a@example.com", 'Jöhn "JD" Dœ'),
        to=(Address("b@example.org", "Lovelace, Ada"),),
        subject="s",
        text="t",
    )
    provider = case.provider()
    await provider.send("msg_names", email)
    await provider.close()
    view = case.view(case.fake.received[0])
    assert view["from"] == {"email": "a@example.com", "name": 'Jöhn "JD" Dœ'}
    assert view["to"] == [{"email": "b@example.org", "name": "Lovelace, Ada"}]


@pytest.mark.parametrize(
    ("status", "error", "ambiguous"),
    [
        (400, MessageRejected, None),
        (413, MessageRejected, None),
        (401, ProviderAuthError, None),
        (403, ProviderAuthError, None),
        (500, ProviderUnavailable, True),
        (502, ProviderUnavailable, False),
        (503, ProviderUnavailable, False),
        (504, ProviderUnavailable, True),
    ],
)
async def test_error_classes(
    case: Case, status: int, error: type[Exception], ambiguous: bool | None
) -> None:
    case.fake.behaviour.status = status
    provider = case.provider()
    with pytest.raises(error) as info:
        await provider.send("msg_err", FULL)
    await provider.close()
    raised = info.value
    assert getattr(raised, "status_code", None) == status
    if ambiguous is not None:
        assert isinstance(raised, ProviderUnavailable) and raised.ambiguous is ambiguous
    assert case.fake.received == type(case.fake.received)()  # nothing was taken


async def test_throttled_carries_retry_after(case: Case) -> None:
    case.fake.behaviour.status = 429
    case.fake.behaviour.retry_after = "7"
    provider = case.provider()
    with pytest.raises(ProviderThrottled) as info:
        await provider.send("msg_429", FULL)
    await provider.close()
    assert info.value.retry_after == 7.0


async def test_wrong_credentials(case: Case) -> None:
    provider = case.provider(api_key="wrong")
    with pytest.raises(ProviderAuthError) as info:
        await provider.send("msg_auth", FULL)
    await provider.close()
    assert info.value.status_code == 401
    assert "wrong" not in str(info.value)


async def test_no_answer_is_an_ambiguous_timeout(case: Case) -> None:
    case.fake.behaviour.hang = True
    provider = case.provider(timeout=0.2)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_slow", FULL)
    await provider.close()
    assert info.value.ambiguous
    assert "no answer within" in info.value.detail


async def test_refused_connection_is_safe_to_retry(case: Case) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    provider = case.provider(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_down", FULL)
    await provider.close()
    assert not info.value.ambiguous
    assert "cannot connect" in info.value.detail


async def test_simulated_error_fails_like_a_real_503(case: Case) -> None:
    provider = case.provider()
    provider.simulated_failure = SimulatedFailure.ERROR
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_drill", FULL)
    assert info.value.status_code == 503 and not info.value.ambiguous
    provider.simulated_failure = SimulatedFailure.OFF
    await provider.send("msg_drill", FULL)
    await provider.close()
    assert case.fake.requests == 1  # the drill never reached the provider


async def test_simulated_timeout_fails_like_a_real_one(case: Case) -> None:
    provider = case.provider(timeout=0.2)
    provider.simulated_failure = SimulatedFailure.TIMEOUT
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_drill", FULL)
    await provider.close()
    assert info.value.ambiguous and "no answer within" in info.value.detail
    assert case.fake.requests == 0


async def test_a_session_is_reused_and_can_be_reopened(case: Case) -> None:
    provider = case.provider()
    for i in range(5):
        await provider.send(f"msg_{i}", FULL)
    await provider.close()
    await provider.send("msg_again", FULL)
    await provider.close()
    assert [r.mailgate_id for r in case.fake.received][-1] == "msg_again"
