"""Any SMTP relay (`type = "smtp"`): aiosmtplib hands over what `smtp_message` builds.

Why it looks as it does (docs/providers/smtp.md has the whole table): what a
reply means depends on where in the dialogue it came (`Phase`), so a send
tracks its phase; only silence or a drop after the final "." is ambiguous;
recipients are all-or-nothing, since one message has one status and one id;
connections are pooled because a TLS handshake and AUTH per message is slow.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from enum import StrEnum
from typing import TypeVar

import aiosmtplib

from mailgate.config import SmtpSettings
from mailgate.errors import (
    ConfigError,
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Email
from mailgate.providers.base import MAX_RETRY_AFTER_SECONDS, Provider, SendResult, SimulatedFailure
from mailgate.providers.smtp_message import Letter, letter_for

IDLE_SECONDS = 30.0
"""An idle connection older than this is closed rather than reused (relays drop idle ones)."""
QUIT_SECONDS = 1.0
_T = TypeVar("_T")

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_RATE = re.compile(
    r"throttl|sending rate|rate limit|rate exceeded|too many (messages|connections)", re.I
)
_QUOTA = re.compile(r"\b(daily|sending|message|send)\b[\w ]{0,20}\bquota\b", re.I)
_QUEUE_ID = (
    re.compile(r"queued as\s+<?([^\s<>]+)", re.I),  # Postfix, SendGrid, Mailjet, ...
    re.compile(r"\bid=([^\s;,]+)", re.I),  # Exim: "OK id=1kA2bC-0003Xy-Ab"
    re.compile(r"^ok\s+(?=\S*\d)(\S+)$", re.I),  # Amazon SES: "Ok 0100018c...-000000"
    re.compile(r"\s(\S+)\s+-\s+gsmtp$"),  # Google: "OK  1700000000 a1b2si12.34 - gsmtp"
    re.compile(r"^(\w{10,})\s+message accepted", re.I),  # sendmail
)
_NO_STARTTLS = 'the relay does not offer STARTTLS; not going on in the clear (tls = "none" would)'
_NO_SMTPUTF8 = "the relay does not offer SMTPUTF8, which a non-ASCII address needs"


class Phase(StrEnum):
    """Where in the SMTP dialogue a send is: it decides what a reply or a failure means."""

    WAIT = "waiting for a free connection"
    CONNECT = "connect"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    END_OF_DATA = "end of data"


def classify_reply(
    provider: str, phase: Phase, code: int, text: str, recipient: str | None = None
) -> ProviderError:
    """The `ProviderError` for a negative SMTP reply (providers.md 10.2, 10.3 and 12).

    Deliberate choices: a 5yz whose enhanced code is transient (X.2.2 mailbox
    full, X.3.1 system full, X.4.5 congestion, or class 4) is transient, as
    RFC 3463 means it; a 5yz at MAIL FROM, or X.7.x at RCPT (relaying
    denied), is this relay refusing us, not the message; a sending quota is
    a throttle that pauses the provider for `MAX_RETRY_AFTER_SECONDS`.
    """
    where = f"{phase} <{recipient}>" if recipient else str(phase)
    detail = f"{where}: {code} {' / '.join(line.strip() for line in text.splitlines())}"
    match = _ENHANCED.match(text)
    klass, subject, item = (int(g) for g in match.groups()) if match else (code // 100, 0, 0)
    quota = _QUOTA.search(text) is not None
    if phase is not Phase.AUTH and (quota or _RATE.search(text)):
        wait = MAX_RETRY_AFTER_SECONDS if quota else None
        return ProviderThrottled(provider, detail, status_code=code, wire="SMTP", retry_after=wait)
    if code < 500 or klass == 4 or phase in (Phase.CONNECT, Phase.EHLO):
        return ProviderUnavailable(
            provider, detail, status_code=code, wire="SMTP"
        )  # incl. 421, 554 greeting
    if phase in (Phase.STARTTLS, Phase.AUTH) or code in (530, 534, 535, 538):
        return ProviderAuthError(provider, detail, status_code=code, wire="SMTP")
    if subject == 7 and item in (0, 8, 9, 11):  # authentication required / invalid / too weak
        return ProviderAuthError(provider, detail, status_code=code, wire="SMTP")
    if code == 552 or (subject, item) in ((3, 4), (2, 3)):
        if phase is Phase.RCPT:  # RFC 5321 4.5.3.1.10: too many recipients, treat as 452
            return ProviderUnavailable(provider, detail, status_code=code, wire="SMTP")
        return MessageRejected(provider, detail, status_code=code, wire="SMTP")
    if (subject, item) in ((2, 2), (3, 1), (4, 5)):
        return ProviderUnavailable(provider, detail, status_code=code, wire="SMTP")
    if phase is Phase.MAIL or (phase is Phase.RCPT and subject == 7):
        return ProviderAuthError(provider, detail, status_code=code, wire="SMTP")
    return MessageRejected(provider, detail, status_code=code, wire="SMTP")


def parse_queue_id(text: str) -> str | None:
    """The relay's queue id from its 250 reply to the end of data, when it says one."""
    text = _ENHANCED.sub("", text.strip(), count=1).strip()
    for pattern in _QUEUE_ID:
        match = pattern.search(text)
        if match:
            return match.group(1).rstrip(".")
    return None


class _StaleConnection(Exception):
    """A reused connection was already gone at MAIL FROM: nothing reached the relay."""


class _Progress:
    phase = Phase.WAIT


_CONNECTING = (Phase.CONNECT, Phase.STARTTLS)


class SmtpProvider(Provider):
    type = "smtp"

    def __init__(
        self, settings: SmtpSettings, *, timeout: float, max_connections: int = 10
    ) -> None:
        super().__init__(settings.name, timeout=timeout)
        self.host, self.port, self.tls = settings.host, settings.port, settings.tls
        self._address = f"{settings.host}:{settings.port}"
        self._username = settings.username
        self._password = settings.password.get_secret_value() if settings.password else ""
        self._tls_context = _client_context(settings) if settings.tls != "none" else None
        # Relays cap connections per client: the relay's own limit wins over
        # the worker's concurrency.
        self._slots = asyncio.Semaphore(min(max_connections, settings.max_connections))
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._generation = 0
        self._local_hostname: str | None = None

    async def send(self, message_id: str, email: Email) -> SendResult:
        try:
            letter = letter_for(message_id, email)
        except (ValueError, TypeError) as exc:
            raise MessageRejected(self.name, f"cannot build the message: {exc}") from exc
        return await self._attempt(lambda progress: self._deliver(letter, progress))

    async def probe(self) -> None:
        """Connect, negotiate TLS and log in on a new connection, then keep it for a send."""
        await self._attempt(self._probe)

    async def _attempt(self, work: Callable[[_Progress], Awaitable[_T]]) -> _T:
        """Run `work` within the timeout and a connection slot; translate what goes wrong."""
        if self.simulated_failure is SimulatedFailure.ERROR:
            detail = "simulated failure (drill): 421 4.3.2 service not available"
            raise ProviderUnavailable(self.name, detail, status_code=421, wire="SMTP")
        progress, started = _Progress(), time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                if self.simulated_failure is SimulatedFailure.TIMEOUT:
                    progress.phase = Phase.END_OF_DATA  # like a relay silent after the data
                    await asyncio.Event().wait()
                async with self._slots:
                    return await work(progress)
        except ProviderError:
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            raise self._translate(exc, progress.phase, time.monotonic() - started) from exc

    def _translate(self, exc: Exception, phase: Phase, waited: float) -> ProviderError:
        """aiosmtplib's and the network's exceptions as `ProviderError`s (timeouts first)."""
        ambiguous = phase is Phase.END_OF_DATA
        if isinstance(exc, TimeoutError):
            if phase is Phase.CONNECT:
                detail = f"cannot connect to {self._address} within {waited:.1f}s"
            elif phase is Phase.WAIT:
                detail = f"no free connection within {waited:.1f}s (max_connections in use)"
            else:
                detail = f"no answer within {waited:.1f}s (at {phase})"
            return ProviderUnavailable(self.name, detail, ambiguous=ambiguous)
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return classify_reply(self.name, phase, exc.code, exc.message)
        if isinstance(exc, OSError):  # refused, reset, TLS; SMTPConnectError is one too
            early = isinstance(exc, aiosmtplib.SMTPConnectError) or phase in _CONNECTING
            where = f"cannot connect to {self._address}" if early else f"connection lost at {phase}"
            return ProviderUnavailable(self.name, f"{where}: {exc}", ambiguous=ambiguous)
        if isinstance(exc, aiosmtplib.SMTPException):  # e.g. no AUTH mechanism in common
            kind = ProviderAuthError if phase is Phase.AUTH else ProviderUnavailable
            return kind(self.name, f"{phase}: {exc}")
        return MessageRejected(self.name, f"{phase}: {exc}")  # an address the encoding refuses

    async def _probe(self, progress: _Progress) -> None:
        generation = self._generation
        smtp, _ = await self._checkout(progress, fresh=True)
        self._checkin(smtp, generation)

    async def _deliver(self, letter: Letter, progress: _Progress) -> SendResult:
        generation = self._generation
        smtp, reused = await self._checkout(progress, fresh=False)
        try:
            try:
                result = await self._transaction(smtp, letter, progress, reused=reused)
            except _StaleConnection:
                smtp.close()
                smtp, _ = await self._checkout(progress, fresh=True)
                result = await self._transaction(smtp, letter, progress, reused=False)
        except BaseException:
            smtp.close()
            raise
        self._checkin(smtp, generation)
        return result

    def _checkin(self, smtp: aiosmtplib.SMTP, generation: int) -> None:
        if generation == self._generation:
            self._idle.append((smtp, time.monotonic()))
        else:
            smtp.close()  # close() ran meanwhile; it owns no connection from before

    async def _checkout(self, progress: _Progress, *, fresh: bool) -> tuple[aiosmtplib.SMTP, bool]:
        while self._idle and not fresh:
            smtp, since = self._idle.pop()
            if smtp.is_connected and time.monotonic() - since < IDLE_SECONDS:
                return smtp, True
            smtp.close()
        return await self._connect(progress), False

    async def _connect(self, progress: _Progress) -> aiosmtplib.SMTP:
        progress.phase = Phase.CONNECT
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        implicit = self.tls == "implicit"
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self._local_hostname,
            timeout=None,  # the attempt's own timeout bounds everything
            use_tls=implicit,
            start_tls=False,
            tls_context=self._tls_context if implicit else None,
        )
        try:
            await smtp.connect()
            progress.phase = Phase.EHLO
            await smtp.ehlo()
            if self.tls == "starttls":
                if not smtp.supports_extension("starttls"):
                    raise ProviderAuthError(self.name, _NO_STARTTLS)
                progress.phase = Phase.STARTTLS
                await smtp.starttls(tls_context=self._tls_context)
                progress.phase = Phase.EHLO
                await smtp.ehlo()
            if self._username is not None:
                progress.phase = Phase.AUTH
                await smtp.login(self._username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, letter: Letter, progress: _Progress, *, reused: bool
    ) -> SendResult:
        options = []
        if letter.utf8:
            if not smtp.supports_extension("smtputf8"):
                raise ProviderUnavailable(self.name, _NO_SMTPUTF8)
            options.append("SMTPUTF8")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={letter.size}")
        encoding = "utf-8" if letter.utf8 else "ascii"
        progress.phase = Phase.MAIL
        try:
            await smtp.mail(letter.sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPServerDisconnected:
            if reused:
                raise _StaleConnection from None
            raise
        progress.phase = Phase.RCPT
        refused: list[ProviderError] = []
        for recipient in letter.recipients:
            try:
                await smtp.rcpt(recipient, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(
                    classify_reply(self.name, Phase.RCPT, exc.code, exc.message, recipient)
                )
                if exc.code == 421:
                    break
        if refused:
            raise _worst(refused)
        progress.phase = Phase.DATA
        reply = await smtp.execute_command(b"DATA")
        if reply.code != 354:
            raise classify_reply(self.name, Phase.DATA, reply.code, reply.message)
        # Written by hand rather than with `smtp.data()` to know whether a drop
        # came before the relay's 354 (safe) or after the final "." (ambiguous).
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost after DATA")
        progress.phase = Phase.END_OF_DATA
        protocol.write(letter.payload)
        reply = await protocol.read_response(timeout=None)
        if reply.code // 100 != 2:
            raise classify_reply(self.name, Phase.END_OF_DATA, reply.code, reply.message)
        return SendResult(provider_message_id=parse_queue_id(reply.message) or letter.message_id)

    async def close(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(smtp) for smtp, _ in idle))


_SEVERITY = {ProviderAuthError: 0, MessageRejected: 1, ProviderThrottled: 2, ProviderUnavailable: 3}


def _worst(refused: list[ProviderError]) -> ProviderError:
    """One error for the refused recipients: the class that decides most, every detail."""
    worst = min(refused, key=lambda e: _SEVERITY[type(e)])
    if len(refused) == 1:
        return worst
    detail, code = "; ".join(e.detail for e in refused), worst.status_code
    if isinstance(worst, ProviderThrottled):
        return ProviderThrottled(
            worst.provider, detail, status_code=code, wire="SMTP", retry_after=worst.retry_after
        )
    return type(worst)(worst.provider, detail, status_code=code, wire="SMTP")


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    """Say goodbye politely, briefly; the connection is closed whatever happens."""
    with suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        async with asyncio.timeout(QUIT_SECONDS):
            await smtp.quit()
    smtp.close()


def _client_context(settings: SmtpSettings) -> ssl.SSLContext:
    """Verifying TLS context: `ca_file` alone when set, else the system's trust store."""
    try:
        return ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"providers[{settings.name}].ca_file: cannot load {settings.ca_file}: {exc} "
            "(set it in the [[providers]] entry or MAILGATE_PROVIDERS)"
        ) from exc
