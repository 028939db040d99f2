"""SMTP submission served in process on loopback, a real client, and a certificate made here."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from mailgate.api.accept import Acceptor
from mailgate.config import SmtpServerSettings
from mailgate.ingest import SubmissionServer
from mailgate.message import Email
from mailgate.metrics import Metrics
from mailgate.store import Scope, Store
from mailgate.store.queue import join_email
from mailgate.store.tables import message_bodies

RunServer = Callable[..., AbstractAsyncContextManager[SubmissionServer]]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (its own CA) and nothing else."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, in PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(directory / "cert.pem", directory / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def run_server(store: Store, metrics: Metrics) -> RunServer:
    """`async with run_server(**smtp_server settings) as server:` SMTP submission on port 0."""

    @asynccontextmanager
    async def running(**values: Any) -> AsyncIterator[SubmissionServer]:
        settings = SmtpServerSettings(**({"enabled": True, "port": 0} | values))
        acceptor = Acceptor(store, metrics, ["primary", "backup"])
        server = SubmissionServer(settings, store, acceptor, metrics, hostname="mailgate.test")
        await server.start()
        try:
            yield server
        finally:
            await server.stop()

    return running


@pytest.fixture
async def server(run_server: RunServer) -> AsyncIterator[SubmissionServer]:
    """SMTP submission without TLS (no certificate: AUTH in clear, as on loopback)."""
    async with run_server() as running:
        yield running


@pytest.fixture
async def send_key(store: Store) -> str:
    """A key of the tenant `default` with the `send` scope only."""
    _, secret = await store.create_key("smtp", tenant_id="default", scopes=[Scope.SEND])
    return secret


async def stored_email(store: Store, message_id: str) -> Email:
    """The message as the store keeps it for the worker: its envelope on the queue row,
    bodies, headers and attachments in `message_bodies`."""
    view = await store.get_message(None, message_id)
    query = select(message_bodies.c.body).where(message_bodies.c.message_id == message_id)
    body = await store.db.read(lambda conn: conn.execute(query).scalar_one())
    return join_email(dict(view.envelope), body)


def plain(user: str, password: str) -> str:
    """An AUTH PLAIN initial response."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@dataclass
class Dialogue:
    """A raw SMTP client: send lines (several at once, pipelined), read replies."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: str = ""
    log: list[str] = field(default_factory=list)

    async def reply(self) -> tuple[int, str]:
        """One reply (all its lines): the code and the text of its lines, joined by newlines."""
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode().rstrip("\r\n")
            assert line, "the server closed the connection"
            self.log.append(line)
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def send(self, *lines: str | bytes) -> None:
        for line in lines:
            self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()

    async def command(self, line: str) -> tuple[int, str]:
        await self.send(line)
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@asynccontextmanager
async def dialogue(server: SubmissionServer) -> AsyncIterator[Dialogue]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    talk = Dialogue(reader, writer)
    code, talk.greeting = await talk.reply()
    assert code == 220
    try:
        yield talk
    finally:
        await talk.close()
