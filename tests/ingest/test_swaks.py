"""SMTP submission driven by swaks, an SMTP client mailgate did not write, against the
server in process (SQLite, and PostgreSQL when configured).

swaks runs as a subprocess started with asyncio, so the server keeps serving
from this test's event loop. Each case asserts swaks' documented exit code
(`swaks --help`, "EXIT CODES"), the server's reply as swaks printed it, and
what the store kept. swaks comes from Debian (`apt-get install swaks`;
`scripts/install-tools`, which `.ci/run` calls, installs it when missing).
Without it these tests are skipped, except under `CI=true`, where that is a
failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr
from pathlib import Path

import pytest

from mailgate.ingest import SubmissionServer
from mailgate.store import Store
from tests.ingest.conftest import Certificate, RunServer, stored_email
from tests.ingest.test_mime import PDF, PNG

# swaks' exit codes for where a session stopped.
OK, MAIL_REFUSED, DATA_REFUSED, AUTH_FAILED, TLS_FAILED = 0, 23, 26, 28, 29
# swaks marks a reply `<- ` (`<~ ` inside TLS), an unexpected one `<**` (`<~*`).
QUEUED = re.compile(r"^<[-~]  250 2\.0\.0 queued as (msg_[0-9A-Z]{26})$", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    """One swaks run: its exit code and its transcript (stdout and stderr)."""

    code: int
    transcript: str

    @property
    def message_id(self) -> str:
        match = QUEUED.search(self.transcript)
        assert match, self.transcript
        return match[1]

    def refused_with(self, reply: str) -> bool:
        """Whether swaks printed this reply as the one it did not expect."""
        return any(f"\n{mark} {reply}\n" in f"\n{self.transcript}\n" for mark in ("<**", "<~*"))


@dataclass(frozen=True)
class Swaks:
    path: str

    async def __call__(self, server: SubmissionServer, *args: str) -> Run:
        """`swaks ARGS` against the server, with a fixed EHLO name and a time limit."""
        proc = await asyncio.create_subprocess_exec(
            self.path, "--server", server.host, "--port", str(server.port),
            "--helo", "client.test", "--timeout", "20", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode("utf-8", "replace"))


@pytest.fixture(scope="session")
def swaks() -> Swaks:
    path = shutil.which("swaks")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("swaks is missing: apt-get install swaks (scripts/install-tools)")
        pytest.skip("swaks is not installed (apt-get install swaks)")
    return Swaks(path)


def login(mechanism: str, key: str) -> tuple[str, ...]:
    return ("--auth", mechanism, "--auth-user", "app", "--auth-password", key)


SIMPLE = (
    "--from", "ada@example.com", "--to", "bob@example.org",
    "--header", "Subject: Hello from swaks", "--body", "Hi Bob",
)  # fmt: skip


# --- AUTH ----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_a_message_is_queued_after_auth(
    server: SubmissionServer, store: Store, send_key: str, swaks: Swaks, mechanism: str
) -> None:
    run = await swaks(server, *login(mechanism, send_key), *SIMPLE)
    assert run.code == OK, run.transcript
    assert f" -> AUTH {mechanism}" in run.transcript
    assert "<-  235 2.7.0 Authentication successful" in run.transcript
    view = await store.get_message("default", run.message_id)
    assert view.status == "queued"
    email = await stored_email(store, run.message_id)
    assert email.sender.email == "ada@example.com"
    assert [a.email for a in email.to] == ["bob@example.org"]
    assert email.subject == "Hello from swaks"
    # swaks ends its body with empty lines of its own; they are the message's.
    assert email.text is not None and email.text.rstrip("\n") == "Hi Bob"


async def test_a_bad_key_is_535(server: SubmissionServer, store: Store, swaks: Swaks) -> None:
    run = await swaks(server, *login("PLAIN", "mg_not-a-key"), *SIMPLE)
    assert run.code == AUTH_FAILED, run.transcript
    assert run.refused_with(
        "535 5.7.8 Authentication credentials invalid: unknown or revoked API key"
    )
    assert " -> MAIL FROM" not in run.transcript
    assert await store.list_messages("default", limit=100) == []


async def test_mail_without_auth_is_530(
    server: SubmissionServer, store: Store, swaks: Swaks
) -> None:
    run = await swaks(server, *SIMPLE)
    assert run.code == MAIL_REFUSED, run.transcript
    assert run.refused_with("530 5.7.0 Authentication required")
    assert await store.list_messages("default", limit=100) == []


# --- STARTTLS ------------------------------------------------------------------------------


async def test_starttls_verified_against_the_certificate_then_auth(
    run_server: RunServer, certificate: Certificate, store: Store, send_key: str, swaks: Swaks
) -> None:
    async with run_server(
        tls_cert_file=str(certificate.cert), tls_key_file=str(certificate.key)
    ) as server:
        # swaks checks the server's chain against the test certificate, its only CA
        # (swaks 20201014 checks the chain only, not that the name matches the host).
        tls = ("--tls", "--tls-verify", "--tls-ca-path", str(certificate.cert))
        run = await swaks(server, *tls, *login("PLAIN", send_key), *SIMPLE)
        assert run.code == OK, run.transcript
        assert "=== TLS started" in run.transcript
        assert " ~> AUTH PLAIN" in run.transcript  # sent inside TLS
        assert (await store.get_message("default", run.message_id)).status == "queued"

        # The verification is real: against the system's CAs the certificate fails.
        unverified = await swaks(
            server, "--tls", "--tls-verify", *login("PLAIN", send_key), *SIMPLE
        )
        assert unverified.code == TLS_FAILED, unverified.transcript
        assert "certificate verify failed" in unverified.transcript
        assert " -> AUTH" not in unverified.transcript

        # Without STARTTLS, AUTH is not offered (require_tls), so swaks cannot log in.
        clear = await swaks(server, *login("PLAIN", send_key), *SIMPLE)
        assert clear.code == AUTH_FAILED, clear.transcript
        assert "250-AUTH" not in clear.transcript
    assert len(await store.list_messages("default", limit=100)) == 1


# --- SIZE ------------------------------------------------------------------------------


async def test_a_message_over_the_size_limit_is_552(
    run_server: RunServer, store: Store, send_key: str, swaks: Swaks, tmp_path: Path
) -> None:
    blob = tmp_path / "big.bin"
    blob.write_bytes(bytes(range(256)) * 32)  # 8 KiB, over 10 KiB once in base64
    async with run_server(max_message_bytes=4096) as server:
        run = await swaks(server, *login("PLAIN", send_key), *SIMPLE, "--attach", f"@{blob}")
    assert "<-  250-SIZE 4096" in run.transcript
    # swaks declares no SIZE in MAIL FROM, so the refusal comes after the data.
    assert run.code == DATA_REFUSED, run.transcript
    assert run.refused_with("552 5.3.4 Message too big: the limit is 4096 bytes")
    assert await store.list_messages("default", limit=100) == []


# --- what a message keeps ----------------------------------------------------------------

SUBJECT = "Grüße aus Berlin 🌍"
NAME = "Zoë Ünïcode"
TEXT = "Hallo Jürgen,\nder Bericht hängt an. 🌍"
HTML = "<p>Hallo Jürgen, der Bericht hängt an.</p>"


@pytest.mark.parametrize("spelling", ["encoded words", "raw UTF-8"])
async def test_a_multipart_message_with_attachments_and_non_ascii_headers(
    server: SubmissionServer,
    store: Store,
    send_key: str,
    swaks: Swaks,
    tmp_path: Path,
    spelling: str,
) -> None:
    if spelling == "encoded words":  # RFC 2047, as the email package writes them
        subject = Header(SUBJECT, "utf-8").encode()
        sender = formataddr((NAME, "zoe@example.com"))
        assert subject.startswith("=?utf-8?") and sender.startswith("=?utf-8?")
    else:  # RFC 6532: UTF-8 as it is, which swaks passes through untouched
        subject, sender = SUBJECT, f"{NAME} <zoe@example.com>"
    report, logo = tmp_path / "report.pdf", tmp_path / "logo.png"
    report.write_bytes(PDF)
    logo.write_bytes(PNG)
    run = await swaks(
        server, *login("LOGIN", send_key),
        "--from", "zoe@example.com", "--to", "juergen@example.org",
        "--header", f"Subject: {subject}",
        "--header", f"From: {sender}",
        "--header", "To: Jürgen <juergen@example.org>",
        # text and HTML as multipart/alternative (swaks writes the text as 8-bit
        # UTF-8 without a charset, the HTML in base64), then two attachments.
        "--attach-type", "text/plain", "--attach-body", TEXT.replace("\n", "\\n"),
        "--attach-type", "text/html", "--attach-body", HTML,
        "--attach-type", "application/pdf", "--attach-name", "Bericht März.pdf",
        "--attach", f"@{report}",
        "--attach-type", "image/png", "--attach", f"@{logo}",
    )  # fmt: skip
    assert run.code == OK, run.transcript
    email = await stored_email(store, run.message_id)
    assert email.subject == SUBJECT
    assert (email.sender.email, email.sender.name) == ("zoe@example.com", NAME)
    assert [(a.email, a.name) for a in email.to] == [("juergen@example.org", "Jürgen")]
    assert email.text == TEXT
    assert email.html == HTML
    assert [(a.filename, a.content_type, a.data()) for a in email.attachments] == [
        ("Bericht März.pdf", "application/pdf", PDF),
        ("logo.png", "image/png", PNG),
    ]
    assert email.bcc == ()


async def test_envelope_only_recipients_become_bcc_with_pipelining(
    server: SubmissionServer, store: Store, send_key: str, swaks: Swaks
) -> None:
    run = await swaks(
        server, *login("PLAIN", send_key), "--pipeline",
        "--from", "ada@example.com",
        "--to", "bob@example.org,carol@example.org,eve@example.com",
        "--header", "To: Bob <bob@example.org>",
        "--header", "Cc: carol@example.org",
        "--header", "Subject: Minutes", "--body", "Attached.",
    )  # fmt: skip
    assert run.code == OK, run.transcript
    assert "<-  250-PIPELINING" in run.transcript
    # swaks sent MAIL, the three RCPTs and DATA before reading a reply to any of them.
    lines = run.transcript.splitlines()
    assert lines.index(" -> DATA") < lines.index("<-  250 2.1.0 OK")
    email = await stored_email(store, run.message_id)
    assert [(a.email, a.name) for a in email.to] == [("bob@example.org", "Bob")]
    assert [a.email for a in email.cc] == ["carol@example.org"]
    assert [a.email for a in email.bcc] == ["eve@example.com"]


async def test_a_to_address_outside_the_envelope_is_refused(
    server: SubmissionServer, store: Store, send_key: str, swaks: Swaks
) -> None:
    run = await swaks(
        server, *login("PLAIN", send_key), *SIMPLE, "--header", "To: list@example.org"
    )
    assert run.code == DATA_REFUSED, run.transcript
    assert run.refused_with(
        "550 5.6.0 to: list@example.org is not one of the RCPT TO recipients; mailgate "
        "delivers to every To and Cc address, so each must also be an envelope recipient"
    )
    assert await store.list_messages("default", limit=100) == []
