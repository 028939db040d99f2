"""The SMTP relay's own quirks: TLS modes, AUTH, reply codes, recipients, headers, connections."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mailgate.config import SmtpSettings
from mailgate.errors import (
    ConfigError,
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Attachment, Email
from mailgate.providers.base import MAX_RETRY_AFTER_SECONDS
from mailgate.providers.fakes.smtp import DROP, HANG, Stage
from mailgate.providers.smtp import Phase, SmtpProvider, classify_reply, parse_queue_id
from tests.helpers import eventually
from tests.providers.cases.smtp import SmtpCase, Tls, header, open_case, view


@pytest.fixture
async def relay() -> AsyncIterator[SmtpCase]:
    async with open_case() as case:
        yield case


def email(**fields: object) -> Email:
    values: dict[str, object] = {
        "sender": Address("a@example.com"),
        "to": (Address("bob@example.org"), Address("eve@example.org")),
        "subject": "s",
        "text": "t",
    }
    values.update(fields)
    return Email(**values)  # type: ignore[arg-type]


async def send(provider: SmtpProvider, message: Email | None = None, mid: str = "msg_1") -> str:
    try:
        result = await provider.send(mid, message or email())
    finally:
        await provider.close()
    return result.provider_message_id or ""


async def failure(provider: SmtpProvider, message: Email | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await send(provider, message)
    return info.value


# --- TLS and AUTH ------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "implicit", "none"])
async def test_each_tls_mode_with_auth(tls: Tls) -> None:
    async with open_case(tls) as case:
        await send(case.provider())
        [taken] = case.fake.received
        assert taken.fields["tls"] is (tls != "none")
        assert taken.fields["login"] == "mailgate"


async def test_auth_login_when_plain_is_not_offered() -> None:
    async with open_case(mechanisms=("LOGIN",)) as case:
        await send(case.provider())
        assert case.fake.received[0].fields["login"] == "mailgate"


async def test_no_auth_mechanism_in_common_is_an_auth_error() -> None:
    async with open_case(mechanisms=()) as case:
        error = await failure(case.provider())
        assert isinstance(error, ProviderAuthError) and case.requests() == 0


async def test_a_relay_wanting_auth_from_a_provider_without_credentials(relay: SmtpCase) -> None:
    error = await failure(relay.make(username=None))
    assert isinstance(error, ProviderAuthError) and error.status_code == 530


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_an_untrusted_certificate_is_a_safe_connection_failure(tls: Tls) -> None:
    async with open_case(tls) as case:
        error = await failure(case.make(ca_file=None))  # the system store knows no such CA
        assert isinstance(error, ProviderUnavailable) and not error.ambiguous
        assert "cannot connect" in error.detail and "CERTIFICATE_VERIFY_FAILED" in error.detail
        assert case.requests() == 0


async def test_starttls_missing_is_refused_not_skipped() -> None:
    async with open_case("none") as case:
        error = await failure(case.make(tls="starttls"))
        assert isinstance(error, ProviderAuthError) and "STARTTLS" in error.detail
        assert case.requests() == 0


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    settings = SmtpSettings(
        name="relay", type="smtp", host="127.0.0.1", ca_file=tmp_path / "missing.pem"
    )
    with pytest.raises(ConfigError, match="ca_file"):
        SmtpProvider(settings, timeout=1)


# --- replies -----------------------------------------------------------------

QUOTA = "454 4.7.0 Throttling failure: Daily message quota exceeded"


@pytest.mark.parametrize(
    ("stage", "reply", "error"),
    [
        (Stage.CONNECT, "554 5.7.1 No SMTP service for you", ProviderUnavailable),
        (Stage.EHLO, "421 4.3.2 Too busy, try later", ProviderUnavailable),
        (Stage.AUTH, "454 4.7.0 Temporary authentication failure", ProviderUnavailable),
        (Stage.AUTH, "534 5.7.9 Authentication mechanism is too weak", ProviderAuthError),
        (Stage.MAIL, "553 5.7.1 Sender address rejected: not owned by user", ProviderAuthError),
        (Stage.MAIL, "451 4.3.0 Local error in processing", ProviderUnavailable),
        (Stage.MAIL, QUOTA, ProviderThrottled),
        (Stage.RCPT, "550 5.7.1 Relaying denied", ProviderAuthError),
        (Stage.RCPT, "553 5.1.3 Bad recipient address syntax", MessageRejected),
        (Stage.RCPT, "452 4.5.3 Too many recipients", ProviderUnavailable),
        (Stage.RCPT, "552 5.5.3 Too many recipients", ProviderUnavailable),
        (Stage.RCPT, "550 5.2.2 Mailbox full", ProviderUnavailable),
        (Stage.RCPT, "550 4.2.1 Try again later", ProviderUnavailable),
        (Stage.DATA, "554 5.5.1 Error: no valid recipients", MessageRejected),
        (Stage.END_OF_DATA, "554 5.7.1 Message rejected as spam", MessageRejected),
        (Stage.END_OF_DATA, "552 5.3.4 Message too big for system", MessageRejected),
        (Stage.END_OF_DATA, "550 5.6.0 Malformed header", MessageRejected),
        (Stage.END_OF_DATA, "451 4.7.1 Greylisted, try again", ProviderUnavailable),
    ],
)
async def test_replies_and_enhanced_codes_map_to_classes(
    relay: SmtpCase, stage: Stage, reply: str, error: type[ProviderError]
) -> None:
    relay.fake.script(stage, reply)
    raised = await failure(relay.provider())
    assert type(raised) is error, raised
    assert raised.status_code == int(reply[:3]) and reply[4:] in raised.detail
    assert not (isinstance(raised, ProviderUnavailable) and raised.ambiguous)
    assert relay.taken() == []


async def test_a_daily_quota_pauses_the_provider_long(relay: SmtpCase) -> None:
    relay.fake.script(Stage.MAIL, QUOTA)
    raised = await failure(relay.provider())
    assert isinstance(raised, ProviderThrottled)
    assert raised.retry_after == MAX_RETRY_AFTER_SECONDS


def test_a_mailbox_over_quota_is_not_a_sending_quota() -> None:
    error = classify_reply("r", Phase.RCPT, 452, "4.2.2 Mailbox over quota")
    assert type(error) is ProviderUnavailable


async def test_421_closes_and_the_next_send_reconnects(relay: SmtpCase) -> None:
    relay.fake.script(Stage.MAIL, "421 4.3.2 Service not available", count=1)
    provider = relay.provider()
    with pytest.raises(ProviderUnavailable):
        await provider.send("msg_1", email())
    await provider.send("msg_2", email())
    await provider.close()
    assert relay.fake.connections == 2 and [v["mailgate_id"] for v in relay.taken()] == ["msg_2"]


# --- drops and silence -------------------------------------------------------


@pytest.mark.parametrize("stage", [Stage.MAIL, Stage.RCPT, Stage.DATA])
async def test_a_drop_before_the_data_is_safe(relay: SmtpCase, stage: Stage) -> None:
    relay.fake.script(stage, DROP)
    raised = await failure(relay.provider())
    assert isinstance(raised, ProviderUnavailable) and not raised.ambiguous
    assert "connection lost" in raised.detail


async def test_silence_before_the_data_is_a_safe_timeout(relay: SmtpCase) -> None:
    relay.fake.script(Stage.RCPT, HANG)
    raised = await failure(relay.make(timeout=relay.hang_timeout))
    assert isinstance(raised, ProviderUnavailable) and not raised.ambiguous
    assert "no answer within" in raised.detail and "RCPT" in raised.detail


async def test_no_greeting_is_a_connection_failure(relay: SmtpCase) -> None:
    relay.fake.script(Stage.CONNECT, HANG)
    raised = await failure(relay.make(timeout=0.2))
    assert isinstance(raised, ProviderUnavailable) and not raised.ambiguous
    assert "cannot connect" in raised.detail


# --- recipients --------------------------------------------------------------


async def test_one_refused_recipient_fails_the_whole_message(relay: SmtpCase) -> None:
    relay.fake.script(Stage.RCPT, "550 5.1.1 User unknown", only=("eve@example.org",))
    raised = await failure(relay.provider())
    assert isinstance(raised, MessageRejected)
    assert "RCPT TO <eve@example.org>: 550 5.1.1 User unknown" in raised.detail
    assert relay.taken() == [] and relay.requests() == 1


async def test_several_refused_recipients_are_all_named(relay: SmtpCase) -> None:
    relay.fake.script(Stage.RCPT, "550 5.1.1 User unknown")
    raised = await failure(relay.provider())
    assert isinstance(raised, MessageRejected) and raised.status_code == 550
    assert "<bob@example.org>" in raised.detail and "<eve@example.org>" in raised.detail


async def test_more_recipients_than_the_relay_takes_is_transient() -> None:
    async with open_case(max_recipients=1) as case:
        raised = await failure(case.provider())
        assert isinstance(raised, ProviderUnavailable) and "4.5.3" in raised.detail


async def test_one_recipient_refused_for_now_fails_the_message_for_now(relay: SmtpCase) -> None:
    relay.fake.script(Stage.RCPT, "450 4.2.1 Try later", only=("eve@example.org",))
    raised = await failure(relay.provider())
    assert isinstance(raised, ProviderUnavailable) and not raised.ambiguous


async def test_bcc_travels_in_the_envelope_only(relay: SmtpCase) -> None:
    await send(relay.provider(), email(bcc=(Address("dave@example.org", "Dave"),)))
    [taken] = relay.fake.received
    assert "dave@example.org" in taken.fields["rcpt_to"]
    assert "dave" not in taken.fields["raw"].lower()


async def test_a_recipient_listed_twice_is_sent_once(relay: SmtpCase) -> None:
    await send(relay.provider(), email(cc=(Address("BOB@example.org"),)))
    assert relay.fake.received[0].fields["rcpt_to"] == ["bob@example.org", "eve@example.org"]


async def test_non_ascii_addresses(relay: SmtpCase) -> None:
    idn = email(to=(Address("bob@bücher.example"),))
    await send(relay.provider(), idn)
    assert relay.fake.received[-1].fields["rcpt_to"] == ["bob@xn--bcher-kva.example"]
    assert relay.fake.received[-1].fields["smtputf8"] is False
    await send(relay.provider(), email(to=(Address("jörg@example.org", "Jörg"),)))
    taken = relay.fake.received[-1]
    assert taken.fields["smtputf8"] is True and taken.fields["rcpt_to"] == ["jörg@example.org"]
    assert view(taken)["to"] == [{"email": "jörg@example.org", "name": "Jörg"}]


async def test_a_non_ascii_local_part_needs_a_relay_with_smtputf8() -> None:
    async with open_case(smtputf8=False) as case:
        raised = await failure(case.provider(), email(to=(Address("jörg@example.org"),)))
        assert isinstance(raised, ProviderUnavailable) and "SMTPUTF8" in raised.detail
        assert case.requests() == 0


# --- the message -------------------------------------------------------------

LONG_URL = "https://example.com/unsubscribe/" + "a1b2c3" * 30


async def test_long_and_non_ascii_headers(relay: SmtpCase) -> None:
    headers = {
        "List-Unsubscribe": f"<{LONG_URL}>, <mailto:unsub@example.com>",
        "X-Campaign": " ".join(["autumn"] * 40),
        "X-Note": "Grüße aus Köln — ça va?",
        "X-Token": "t" * 990,  # no room to fold: encoded words are the only way under 998
    }
    subject = "Rechnung für " + "Übergrößen " * 12
    await send(relay.provider(), email(headers=headers, subject=subject))
    [taken] = relay.fake.received
    assert view(taken)["headers"] == headers and view(taken)["subject"] == subject
    head = taken.fields["raw"].split("\r\n\r\n")[0].split("\r\n")
    assert f"List-Unsubscribe: <{LONG_URL}>," in head  # a URL never becomes encoded words
    assert all(len(line) <= 78 for line in head if LONG_URL not in line and "ttt" not in line)
    assert all(len(line) <= 998 for line in head)
    assert taken.fields["raw"].isascii()  # RFC 2047 and MIME encodings, no 8-bit


async def test_a_text_line_longer_than_smtp_allows_is_encoded(relay: SmtpCase) -> None:
    long_line = "word " * 400
    await send(relay.provider(), email(text=long_line, html=f"<p>{long_line}</p>"))
    [taken] = relay.fake.received
    assert taken.fields["text"] == long_line
    assert max(len(line) for line in taken.fields["raw"].split("\r\n")) <= 998


async def test_attachment_content_type_parameters_are_kept(relay: SmtpCase) -> None:
    attachment = Attachment("a.txt", "text/plain; charset=utf-8", "aMOpbGxv")
    await send(relay.provider(), email(attachments=(attachment,)))
    assert 'Content-Type: text/plain; charset="utf-8"' in relay.fake.received[0].fields["raw"]


async def test_the_message_id_is_the_same_for_every_attempt(relay: SmtpCase) -> None:
    await send(relay.provider(), mid="msg_again")
    await send(relay.provider(), mid="msg_again")
    ids = [header(r, "message-id") for r in relay.fake.received]
    assert ids == [["<msg_again@example.com>"]] * 2


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("2.0.0 Ok: queued as 4BKZ8Y3dLzz9sWC", "4BKZ8Y3dLzz9sWC"),
        ("OK id=1kA2bC-0003Xy-Ab", "1kA2bC-0003Xy-Ab"),
        ("Ok 0100018c1a2b3c4d-5e6f7a8b-9c0d-1e2f-3a4b-5c6d7e8f9a0b-000000",
         "0100018c1a2b3c4d-5e6f7a8b-9c0d-1e2f-3a4b-5c6d7e8f9a0b-000000"),
        ("2.0.0 OK  1700000000 d9443c01a7336-1dd2e5f0asm1234.12 - gsmtp",
         "d9443c01a7336-1dd2e5f0asm1234.12"),
        ("2.0.0 s9AKZ7Y8012345 Message accepted for delivery", "s9AKZ7Y8012345"),
        ("2.0.0 Ok", None),
        ("Great success", None),
    ],
)  # fmt: skip
def test_queue_ids_from_common_relays(reply: str, queue_id: str | None) -> None:
    assert parse_queue_id(reply) == queue_id


async def test_without_a_queue_id_the_message_id_is_the_id(relay: SmtpCase) -> None:
    relay.fake.success_reply = "250 2.0.0 Great success"
    assert await send(relay.provider(), mid="msg_q") == "msg_q@example.com"


async def test_size_is_announced_and_a_too_big_message_refused_early() -> None:
    async with open_case(max_bytes=2000) as case:
        big = email(attachments=(Attachment("a.bin", "application/octet-stream", "A" * 4000),))
        raised = await failure(case.provider(), big)
        assert isinstance(raised, MessageRejected) and raised.status_code == 552
        assert case.requests() == 1 and case.taken() == []


# --- connections -------------------------------------------------------------


async def test_one_connection_serves_many_sends_and_close_quits_it(relay: SmtpCase) -> None:
    provider = relay.provider()
    for i in range(3):
        await provider.send(f"msg_{i}", email())
    assert relay.fake.connections == 1 and relay.fake.open_connections == 1
    await provider.close()
    await eventually(lambda: relay.fake.open_connections == 0)


async def test_connections_are_bounded(relay: SmtpCase) -> None:
    relay.fake.behaviour.latency = 0.05
    provider = relay.make(max_connections=2)
    await asyncio.gather(*(provider.send(f"msg_{i}", email()) for i in range(6)))
    await provider.close()
    assert relay.fake.peak_connections == 2 and len(relay.taken()) == 6


async def test_the_relays_limit_wins_over_the_workers_concurrency(relay: SmtpCase) -> None:
    relay.fake.behaviour.latency = 0.05
    provider = relay.make(max_connections=200, relay_limit=3)  # concurrency 200, relay caps 3
    await asyncio.gather(*(provider.send(f"msg_{i}", email()) for i in range(9)))
    await provider.close()
    assert relay.fake.peak_connections == 3 and len(relay.taken()) == 9


async def test_close_during_a_send_closes_that_connection_too(relay: SmtpCase) -> None:
    relay.fake.behaviour.latency = 0.5
    provider = relay.provider()
    sending = asyncio.create_task(provider.send("msg_1", email()))
    await eventually(lambda: bool(relay.fake.request_times))  # MAIL FROM came: mid-send
    await provider.close()
    await sending
    await eventually(lambda: relay.fake.open_connections == 0)
    assert len(relay.taken()) == 1


async def test_drills_over_the_fakes_behaviour(relay: SmtpCase) -> None:
    relay.fake.behaviour.update({"status": 421, "fail_count": 1})
    provider = relay.provider(timeout=relay.hang_timeout)  # it will hang below
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", email())
    assert info.value.status_code == 421 and "4.3.2" in info.value.detail
    assert str(info.value).startswith("relay: SMTP 421: ")
    await provider.send("msg_2", email())
    relay.fake.behaviour.hang = True
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_3", email())
    await provider.close()
    assert info.value.ambiguous and [v["mailgate_id"] for v in relay.taken()] == ["msg_2"]


async def test_an_idle_connection_the_relay_dropped_is_replaced(relay: SmtpCase) -> None:
    provider = relay.provider()
    await provider.send("msg_1", email())
    relay.fake.script(Stage.MAIL, DROP, count=1)  # as if it had timed the idle one out
    await provider.send("msg_2", email())
    await provider.close()
    assert relay.fake.connections == 2
    assert [v["mailgate_id"] for v in relay.taken()] == ["msg_1", "msg_2"]


async def test_probe_logs_in_and_keeps_the_connection_for_a_send(relay: SmtpCase) -> None:
    provider = relay.provider()
    await provider.probe()
    await provider.send("msg_1", email())
    await provider.close()
    assert relay.fake.connections == 1 and relay.requests() == 1


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda case: case.provider(good_credentials=False), ProviderAuthError),
        (lambda case: case.unreachable(), ProviderUnavailable),
    ],
)
async def test_probe_fails_as_a_send_would(
    relay: SmtpCase, make: Callable[[SmtpCase], SmtpProvider], error: type[ProviderError]
) -> None:
    provider = make(relay)
    with pytest.raises(error):
        await provider.probe()
    await provider.close()
    assert relay.requests() == 0


def test_mailgate_never_needs_aiosmtpd_to_import() -> None:
    code = (
        "import sys, mailgate.providers.smtp, mailgate.providers.fakes.smtp; "
        "assert 'aiosmtpd' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # the fake loads it when it starts


def test_details_name_the_phase_and_the_reply() -> None:
    error = classify_reply("r", Phase.AUTH, 535, "5.7.8 Authentication\ncredentials invalid")
    assert isinstance(error, ProviderAuthError)
    assert error.detail == "AUTH: 535 5.7.8 Authentication / credentials invalid"
