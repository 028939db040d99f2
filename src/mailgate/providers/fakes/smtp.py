"""A local SMTP relay on aiosmtpd, with replies scripted per stage of the dialogue.

aiosmtpd is imported only when a relay starts, so importing this module (or
`mailgate.providers.fakes`, which the worker's simulated providers use) does
not load it; SMTP submission (`mailgate.ingest`) is what needs it at run time.
The fake lives beside the HTTP fakes because it plays the same part and
shares `FakeProvider`'s record of what it took and its `/_fake/...` control
routes (`app()`, with no send route).

It behaves like a submission relay: STARTTLS (required before anything else)
or implicit TLS with the context it is given, AUTH PLAIN/LOGIN with known
credentials (required before MAIL FROM when set), ENHANCEDSTATUSCODES, SIZE,
SMTPUTF8 (required in MAIL FROM for a non-ASCII address), a recipient limit,
and `250 2.0.0 Ok: queued as <id>` like Postfix. `script()` makes one stage
answer with a given reply, drop the connection (`DROP`) or never answer
(`HANG`); `behaviour.status`/`error` fail MAIL FROM, `behaviour.hang` and
`latency` apply to the end of data, as the HTTP fakes do for their one request.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

DROP = "drop"
"""A scripted reply: close the connection instead of answering."""
HANG = "hang"
"""A scripted reply: never answer (until the client gives up)."""

_DEFAULT_ERRORS = {421: "4.3.2 Service not available, closing transmission channel"}


class Stage(StrEnum):
    """A point of the dialogue a reply can be scripted for."""

    CONNECT = "connect"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"


@dataclass
class _Script:
    reply: str
    count: int | None
    only: frozenset[str]


class FakeSmtp(FakeProvider):
    """The relay; `async with FakeSmtp(...) as fake:` serves it on `fake.port`."""

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: Literal["none", "starttls", "implicit"] = "none",
        tls_context: ssl.SSLContext | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        max_recipients: int = 50,
        max_bytes: int = 10 * 1024 * 1024,
        smtputf8: bool = True,
        keep: int | None = None,
    ) -> None:
        super().__init__(keep=keep)
        if tls != "none" and tls_context is None:
            raise ValueError(f"tls={tls!r} needs a server tls_context")
        self.username, self.password = username, password
        self.tls, self.tls_context, self.mechanisms = tls, tls_context, mechanisms
        self.max_recipients, self.max_bytes, self.smtputf8 = max_recipients, max_bytes, smtputf8
        self.success_reply = "250 2.0.0 Ok: queued as {id}"
        """The reply to a taken message; `{id}` is the queue id the fake makes up."""
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""
        self.peak_connections = 0
        """The most connections open at once."""
        self._scripts: dict[Stage, _Script] = {}
        self._open: set[asyncio.BaseProtocol] = set()
        self._server: asyncio.Server | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def routes(self) -> list[Route]:
        return []  # messages arrive over SMTP; app() keeps the /_fake/... control routes

    def script(
        self, stage: Stage, reply: str, *, count: int | None = None, only: tuple[str, ...] = ()
    ) -> None:
        """Answer `stage` with `reply` (a full SMTP reply line, `DROP` or `HANG`).

        `count`: only the next N times; `only`: RCPT only for these addresses.
        """
        self._scripts[stage] = _Script(reply, count, frozenset(a.lower() for a in only))

    def reset(self) -> None:
        super().reset()
        self._scripts.clear()

    async def __aenter__(self) -> FakeSmtp:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        implicit = self.tls_context if self.tls == "implicit" else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, ssl=implicit)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in list(self._open):
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.close()
            await self._server.wait_closed()
            await asyncio.sleep(0)  # let connection_lost cancel the sessions' tasks
            self._server = None

    # --- the SMTP side ---------------------------------------------------------

    def _protocol(self) -> asyncio.BaseProtocol:
        self.connections += 1
        greeting = self._take(Stage.CONNECT)
        if greeting is not None:
            return _Greeter(self, greeting)
        starttls = self.tls == "starttls"
        return _relay_class()(
            self,
            _Handler(self),
            hostname="relay.fake.test",
            ident="mailgate fake relay",
            data_size_limit=self.max_bytes,
            enable_SMTPUTF8=self.smtputf8,
            tls_context=self.tls_context if starttls else None,
            require_starttls=starttls,
            auth_require_tls=starttls,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in self.mechanisms],
            authenticator=self._authenticate,
            loop=asyncio.get_running_loop(),
        )

    def _opened(self, protocol: asyncio.BaseProtocol) -> None:
        self._open.add(protocol)
        self.peak_connections = max(self.peak_connections, len(self._open))

    def _take(self, stage: Stage, address: str | None = None) -> str | None:
        """The scripted reply for this stage (and recipient), counting it down."""
        script = self._scripts.get(stage)
        if script is None or (script.only and (address or "").lower() not in script.only):
            return None
        if script.count is not None:
            if script.count <= 0:
                return None
            script.count -= 1
        return script.reply

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        good = (
            isinstance(data, LoginPassword)
            and self.username is not None
            and data.login == self.username.encode()
            and data.password == (self.password or "").encode()
        )
        return AuthResult(success=good, handled=False, auth_data=data if good else None)

    def _behaviour_failure(self) -> str | None:
        b = self.behaviour
        if b.status is None or (b.fail_count is not None and b.fail_count <= 0):
            return None
        if b.fail_count is not None:
            b.fail_count -= 1
        return f"{b.status} {b.error or _DEFAULT_ERRORS.get(b.status, 'Error')}"

    def _take_message(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = _parse(raw, utf8=envelope.smtp_utf8)
        if msg["From"] is None:
            return "550 5.6.0 Message has no From header"
        queue_id = secrets.token_hex(6).upper()
        fields = {
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "smtputf8": envelope.smtp_utf8,
            "tls": session.ssl is not None or self.tls == "implicit",
            "login": session.auth_data.login.decode() if session.auth_data else None,
            **_fields(msg),
            "raw": raw.decode("utf-8", errors="replace"),
        }
        mailgate_id = msg["X-Mailgate-Id"]
        self.record(queue_id, None if mailgate_id is None else str(mailgate_id), fields)
        return self.success_reply.format(id=queue_id)


async def _act(server: SMTP, reply: str) -> str:
    """A scripted reply to send; or drop the connection, or hang, and never return."""
    if reply == DROP and server.transport is not None:
        server.transport.close()
    if reply in (DROP, HANG):
        await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection goes
    if reply.startswith("421") and server.transport is not None:
        asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply is out
    return reply


@functools.cache
def _relay_class() -> Callable[..., SMTP]:
    """aiosmtpd's session class with our additions, made when the first relay starts."""
    from aiosmtpd.smtp import SMTP

    class _RelaySMTP(SMTP):
        """aiosmtpd's session, plus what its hooks cannot do: count every MAIL FROM, script DATA."""

        def __init__(self, fake: FakeSmtp, handler: _Handler, **kwargs: Any) -> None:
            super().__init__(handler, **kwargs)
            self.fake = fake

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.fake._opened(self)
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            self.fake._open.discard(self)
            super().connection_lost(error)

        async def smtp_MAIL(self, arg: str | None) -> None:
            self.fake.requests += 1  # every transaction begun, even one refused before the hook
            await super().smtp_MAIL(arg)

        async def smtp_DATA(self, arg: str) -> None:
            reply = (
                self.fake._take(Stage.DATA) if self.envelope and self.envelope.rcpt_tos else None
            )
            if reply is None:
                await super().smtp_DATA(arg)
            else:
                await self.push(await _act(self, reply))

    return _RelaySMTP


class _Handler:
    """aiosmtpd's hooks: the scripted replies and the relay's own checks."""

    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        reply = self.fake._take(Stage.EHLO)
        if reply is not None:
            return [await _act(server, reply)]
        session.host_name = hostname
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        from aiosmtpd.smtp import MISSING

        reply = self.fake._take(Stage.AUTH)
        return MISSING if reply is None else await _act(server, reply)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.fake.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.fake.request_times.append(time.time())
        reply = self.fake._take(Stage.MAIL) or self.fake._behaviour_failure()
        if reply is not None:
            return await _act(server, reply)
        if not address.isascii() and "SMTPUTF8" not in options:
            return "553 5.6.7 Non-ASCII address without SMTPUTF8"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.fake._take(Stage.RCPT, address)
        if reply is not None:
            return await _act(server, reply)
        if len(envelope.rcpt_tos) >= self.fake.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        if not address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 Non-ASCII address without SMTPUTF8"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.fake._take(Stage.END_OF_DATA)
        if reply is None and self.fake.behaviour.hang:
            reply = HANG
        if self.fake.behaviour.latency:
            await asyncio.sleep(self.fake.behaviour.latency)
        if reply is not None:
            return await _act(server, reply)
        return self.fake._take_message(session, envelope)


class _Greeter(asyncio.Protocol):
    """A connection whose greeting is scripted: answer it (then close), drop or hang."""

    def __init__(self, fake: FakeSmtp, reply: str) -> None:
        self.fake, self.reply = fake, reply
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.fake._opened(self)
        if self.reply == HANG:
            return
        if self.reply != DROP and isinstance(transport, asyncio.WriteTransport):
            transport.write(f"{self.reply}\r\n".encode())
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._open.discard(self)


def _parse(raw: bytes, *, utf8: bool) -> EmailMessage:
    if utf8:
        parsed = Parser(policy=policy.default).parsestr(raw.decode("utf-8", "surrogateescape"))
    else:
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _text(part: EmailMessage | None) -> str | None:
    """A body part's text; the one line break MIME always ends it with is not the sender's."""
    if part is None:
        return None
    text = str(part.get_content()).replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


def _fields(msg: EmailMessage) -> dict[str, Any]:
    """The parsed message, JSON-friendly: headers as sent, bodies, attachments (base64)."""
    attachments = []
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        attachments.append(
            {
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "content": base64.b64encode(
                    payload if isinstance(payload, bytes) else b""
                ).decode(),
            }
        )
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    return {
        "headers": [[name, str(value)] for name, value in msg.items()],
        "text": _text(plain if isinstance(plain, EmailMessage) else None),
        "html": _text(html if isinstance(html, EmailMessage) else None),
        "attachments": attachments,
    }
