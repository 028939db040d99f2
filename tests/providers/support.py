"""What the shared provider tests need from each provider: a `ProviderCase`.

A case wraps one adapter and its fake (a local server speaking the
provider's real wire format). The shared tests in `test_common.py` drive it
in provider-neutral terms: make the fake fail in a class of ways
(`Failure`), make it hang, read back what it took as a `View`. Each
provider's case lives in `tests/providers/cases/<name>.py` and exposes
`open_case()`, an async context manager that starts the fake and yields the
case.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from email.utils import getaddresses
from enum import StrEnum
from typing import Any, ClassVar, TypedDict

from mailgate.message import Address, Email
from mailgate.providers import Provider
from mailgate.providers.fakes import FakeProvider, Received

TIMEOUT = 5.0
"""Attempt timeout the shared tests give adapters: generous, so a loaded machine is no failure.

Tests that make a fake hang pass a short timeout of their own.
"""
EMAIL = Email(
    sender=Address("a@example.com"), to=(Address("b@example.org"),), subject="s", text="t"
)
"""The smallest message: what the quirk tests send when the message does not matter."""
WRONG_SECRET = "wrong-secret-value"
"""Part of every bad credential a case builds; no error may repeat it."""


def email(**fields: Any) -> Email:
    """`EMAIL` with `fields` changed."""
    return replace(EMAIL, **fields)


class Failure(StrEnum):
    """A class of failure, each rendered by a fake in its provider's own words."""

    REJECTED = "rejected"
    """The message itself is refused (MessageRejected)."""
    AUTH = "auth"
    """Our credentials are refused (ProviderAuthError)."""
    THROTTLED = "throttled"
    """Slow down (ProviderThrottled; with a wait time where the provider gives one)."""
    UNAVAILABLE = "unavailable"
    """Trouble on the provider's side; it did not take the message (ProviderUnavailable)."""
    SERVER_ERROR = "server_error"
    """An error after which the provider may have taken it (ProviderUnavailable, ambiguous)."""


class View(TypedDict):
    """What a provider took, in one shape for every provider."""

    provider_message_id: str
    mailgate_id: str | None
    sender: dict[str, str]
    to: list[dict[str, str]]
    cc: list[dict[str, str]]
    bcc: list[dict[str, str]]
    reply_to: list[dict[str, str]]
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str]
    """Custom headers only (without X-Mailgate-Id, which `mailgate_id` covers)."""
    attachments: list[dict[str, str]]
    """Each `{"filename", "content_type", "content"}`, content base64."""
    tags: list[str]
    metadata: dict[str, str]
    """Without mailgate's own id."""


class ProviderCase(ABC):
    """One provider's adapter and fake, as the shared tests use them."""

    name: ClassVar[str]
    tags_kept: ClassVar[int | None] = None
    """How many tags the provider keeps per message (None: all)."""
    retry_after_given: ClassVar[bool] = True
    """Whether the provider says how long to wait when it throttles."""
    hang_timeout: ClassVar[float] = 0.2
    """Attempt timeout for a test that makes the fake hang: room for everything before it."""

    @abstractmethod
    def provider(self, *, timeout: float = TIMEOUT, good_credentials: bool = True) -> Provider:
        """A fresh adapter pointed at the fake (with wrong credentials on request)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The `[[providers]]` table (good credentials) that reaches this fake."""

    @abstractmethod
    def unreachable(self) -> Provider:
        """An adapter pointed where nothing listens (connections are refused)."""

    @abstractmethod
    def fail(self, failure: Failure, *, retry_after: int | None = None) -> None:
        """Make the fake answer every send with this failure from now on."""

    @abstractmethod
    def hang(self) -> None:
        """Make the fake take the message and never answer."""

    @abstractmethod
    def taken(self) -> list[View]:
        """What the fake took, oldest first."""

    @abstractmethod
    def requests(self) -> int:
        """How many send requests reached the fake (taken or not)."""


OpenCase = Callable[[], AbstractAsyncContextManager[ProviderCase]]


class HttpCase(ProviderCase):
    """A case for an HTTP provider whose fake is a `FakeProvider`.

    Subclasses say how each `Failure` looks on this provider's wire
    (`failures`: HTTP status and, where the provider has them, an error code
    or name), how to build the adapter, and how to read back what the fake
    took (`view`).
    """

    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (400, None),
        Failure.AUTH: (401, None),
        Failure.THROTTLED: (429, None),
        Failure.UNAVAILABLE: (503, None),
        Failure.SERVER_ERROR: (500, None),
    }

    def __init__(self, fake: FakeProvider, url: str) -> None:
        self.fake = fake
        self.url = url

    @abstractmethod
    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        """The adapter for this provider."""

    @abstractmethod
    def view(self, received: Received) -> View:
        """What one taken message looked like, in the shared shape."""

    def provider(self, *, timeout: float = TIMEOUT, good_credentials: bool = True) -> Provider:
        return self.make(base_url=self.url, timeout=timeout, good_credentials=good_credentials)

    def unreachable(self) -> Provider:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # nothing listens once the socket closes
        return self.make(
            base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT, good_credentials=True
        )

    def fail(self, failure: Failure, *, retry_after: int | None = None) -> None:
        status, error = self.failures[failure]
        self.fake.behaviour.update({"status": status, "error": error})
        if retry_after is not None:
            self.fake.behaviour.retry_after = str(retry_after)

    def hang(self) -> None:
        self.fake.behaviour.hang = True

    def taken(self) -> list[View]:
        return [self.view(r) for r in self.fake.received]

    def requests(self) -> int:
        return self.fake.requests


def addresses(values: list[Any]) -> list[dict[str, str]]:
    """`{"email", "name"?}` dicts from `Name <a@b>` strings or `{email, name}` objects."""
    out: list[dict[str, str]] = []
    for value in values:
        if isinstance(value, dict):
            email = str(value.get("email") or value.get("Email") or value.get("address"))
            name = value.get("name") or value.get("Name")
            out.append({"email": email, "name": str(name)} if name else {"email": email})
            continue
        for name, email in getaddresses([value]):
            out.append({"email": email, "name": name} if name else {"email": email})
    return out
