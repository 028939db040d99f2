"""The provider contract, and the HTTP plumbing every HTTP provider shares.

A provider module only maps a message to one request (`build_request`) and
a successful response to a result (`parse_success`); it may refine how error
responses are classified (`classify_error`). Everything else lives here: the
pooled aiohttp session, the timeout, simulated failures for drills, and the
translation of transport failures into `ProviderError` subclasses. Nothing
from aiohttp leaves this package. Retries, failover, breakers, storage and
metrics belong to `mailgate.delivery`, never to a provider.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel, SecretStr

from mailgate.config import HttpProviderSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Email

MAX_RETRY_AFTER_SECONDS = 3600.0


class SimulatedFailure(StrEnum):
    """A drill switched on by an operator: the provider fails as if for real."""

    OFF = "off"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider took the message; its id for it, when it gave one."""

    provider_message_id: str | None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    form: aiohttp.FormData | None = None
    data: bytes | None = None
    """A body sent byte for byte (a signed body must be exactly what was signed)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A response header, whatever its case."""
        return _header(self.headers, name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class Provider(ABC):
    """One configured provider: `send` hands it one message.

    `name` is the configured name (used in logs, metrics and URLs); `type`
    is the kind of provider (`sendgrid`, `mailgun`, ...).
    """

    type: ClassVar[str]

    def __init__(self, name: str, *, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self.simulated_failure = SimulatedFailure.OFF

    @abstractmethod
    async def send(self, message_id: str, email: Email) -> SendResult:
        """Send `email`, passing `message_id` along so the provider's records name it.

        Returns the provider's id for the message. Raises only `ProviderError`
        subclasses: `ProviderUnavailable` (timeout, connection, 5xx; with
        `ambiguous` set when the provider may have taken it),
        `ProviderThrottled` (429), `ProviderAuthError` (401/403) or
        `MessageRejected` (the message itself is bad).
        """

    async def probe(self) -> None:
        """Check, with a cheap authenticated call, that the provider would take mail.

        Raises the `ProviderError` a send would (`ProviderAuthError` for bad
        credentials), or `NotImplementedError` when the provider has no such
        call.
        """
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional for providers without connections
        """Release connections. The provider may be used again afterwards."""


class HttpProvider(Provider):
    """A provider reached over HTTPS with one pooled aiohttp session."""

    def __init__(
        self, settings: HttpProviderSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings.name, timeout=timeout)
        self.base_url = settings.base_url.rstrip("/")
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._secret_forms = secret_forms(settings)

    @abstractmethod
    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        """The one HTTP request that sends `email`."""

    @abstractmethod
    def parse_success(self, response: HttpResponse) -> SendResult:
        """Read the provider's id from a 2xx response.

        May raise a `ProviderError` when a 2xx is not really a success.
        """

    def probe_request(self) -> HttpRequest | None:
        """A cheap authenticated request whose success means the provider would take mail.

        None (the default) when the provider has none; `probe` then raises
        `NotImplementedError`.
        """
        return None

    async def probe(self) -> None:
        request = self.probe_request()
        if request is None:
            raise NotImplementedError
        self.check_probe(await self._perform(request))

    def check_probe(self, response: HttpResponse) -> None:
        """Raise the `ProviderError` a probe's answer means; the default: any non-2xx."""
        if response.status >= 300:
            raise self.classify_error(response)

    def retry_after(self, response: HttpResponse) -> float | None:
        """Seconds a throttling answer asks for (None: the router's default); `Retry-After`."""
        return parse_retry_after(response.headers)

    def not_a_success(self, response: HttpResponse, missing: str) -> ProviderUnavailable:
        """A 2xx without the provider's success answer (a wrong `base_url`, say): fail over."""
        return ProviderUnavailable(
            self.name,
            f"HTTP {response.status} without {missing} (is base_url right?): {response.text[:200]}",
            status_code=response.status,
        )

    def classify_error(self, response: HttpResponse) -> ProviderError:
        """Map an error response to the outcome table in DESIGN.md.

        Providers override this for codes of their own and call it for the rest.
        """
        status, detail = response.status, self.describe_error(response)
        if status == 429:
            return ProviderThrottled(self.name, detail, retry_after=self.retry_after(response))
        if status in (401, 403):
            return ProviderAuthError(self.name, detail, status_code=status)
        if status in (400, 413, 422):
            return MessageRejected(self.name, detail, status_code=status)
        # 500 and 504 may come after the provider queued the message; 502 and
        # 503 come from a front proxy that most likely never passed it on.
        return ProviderUnavailable(
            self.name, detail, status_code=status, ambiguous=status in (500, 504)
        )

    def describe_error(self, response: HttpResponse) -> str:
        """A short human description of an error response (never credentials)."""
        return response.text or f"HTTP {response.status}"

    async def send(self, message_id: str, email: Email) -> SendResult:
        request = self.build_request(message_id, email)
        response = await self._perform(request)
        if response.status >= 300:
            raise self.classify_error(response)
        return self.parse_success(response)

    async def _perform(self, request: HttpRequest) -> HttpResponse:
        if self.simulated_failure is SimulatedFailure.ERROR:
            return HttpResponse(503, {}, b"simulated failure (drill): service unavailable")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                if self.simulated_failure is SimulatedFailure.TIMEOUT:
                    await asyncio.Event().wait()  # hangs like a provider that never answers
                session = self._get_session()
                headers = request.headers
                data: bytes | aiohttp.FormData | None = request.data
                if request.json is not None:
                    # orjson: a fifth of the CPU json and aiohttp's JSON payload cost.
                    headers = {"Content-Type": "application/json", **headers}
                    data = orjson.dumps(request.json)
                elif request.form is not None:
                    data = request.form
                async with session.request(
                    request.method, request.url, headers=headers, data=data
                ) as resp:
                    body = redacted(await resp.read(), self._secret_forms)
                    return HttpResponse(resp.status, dict(resp.headers), body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise ProviderUnavailable(self.name, f"cannot connect: {exc}") from exc
        except TimeoutError as exc:
            waited = time.monotonic() - started
            raise ProviderUnavailable(
                self.name, f"no answer within {waited:.1f}s", ambiguous=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                self.name, f"connection failed mid-request: {exc!r}", ambiguous=True
            ) from exc

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.timeout, 5.0)),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


REDACTED = b"[redacted]"


def secret_forms(settings: BaseModel) -> tuple[bytes, ...]:
    """Each form in which a provider's credentials could come back in its answers.

    Providers sometimes echo what they were sent (AWS, failing a signature,
    answers with the canonical request it expected, session token
    included). Whatever comes back is kept in attempts, events and log
    lines, so every answer is cleaned of these first: each secret setting
    as it is and in base64, and the basic-auth pairs providers use
    (`api:<key>`, `<key>:<secret>`), longest first.
    """
    secrets = [
        value.get_secret_value()
        for name in type(settings).model_fields
        if isinstance(value := getattr(settings, name), SecretStr) and value.get_secret_value()
    ]
    forms = set()
    for secret in secrets:
        forms |= {secret, _b64(secret), _b64(f"api:{secret}")}
        forms |= {_b64(f"{secret}:{other}") for other in secrets if other != secret}
    return tuple(f.encode() for f in sorted(forms, key=len, reverse=True))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def redacted(body: bytes, forms: tuple[bytes, ...]) -> bytes:
    for form in forms:
        if form in body:
            body = body.replace(form, REDACTED)
    return body


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), capped."""
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return clamp_wait(seconds)


def seconds_header(headers: Mapping[str, str], name: str) -> float | None:
    """A header holding seconds to wait (a rate limit's reset), capped; None if absent or bad."""
    value = _header(headers, name)
    if value is None:
        return None
    try:
        return clamp_wait(float(value))
    except ValueError:
        return None


def clamp_wait(seconds: float) -> float:
    """A wait a provider asked for, kept within 0 and `MAX_RETRY_AFTER_SECONDS`."""
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
