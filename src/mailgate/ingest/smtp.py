"""SMTP submission: aiosmtpd in the running event loop, in front of the one accept path.

A client authenticates with `AUTH PLAIN` or `AUTH LOGIN`, any user name and
an API key holding the `send` scope as the password. Each message after
DATA is parsed (`ingest/mime.py`), validated as a `MessageIn` and handed to
`Acceptor.accept`, exactly as `POST /v1/messages` does; the reply
`250 2.0.0 queued as msg_...` goes out only after the commit. Refusals
carry the accept path's own reason (`reply_for`).

How aiosmtpd is used, and why:

- Its sessions run in this process's event loop (`loop.create_server`), not
  in aiosmtpd's `Controller` thread: the store and the accept path's group
  commit belong to this loop.
- AUTH PLAIN and LOGIN are the handler's own `auth_*` mechanisms, which
  aiosmtpd prefers to its built-in ones: its `authenticator` callback is
  synchronous, and checking a key is a store read.
- AUTH is enforced in the MAIL hook rather than with aiosmtpd's
  `auth_required`, which, without TLS required too, warns on every
  connection. Without MAIL, RCPT and DATA are refused anyway (`503`).
- With a certificate and `require_tls`, aiosmtpd itself refuses AUTH
  before STARTTLS (`538 5.7.11`) and advertises AUTH only after it.
- PIPELINING is advertised: aiosmtpd reads and answers one command at a
  time from one buffer, so commands sent together are answered in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    Session,
    TLSSetupException,
)
from pydantic import ValidationError

from mailgate.api.accept import Acceptor
from mailgate.api.addresses import AddressError, normalize_email
from mailgate.api.auth import Caller, Guard
from mailgate.api.errors import validation_error
from mailgate.api.ratelimit import TenantRateLimiter
from mailgate.api.schemas import MAX_RECIPIENTS_PER_FIELD, MessageIn
from mailgate.config import SmtpServerSettings
from mailgate.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    RequestError,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
)
from mailgate.ingest.mime import message_fields, parse_message
from mailgate.metrics import Metrics
from mailgate.serving import listening_socket
from mailgate.store import ApiKey, Scope, Store, Tenant

log = logging.getLogger("mailgate.smtp")

MAX_RECIPIENTS = 3 * MAX_RECIPIENTS_PER_FIELD
"""RCPT TO per message at most: to, cc and bcc each take 50."""
PARSE_IN_THREAD_BYTES = 1024 * 1024
"""Larger messages are parsed off the event loop, which also serves the HTTP API."""
STOP_GRACE_SECONDS = 10.0

STORE_DOWN = "451 4.3.0 The store is unavailable; try again later"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_REPLY_TEXT_LIMIT = 400


@dataclass(frozen=True, slots=True)
class SmtpLogin:
    """What a session authenticated as (the key is checked again for each message)."""

    secret: str = field(repr=False)
    key: ApiKey
    tenant: Tenant


def tls_context(settings: SmtpServerSettings) -> ssl.SSLContext | None:
    """The server's STARTTLS context, or None when no certificate is configured."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the SMTP certificate {settings.tls_cert_file!r}"
            f"{f' with key {settings.tls_key_file!r}' if settings.tls_key_file else ''}: "
            f"{getattr(exc, 'strerror', None) or exc} (smtp_server.tls_cert_file / "
            "smtp_server.tls_key_file, MAILGATE_SMTP_SERVER__TLS_CERT_FILE)"
        ) from None
    return context


def reply_for(error: RequestError) -> str:
    """The SMTP reply for a refusal of the accept path, with its reason."""
    if isinstance(error, PayloadTooLarge):
        code = "552 5.3.4"
    elif isinstance(error, TooManyRequests):
        code = "451 4.7.0"
    elif isinstance(error, Unauthorized):
        code = "535 5.7.8"
    elif isinstance(error, Forbidden):
        code = "550 5.7.1"
    elif isinstance(error, InvalidRequest):
        code = "550 5.6.0"
    else:
        code = "554 5.6.0"
    text = error.message
    if error.field and not text.startswith(error.field):
        text = f"{error.field}: {text}"
    if isinstance(error, TooManyRequests):
        text = f"{text}; try again in {error.retry_after} s"
    return f"{code} {_reply_text(text)}"


def _reply_text(text: str) -> str:
    """One line of ASCII, whatever the reason holds (an address in UTF-8, a line break)."""
    flat = _CONTROL.sub(" ", text.encode("ascii", "backslashreplace").decode("ascii")).strip()
    return flat if len(flat) <= _REPLY_TEXT_LIMIT else flat[: _REPLY_TEXT_LIMIT - 3] + "..."


def announcement(settings: SmtpServerSettings, tls: bool, host: str, port: int) -> str:
    """The line `serve` prints once the SMTP port is open."""
    if not tls:
        mode = "no TLS: set smtp_server.tls_cert_file before listening beyond loopback"
    elif settings.require_tls:
        mode = "STARTTLS offered, AUTH only after it"
    else:
        mode = "STARTTLS offered"
    return f"SMTP submission is listening on smtp://{host}:{port} ({mode})"


class SubmissionHandler:
    """aiosmtpd's hooks (`handle_*`) and AUTH mechanisms (`auth_*`) for SMTP submission."""

    def __init__(
        self,
        store: Store,
        acceptor: Acceptor,
        metrics: Metrics,
        *,
        limiter: TenantRateLimiter | None = None,
    ) -> None:
        self._guard = Guard(store, limiter=limiter)
        """The API's own key checks and cache, and the tenant's rate limit."""
        self._acceptor = acceptor
        self._metrics = metrics
        self.submissions: set[asyncio.Task[str]] = set()
        """Messages being accepted; shutdown waits for them."""

    # --- AUTH ------------------------------------------------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 4616: `authzid NUL user NUL password`, as an initial response or after `334`."""
        if len(args) == 1:
            blob = await _challenge(server, "")
        else:
            blob = await _initial_response(server, args[1])
        if blob is None:
            return AuthResult(success=False, handled=True)  # already answered 501
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 AUTH PLAIN takes authzid NUL user NUL password")
            return AuthResult(success=False, handled=True)
        return await self._login(parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """The user name (any) and the password (the key), each after a `334` challenge."""
        if len(args) == 1:
            user = await _challenge(server, "Username:")
        else:
            user = await _initial_response(server, args[1])
        password = await _challenge(server, "Password:") if user is not None else None
        if password is None:
            return AuthResult(success=False, handled=True)  # already answered 501
        return await self._login(password)

    async def _login(self, password: bytes) -> AuthResult:
        try:
            secret = password.decode("utf-8").strip()
        except UnicodeDecodeError:
            secret = ""
        try:
            login = await self._check_key(secret)
        except StoreUnavailable as exc:
            log.warning("SMTP AUTH: %s", exc)
            return _refused("454 4.7.0 Temporary authentication failure; try again later")
        except RequestError as exc:
            self._metrics.refused.labels(exc.code).inc()
            return _refused(f"535 5.7.8 {_reply_text(exc.message)}")
        return AuthResult(success=True, auth_data=login)

    async def _check_key(self, secret: str) -> SmtpLogin:
        """The key's login, if the key is known, may send and its tenant is enabled (the
        API's checks, through its cache)."""
        try:
            caller = await self._guard.identify(secret, Scope.SEND)
        except Unauthorized:
            raise Unauthorized(
                "Authentication credentials invalid: unknown or revoked API key"
            ) from None
        return SmtpLogin(secret=secret, key=caller.key, tenant=caller.tenant)

    # --- the transaction -----------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            normalize_email(address)
        except AddressError as exc:
            return f"553 5.1.3 {_reply_text(str(exc))}"
        if address not in envelope.rcpt_tos:
            if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
                return f"452 4.5.3 Too many recipients (at most {MAX_RECIPIENTS} per message)"
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data
        if not session.authenticated or not isinstance(login, SmtpLogin):
            return "530 5.7.0 Authentication required"
        raw = envelope.original_content or b""
        # The accept runs as its own task: a client that hangs up while it runs
        # cancels this hook, never a commit halfway.
        task = asyncio.create_task(
            self._submit(session, login, raw, envelope.mail_from, list(envelope.rcpt_tos))
        )
        self.submissions.add(task)
        task.add_done_callback(self.submissions.discard)
        return await asyncio.shield(task)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("SMTP: a STARTTLS handshake failed: %s", error.__cause__ or error)
        else:
            log.error("SMTP session error", exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    async def _submit(
        self,
        session: Session,
        login: SmtpLogin,
        raw: bytes,
        mail_from: str | None,
        rcpt_tos: Sequence[str],
    ) -> str:
        """Accept one message; the reply for it, whatever happens."""
        try:
            login = await self._current(session, login)
            await self._guard.limit(Caller(login.key, login.tenant))
            if len(raw) > PARSE_IN_THREAD_BYTES:
                message = await asyncio.to_thread(_message_in, raw, mail_from, rcpt_tos)
            else:
                message = _message_in(raw, mail_from, rcpt_tos)
            _, accepted = await self._acceptor.accept(message, login.tenant)
        except RequestError as exc:
            self._metrics.refused.labels(exc.code).inc()
            return reply_for(exc)
        except StoreUnavailable as exc:
            log.warning("SMTP: answering 451: %s", exc)
            return STORE_DOWN
        except Exception:
            log.exception("SMTP: accepting a message failed")
            return "451 4.3.0 Internal error; try again later"
        log.debug("accepted %s over SMTP (key %s)", accepted.id, login.key.id)
        return f"250 2.0.0 queued as {accepted.id}"

    async def _current(self, session: Session, login: SmtpLogin) -> SmtpLogin:
        """The session's login as the key stands now (the guard's cache keeps this cheap),
        so a revoked key or a disabled tenant counts within seconds here too."""
        try:
            fresh = await self._check_key(login.secret)
        except RequestError:
            session.authenticated = False
            session.auth_data = None
            raise
        session.auth_data = fresh  # type: ignore[assignment]  # aiosmtpd types it as None
        return fresh


def _message_in(raw: bytes, mail_from: str | None, rcpt_tos: Sequence[str]) -> MessageIn:
    fields = message_fields(parse_message(raw), mail_from=mail_from, rcpt_tos=rcpt_tos)
    try:
        return MessageIn.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def _challenge(server: SMTP, text: str) -> bytes | None:
    """The client's answer to a `334` challenge; None when it was `*` or not base64
    (aiosmtpd has answered 501 then)."""
    answer = await server.challenge_auth(text)
    return answer if isinstance(answer, bytes) else None


async def _initial_response(server: SMTP, text: str) -> bytes | None:
    """An AUTH initial response; `=` is an empty one (RFC 4954)."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Can't decode base64")
        return None


def _refused(reply: str) -> AuthResult:
    return AuthResult(success=False, handled=False, message=reply)


class _Session(SMTP):
    """aiosmtpd's session, known to its server (for shutdown), with size refusals as 5.3.4."""

    def __init__(self, owner: SubmissionServer, handler: SubmissionHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        # aiosmtpd refuses a SIZE over the limit in MAIL FROM, and too much data
        # after DATA, with "552 Error: ..."; the enhanced code says which problem.
        if isinstance(status, str) and status.startswith("552 Error"):
            status = f"552 5.3.4 Message too big: the limit is {self.data_size_limit} bytes"
        await super().push(status)


class SubmissionServer:
    """The SMTP submission listener of one process.

    `start()` binds `settings.host:port` (or serves a socket the caller
    bound, as `serve --workers N` shares one among its API processes);
    `stop()` stops listening, lets messages being accepted finish, then
    closes every session.
    """

    def __init__(
        self,
        settings: SmtpServerSettings,
        store: Store,
        acceptor: Acceptor,
        metrics: Metrics,
        *,
        limiter: TenantRateLimiter | None = None,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls_context(settings)
        self.handler = SubmissionHandler(store, acceptor, metrics, limiter=limiter)
        self.sessions: set[_Session] = set()
        self._hostname = hostname or socket.gethostname()  # getfqdn could wait on DNS
        self._server: asyncio.Server | None = None
        self.host = settings.host
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def announcement(self) -> str:
        return announcement(self.settings, self.tls is not None, self.host, self.port)

    async def start(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = bind(self.settings)
        self.host, self.port = sock.getsockname()[:2]
        self._server = await asyncio.get_running_loop().create_server(self._session, sock=sock)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self.handler.submissions:
            await asyncio.wait(set(self.handler.submissions), timeout=grace)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost cancel the sessions' tasks

    def _session(self) -> _Session:
        return _Session(
            self,
            self.handler,
            hostname=self._hostname,
            ident="mailgate ESMTP",
            data_size_limit=self.settings.max_message_bytes,
            enable_SMTPUTF8=True,
            tls_context=self.tls,
            auth_require_tls=self.tls is not None and self.settings.require_tls,
            loop=asyncio.get_running_loop(),
        )


def bind(settings: SmtpServerSettings) -> socket.socket:
    """The listening socket for `smtp_server.host:port`; `ConfigError` when it is taken."""
    try:
        return listening_socket(settings.host, settings.port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for SMTP on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc} (smtp_server.host / smtp_server.port, "
            "MAILGATE_SMTP_SERVER__PORT)"
        ) from None
