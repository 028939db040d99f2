"""The SMTP relay's case for the shared provider tests: STARTTLS and AUTH, as relays want.

The fake is a real aiosmtpd server on loopback with a self-signed certificate
made by `openssl` for the run (the `cryptography` package is not a
dependency), so TLS is negotiated and verified for real.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from mailgate.config import SmtpSettings
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.smtp import DROP, HANG, FakeSmtp, Stage
from mailgate.providers.smtp import SmtpProvider
from tests.providers.support import TIMEOUT, WRONG_SECRET, Failure, ProviderCase, View, addresses

USERNAME = "mailgate"
PASSWORD = "relay-password"
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
     "content-type", "content-transfer-encoding"}
)  # fmt: skip
_META = "x-mailgate-meta-"

Tls = Literal["none", "starttls", "implicit"]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key; the certificate is its own CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket closes


class SmtpCase(ProviderCase):
    name = "smtp"
    retry_after_given = False  # a 454 says nothing about how long to wait
    hang_timeout = 1.0  # the timeout covers connect, TLS, AUTH and the envelope too

    failures: ClassVar[dict[Failure, tuple[Stage, str]]] = {
        Failure.REJECTED: (Stage.RCPT, "550 5.1.1 Recipient address rejected: User unknown"),
        Failure.AUTH: (Stage.AUTH, "535 5.7.8 Authentication credentials invalid"),
        Failure.THROTTLED: (
            Stage.MAIL,
            "454 4.7.0 Throttling failure: Maximum sending rate exceeded",
        ),
        Failure.UNAVAILABLE: (
            Stage.MAIL,
            "421 4.3.2 Service not available, closing transmission channel",
        ),
        Failure.SERVER_ERROR: (Stage.END_OF_DATA, DROP),  # the relay may have taken it
    }

    def __init__(self, fake: FakeSmtp, ca_file: Path) -> None:
        self.fake = fake
        self.ca_file = ca_file

    def config(self) -> dict[str, Any]:
        return {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": self.fake.port,
            "username": USERNAME,
            "password": PASSWORD,
            "tls": self.fake.tls,
            "ca_file": str(self.ca_file),
        }

    def make(
        self,
        *,
        port: int | None = None,
        timeout: float = TIMEOUT,
        good_credentials: bool = True,
        tls: Tls | None = None,
        ca_file: Path | Literal["default"] | None = "default",
        username: str | None = USERNAME,
        max_connections: int = 10,
        relay_limit: int = 10,
    ) -> SmtpProvider:
        settings = SmtpSettings(
            name="relay",
            type="smtp",
            host="127.0.0.1",
            port=self.fake.port if port is None else port,
            username=username,
            password=PASSWORD if good_credentials else f"pw-{WRONG_SECRET}",
            tls=self.fake.tls if tls is None else tls,
            ca_file=self.ca_file if ca_file == "default" else ca_file,
            max_connections=relay_limit,
        )
        return SmtpProvider(settings, timeout=timeout, max_connections=max_connections)

    def provider(self, *, timeout: float = TIMEOUT, good_credentials: bool = True) -> SmtpProvider:
        return self.make(timeout=timeout, good_credentials=good_credentials)

    def unreachable(self) -> SmtpProvider:
        return self.make(port=free_port())

    def fail(self, failure: Failure, *, retry_after: int | None = None) -> None:
        stage, reply = self.failures[failure]
        self.fake.script(stage, reply)

    def hang(self) -> None:
        self.fake.script(Stage.END_OF_DATA, HANG)

    def taken(self) -> list[View]:
        return [view(r) for r in self.fake.received]

    def requests(self) -> int:
        return self.fake.requests


def header(received: Received, name: str) -> list[str]:
    """Every value of one header, as the fake parsed it back."""
    return [v for n, v in received.fields["headers"] if n.lower() == name.lower()]


def view(received: Received) -> View:
    """What the relay took, in the shared shape: Bcc are the envelope's extra recipients."""
    fields = received.fields
    listed = {
        a["email"].lower() for kind in ("to", "cc") for a in addresses(header(received, kind))
    }
    headers = {
        n: v
        for n, v in fields["headers"]
        if n.lower() not in _OWN_HEADERS and not n.lower().startswith("x-mailgate-")
    }
    return View(
        provider_message_id=received.provider_message_id,
        mailgate_id=received.mailgate_id,
        sender=addresses(header(received, "from"))[0],
        to=addresses(header(received, "to")),
        cc=addresses(header(received, "cc")),
        bcc=[{"email": r} for r in fields["rcpt_to"] if r.lower() not in listed],
        reply_to=addresses(header(received, "reply-to")),
        subject=header(received, "subject")[0],
        text=fields["text"],
        html=fields["html"],
        headers=headers,
        attachments=fields["attachments"],
        tags=header(received, "x-mailgate-tag"),
        metadata={n[len(_META) :]: v for n, v in fields["headers"] if n.lower().startswith(_META)},
    )


@asynccontextmanager
async def open_case(tls: Tls = "starttls", **fake_options: Any) -> AsyncIterator[SmtpCase]:
    """A relay wanting AUTH over `tls`, its certificate new; `fake_options` go to `FakeSmtp`."""
    with tempfile.TemporaryDirectory() as directory:
        cert, key = self_signed_certificate(Path(directory))
        fake = FakeSmtp(
            username=USERNAME,
            password=PASSWORD,
            tls=tls,
            tls_context=server_context(cert, key),
            **fake_options,
        )
        async with fake:
            yield SmtpCase(fake, cert)
