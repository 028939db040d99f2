"""SMTP submission against a real aiosmtpd server in process, on SQLite and PostgreSQL.

The clients are aiosmtplib and a raw dialogue over a socket (for replies a
library would hide, and for pipelining).
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from mailgate.api.accept import Acceptor
from mailgate.config import Settings, SmtpServerSettings, load_settings
from mailgate.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    RequestError,
    SenderNotAllowed,
    TenantDisabled,
    Unauthorized,
)
from mailgate.ingest import SubmissionServer
from mailgate.ingest.smtp import bind, reply_for
from mailgate.metrics import Metrics
from mailgate.store import Scope, Store
from mailgate.store.engine import sqlite_path
from tests.helpers import eventually, tenant
from tests.ingest.conftest import Certificate, RunServer, dialogue, plain, stored_email
from tests.ingest.test_mime import PDF, PNG, rich_message

QUEUED = re.compile(r"^2\.0\.0 queued as (msg_[0-9A-Z]{26})$")


def simple(to: str = "bob@example.org", sender: str = "ada@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Hello"
    msg.set_content("Hi Bob")
    return msg


@asynccontextmanager
async def client(server: SubmissionServer) -> AsyncIterator[aiosmtplib.SMTP]:
    """aiosmtplib, connected and past EHLO (its AUTH calls do not send one themselves)."""
    smtp = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, timeout=10)
    async with smtp:
        await smtp.ehlo()
        yield smtp


async def submit(server: SubmissionServer, key: str, *messages: EmailMessage) -> list[str]:
    """Send each message in one session; the ids the server queued them as."""
    ids = []
    async with client(server) as smtp:
        await smtp.auth_plain("anyone", key)
        for msg in messages:
            _, reply = await smtp.send_message(msg)
            match = QUEUED.match(reply)
            assert match, reply
            ids.append(match[1])
    return ids


# --- AUTH ----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_with_a_send_key_then_the_message_is_queued(
    server: SubmissionServer, store: Store, send_key: str, mechanism: str
) -> None:
    async with client(server) as smtp:
        assert "auth" in smtp.esmtp_extensions
        login = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        response = await login("any user name", send_key)
        assert (response.code, response.message) == (235, "2.7.0 Authentication successful")
        _, reply = await smtp.send_message(simple())
    match = QUEUED.match(reply)
    assert match
    view = await store.get_message("default", match[1])
    assert view.status == "queued"
    assert view.envelope["subject"] == "Hello"
    email = await stored_email(store, match[1])
    assert email.text == "Hi Bob" and [a.email for a in email.to] == ["bob@example.org"]


async def test_auth_plain_after_a_challenge_and_login_with_an_initial_response(
    server: SubmissionServer, send_key: str
) -> None:
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        assert await talk.command("AUTH PLAIN") == (334, "")
        assert (await talk.command(plain("u", send_key)))[0] == 235
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        user = base64.b64encode(b"someone").decode()
        code, challenge = await talk.command(f"AUTH LOGIN {user}")
        assert (code, base64.b64decode(challenge)) == (334, b"Password:")
        assert (await talk.command(base64.b64encode(send_key.encode()).decode()))[0] == 235


async def test_a_bad_key_is_535(server: SubmissionServer, store: Store) -> None:
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        code, text = await talk.command(f"AUTH PLAIN {plain('u', 'mg_not-a-key')}")
        assert code == 535 and text.startswith("5.7.8 Authentication credentials invalid")
        # Still not authenticated: mail is refused.
        assert (await talk.command("MAIL FROM:<ada@example.com>"))[0] == 530
    async with client(server) as smtp:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.auth_login("u", "mg_wrong")
        assert refused.value.code == 535


async def test_a_key_without_send_or_of_a_disabled_tenant_is_refused_with_the_reason(
    server: SubmissionServer, store: Store
) -> None:
    _, reader = await store.create_key("reader", tenant_id="default", scopes=[Scope.READ])
    stopped = await store.create_tenant(tenant(name="stopped"))
    _, sender = await store.create_key("s", tenant_id=stopped.id, scopes=[Scope.SEND])
    await store.update_tenant(stopped.id, enabled=False)
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        code, text = await talk.command(f"AUTH PLAIN {plain('u', reader)}")
        assert (code, text) == (535, "5.7.8 this key lacks the 'send' scope (it has: read)")
        code, text = await talk.command(f"AUTH PLAIN {plain('u', sender)}")
        assert (code, text) == (535, f"5.7.8 tenant {stopped.id} is disabled")


async def test_mail_without_auth_is_530(server: SubmissionServer, store: Store) -> None:
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        assert await talk.command("MAIL FROM:<ada@example.com>") == (
            530,
            "5.7.0 Authentication required",
        )
        assert (await talk.command("RCPT TO:<bob@example.org>"))[0] == 503
        assert (await talk.command("DATA"))[0] == 503
    assert await store.list_messages("default", limit=100) == []


async def test_malformed_auth_answers_501(server: SubmissionServer, send_key: str) -> None:
    async with dialogue(server) as talk:
        await talk.command("EHLO client.test")
        assert (await talk.command("AUTH PLAIN not*base64"))[0] == 501
        assert (await talk.command("AUTH PLAIN " + plain("u", "k")[:-4] + "AAAA"))[0] == 501
        assert (await talk.command("AUTH PLAIN"))[0] == 334
        assert (await talk.command("*"))[0] == 501  # the client gave up
        assert (await talk.command("AUTH CRAM-MD5"))[0] == 504
        assert (await talk.command(f"AUTH PLAIN {plain('u', send_key)}"))[0] == 235


# --- TLS -------------------------------------------------------------------------------


async def test_starttls_with_the_configured_certificate(
    run_server: RunServer, certificate: Certificate, store: Store, send_key: str
) -> None:
    async with run_server(
        tls_cert_file=str(certificate.cert), tls_key_file=str(certificate.key)
    ) as server:
        async with dialogue(server) as talk:
            _, extensions = await talk.command("EHLO client.test")
            assert "STARTTLS" in extensions.splitlines()
            assert not any(line.startswith("AUTH") for line in extensions.splitlines())
        smtp = aiosmtplib.SMTP(
            hostname=server.host, port=server.port, tls_context=certificate.client_context()
        )
        async with smtp:  # aiosmtplib upgrades with STARTTLS when the server offers it
            assert smtp.get_transport_info("sslcontext") is not None
            await smtp.ehlo()
            assert "auth" in smtp.esmtp_extensions and "starttls" not in smtp.esmtp_extensions
            await smtp.auth_plain("u", send_key)
            _, reply = await smtp.send_message(simple())
        match = QUEUED.match(reply)
        assert match and (await store.get_message("default", match[1])).status == "queued"


async def test_auth_before_starttls_is_refused_when_tls_is_required(
    run_server: RunServer, certificate: Certificate, send_key: str
) -> None:
    async with run_server(
        tls_cert_file=str(certificate.cert), tls_key_file=str(certificate.key)
    ) as server:
        async with dialogue(server) as talk:
            await talk.command("EHLO client.test")
            assert await talk.command(f"AUTH PLAIN {plain('u', send_key)}") == (
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            )
            assert (await talk.command("MAIL FROM:<ada@example.com>"))[0] == 530


async def test_require_tls_false_allows_auth_in_clear(
    run_server: RunServer, certificate: Certificate, send_key: str
) -> None:
    async with run_server(
        tls_cert_file=str(certificate.cert),
        tls_key_file=str(certificate.key),
        require_tls=False,
    ) as server:
        async with dialogue(server) as talk:
            _, extensions = await talk.command("EHLO client.test")
            assert "STARTTLS" in extensions and "AUTH LOGIN PLAIN" in extensions
            assert (await talk.command(f"AUTH PLAIN {plain('u', send_key)}"))[0] == 235


# --- SIZE ------------------------------------------------------------------------------


async def test_size_is_advertised_and_enforced(
    run_server: RunServer, store: Store, send_key: str
) -> None:
    async with run_server(max_message_bytes=4096) as server:
        async with dialogue(server) as talk:
            _, extensions = await talk.command("EHLO client.test")
            assert "SIZE 4096" in extensions.splitlines()
            await talk.command(f"AUTH PLAIN {plain('u', send_key)}")
            # Declared too big in MAIL FROM.
            assert await talk.command("MAIL FROM:<ada@example.com> SIZE=5000") == (
                552,
                "5.3.4 Message too big: the limit is 4096 bytes",
            )
            # Not declared, and too big after DATA.
            assert (await talk.command("MAIL FROM:<ada@example.com>"))[0] == 250
            assert (await talk.command("RCPT TO:<bob@example.org>"))[0] == 250
            assert (await talk.command("DATA"))[0] == 354
            body = simple().as_bytes().replace(b"\n", b"\r\n") + b"x" * 70 + b"\r\n"
            await talk.send(body * 80, ".")
            assert await talk.reply() == (552, "5.3.4 Message too big: the limit is 4096 bytes")
        async with client(server) as smtp:
            await smtp.auth_plain("u", send_key)
            with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
                big = simple()
                big.add_attachment(b"\0" * 8000, maintype="application", subtype="octet-stream")
                await smtp.send_message(big)
            assert refused.value.code == 552
    assert await store.list_messages("default", limit=100) == []


# --- what a message keeps ---------------------------------------------------------------


async def test_a_multipart_message_is_stored_with_its_parts_and_headers(
    server: SubmissionServer, store: Store, send_key: str
) -> None:
    msg = rich_message()
    async with client(server) as smtp:
        await smtp.auth_login("u", send_key)
        _, reply = await smtp.send_message(
            msg,
            recipients=[
                "bob@example.org",
                "carol@example.org",
                "dan@example.net",
                "eve@example.com",
            ],
        )
    match = QUEUED.match(reply)
    assert match
    email = await stored_email(store, match[1])
    assert (email.sender.email, email.sender.name) == ("ada@example.com", "Ada Lovelace")
    assert [a.email for a in email.to] == ["bob@example.org", "carol@example.org"]
    assert [a.email for a in email.cc] == ["dan@example.net"]
    assert [a.email for a in email.bcc] == ["eve@example.com"]  # envelope only
    assert [a.email for a in email.reply_to] == ["replies@example.com"]
    assert email.subject == "Quarterly report"
    assert email.text == "Hello Bob,\nthe report is attached."
    assert email.html is not None and "<p>Hello Bob</p>" in email.html
    assert [(a.filename, a.content_type, a.data()) for a in email.attachments] == [
        ("logo.png", "image/png", PNG),
        ("report.pdf", "application/pdf", PDF),
    ]
    assert dict(email.headers) == {
        "X-Campaign": "q3",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    assert email.tags == ("reports", "q3, 2024")
    assert dict(email.metadata) == {"account": "acct-42"}


async def test_cc_and_envelope_only_recipients(
    server: SubmissionServer, store: Store, send_key: str
) -> None:
    msg = simple()
    msg["Cc"] = "Carol <carol@example.org>"
    async with client(server) as smtp:
        await smtp.auth_plain("u", send_key)
        _, reply = await smtp.send_message(
            msg, recipients=["bob@example.org", "carol@example.org", "x@example.net"]
        )
    match = QUEUED.match(reply)
    assert match
    view = await store.get_message("default", match[1])
    assert view.envelope["cc"] == [{"email": "carol@example.org", "name": "Carol"}]
    assert view.envelope["bcc"] == [{"email": "x@example.net"}]


# --- refusals ---------------------------------------------------------------------------


async def test_a_sender_outside_the_tenants_domains_is_refused_with_the_reason(
    server: SubmissionServer, store: Store
) -> None:
    shop = await store.create_tenant(tenant(name="shop", sender_domains=("shop.example",)))
    _, key = await store.create_key("shop", tenant_id=shop.id, scopes=[Scope.SEND])
    async with client(server) as smtp:
        await smtp.auth_plain("u", key)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.send_message(simple(sender="ada@example.com"))
        assert refused.value.code == 550
        assert refused.value.message == (
            "5.7.1 from: ada@example.com is not in this tenant's sender domains (shop.example)"
        )
        # The session goes on: a good sender is accepted next.
        _, reply = await smtp.send_message(simple(sender="orders@shop.example"))
        assert QUEUED.match(reply)
    assert len(await store.list_messages(shop.id, limit=100)) == 1


async def test_invalid_messages_are_refused_with_the_accept_paths_reason(
    server: SubmissionServer, store: Store, send_key: str
) -> None:
    no_subject = simple()
    del no_subject["Subject"]
    bad_header = simple()
    bad_header["X-Long"] = "x" * 1200
    cases = [
        (no_subject, ["bob@example.org"], "5.6.0 subject: this field is required"),
        (simple(), ["carol@example.org"], "5.6.0 to: bob@example.org is not one of the RCPT TO"),
        (bad_header, ["bob@example.org"], "5.6.0 headers.X-Long: String should have at most 998"),
    ]
    async with client(server) as smtp:
        await smtp.auth_plain("u", send_key)
        for msg, recipients, reason in cases:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await smtp.send_message(msg, recipients=recipients)
            assert refused.value.code == 550
            assert refused.value.message.startswith(reason), refused.value.message
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as bad:
            await smtp.sendmail("ada@example.com", ["not an address"], b"Subject: x\r\n\r\nx\r\n")
        assert bad.value.recipients[0].code == 553
    assert await store.list_messages("default", limit=100) == []


async def test_over_the_daily_quota_is_a_temporary_refusal(
    server: SubmissionServer, store: Store
) -> None:
    small = await store.create_tenant(tenant(name="small", daily_quota=1))
    _, key = await store.create_key("small", tenant_id=small.id, scopes=[Scope.SEND])
    async with client(server) as smtp:
        await smtp.auth_plain("u", key)
        await smtp.send_message(simple())
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.send_message(simple())
        assert refused.value.code == 451
        assert refused.value.message.startswith("4.7.0 ")


async def test_over_the_tenants_rate_limit_is_a_temporary_refusal(
    server: SubmissionServer, store: Store
) -> None:
    slow = await store.create_tenant(tenant(name="slow", rate_limit="1/min"))
    _, key = await store.create_key("slow", tenant_id=slow.id, scopes=[Scope.SEND])
    async with client(server) as smtp:
        await smtp.auth_plain("u", key)
        await smtp.send_message(simple())
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.send_message(simple())
        assert refused.value.code == 451
        assert refused.value.message.startswith("4.7.0 over the tenant's rate limit of 1/min")


async def test_a_key_revoked_during_a_session_stops_it(
    server: SubmissionServer, store: Store, send_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session reads its key again once the API's key cache time has passed; zero
    # here, so the test need not wait five seconds.
    monkeypatch.setattr("mailgate.api.auth.CACHE_SECONDS", 0.0)
    key = (await store.find_key(send_key) or pytest.fail("no key"))[0]
    async with client(server) as smtp:
        await smtp.auth_plain("u", send_key)
        await smtp.send_message(simple())
        await store.revoke_key(key.id, tenant_id="default")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.send_message(simple())
        assert refused.value.code == 535
        assert "revoked" in refused.value.message
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as again:
            await smtp.send_message(simple())
        assert again.value.code == 530
    assert len(await store.list_messages("default", limit=100)) == 1


async def test_a_store_that_cannot_commit_answers_451(
    server: SubmissionServer, store: Store, send_key: str, database_url: str
) -> None:
    path = sqlite_path(database_url)
    if path is None:
        pytest.skip("holding the database lock from outside is a SQLite drill")
    async with client(server) as smtp:
        await smtp.auth_plain("u", send_key)
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await smtp.send_message(simple())
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert refused.value.code == 451
        assert refused.value.message == "4.3.0 The store is unavailable; try again later"
        assert await store.list_messages("default", limit=100) == []
        _, reply = await smtp.send_message(simple())  # and once the store is back
        assert QUEUED.match(reply)


async def test_stopping_lets_a_message_being_accepted_finish(
    run_server: RunServer, store: Store, send_key: str, database_url: str
) -> None:
    path = sqlite_path(database_url)
    if path is None:
        pytest.skip("holding the database lock from outside is a SQLite drill")
    async with run_server() as server, client(server) as smtp:
        await smtp.auth_plain("u", send_key)
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")  # the accept waits for the lock
        sending = asyncio.create_task(smtp.send_message(simple()))
        await eventually(lambda: bool(server.handler.submissions))
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the accept
        blocker.execute("ROLLBACK")
        blocker.close()
        _, reply = await sending
        await stopping
    match = QUEUED.match(reply)
    assert match and (await store.get_message("default", match[1])).status == "queued"


async def test_auth_while_the_store_is_down_is_a_temporary_failure(metrics: Metrics) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    url = f"postgresql://mailgate@127.0.0.1:{port}/mailgate"
    store = Store(Settings(database={"url": url}).database)
    settings = SmtpServerSettings(enabled=True, port=0)
    server = SubmissionServer(settings, store, Acceptor(store, metrics, []), metrics)
    await server.start()
    try:
        async with dialogue(server) as talk:
            await talk.command("EHLO client.test")
            code, text = await talk.command(f"AUTH PLAIN {plain('u', 'mg_whatever')}")
            assert (code, text.split()[0]) == (454, "4.7.0")
    finally:
        await server.stop()
        await store.close()


# --- sessions ---------------------------------------------------------------------------


async def test_pipelined_commands_are_answered_in_order(
    server: SubmissionServer, store: Store, send_key: str
) -> None:
    async with dialogue(server) as talk:
        _, extensions = await talk.command("EHLO client.test")
        assert "PIPELINING" in extensions.splitlines()
        assert (await talk.command(f"AUTH PLAIN {plain('u', send_key)}"))[0] == 235
        ids = []
        for n in range(2):
            await talk.send(
                "MAIL FROM:<ada@example.com>",
                "RCPT TO:<bob@example.org>",
                "RCPT TO:<carol@example.org>",
                "DATA",
            )
            replies = [await talk.reply() for _ in range(4)]
            assert [code for code, _ in replies] == [250, 250, 250, 354]
            body = f"From: ada@example.com\r\nTo: bob@example.org\r\nSubject: n{n}\r\n\r\n.hi\r\n"
            await talk.send(body.replace("\r\n.hi", "\r\n..hi").encode(), ".")
            code, text = await talk.reply()
            assert code == 250, text
            ids.append(text.rsplit(" ", 1)[1])
        assert await talk.command("QUIT") == (221, "Bye")
    for n, message_id in enumerate(ids):
        email = await stored_email(store, message_id)
        assert email.subject == f"n{n}"
        assert email.text == ".hi"  # the dot-stuffing undone
        assert [a.email for a in email.bcc] == ["carol@example.org"]


async def test_several_messages_in_one_session(
    server: SubmissionServer, store: Store, send_key: str
) -> None:
    ids = await submit(server, send_key, *(simple(to=f"r{i}@example.org") for i in range(5)))
    assert len(set(ids)) == 5
    stored = {
        v.id: v.envelope["to"][0]["email"] for v in await store.list_messages("default", limit=100)
    }
    assert stored == {message_id: f"r{i}@example.org" for i, message_id in enumerate(ids)}


# --- replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (PayloadTooLarge("body too big", field="html"), "552 5.3.4 html: body too big"),
        (RateLimited("over the rate limit", retry_after=3), "451 4.7.0 over the rate limit; try "),
        (QuotaExceeded("over the daily quota", retry_after=9), "451 4.7.0 over the daily quota; "),
        (Unauthorized("unknown key"), "535 5.7.8 unknown key"),
        (TenantDisabled("tenant t is disabled", field="tenant"), "550 5.7.1 tenant t is disabled"),
        (SenderNotAllowed("from: x@y.z is not", field="from"), "550 5.7.1 from: x@y.z is not"),
        (InvalidRequest("give text or html", field="text"), "550 5.6.0 text: give text or html"),
        (Conflict("a conflict"), "554 5.6.0 a conflict"),
    ],
)
def test_each_refusal_has_its_reply(error: RequestError, reply: str) -> None:
    assert reply_for(error).startswith(reply)


def test_a_reply_is_one_line_of_ascii() -> None:
    reply = reply_for(InvalidRequest("to: jürgen@exämple.org\r\nis bad " + "x" * 600))
    assert reply.startswith("550 5.6.0 to: j\\xfcrgen@ex\\xe4mple.org is bad xxx")
    assert reply.isascii() and "\n" not in reply and len(reply) < 512


# --- configuration ----------------------------------------------------------------------


def test_the_section_loads_from_toml_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text("[smtp_server]\nenabled = true\nport = 587\nmax_message_bytes = 1048576\n")
    smtp = load_settings(config, environ={}).smtp_server
    assert (smtp.enabled, smtp.host, smtp.port, smtp.require_tls) == (True, "127.0.0.1", 587, True)
    assert smtp.max_message_bytes == 1048576
    config.write_text("[smtp_server]\nenable = true\n")
    with pytest.raises(ConfigError, match=r"smtp_server\.enable: unknown key"):
        load_settings(config, environ={})
    config.write_text('[smtp_server]\ntls_key_file = "/etc/key.pem"\n')
    with pytest.raises(ConfigError, match="MAILGATE_SMTP_SERVER__TLS_KEY_FILE"):
        load_settings(config, environ={})


def test_an_unreadable_certificate_stops_the_start(store: Store, metrics: Metrics) -> None:
    settings = SmtpServerSettings(enabled=True, tls_cert_file="/nonexistent/cert.pem")
    with pytest.raises(ConfigError, match=r"smtp_server\.tls_cert_file"):
        SubmissionServer(settings, store, Acceptor(store, metrics, []), metrics)


def test_a_taken_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="MAILGATE_SMTP_SERVER__PORT"):
            bind(SmtpServerSettings(enabled=True, port=port))
