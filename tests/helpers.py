"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mailgate.config import Settings
from mailgate.message import Address, Email, new_id
from mailgate.providers.fakes import FakeMailgun, FakeSendGrid
from mailgate.store import NewMessage, Tenant, utcnow

SENDGRID_KEY = "SG.test-key"
MAILGUN_KEY = "key-test"
MAILGUN_DOMAIN = "mg.example.com"


@dataclass
class Fakes:
    sendgrid: FakeSendGrid
    mailgun: FakeMailgun
    sendgrid_url: str
    mailgun_url: str

    def providers(self, **overrides: Any) -> list[dict[str, Any]]:
        """Two providers: `primary` (SendGrid, priority 1) and `backup` (Mailgun, priority 2)."""
        common = {"breaker_min_calls": 1000} | overrides
        return [
            {
                "name": "primary",
                "type": "sendgrid",
                "api_key": SENDGRID_KEY,
                "base_url": self.sendgrid_url,
                "priority": 1,
                **common,
            },
            {
                "name": "backup",
                "type": "mailgun",
                "api_key": MAILGUN_KEY,
                "domain": MAILGUN_DOMAIN,
                "base_url": self.mailgun_url,
                "priority": 2,
                **common,
            },
        ]

    def total(self) -> int:
        return len(self.sendgrid.received) + len(self.mailgun.received)


def make_settings(database_url: str, fakes: Fakes | None = None, **sections: Any) -> Settings:
    """Settings for a test: fast retries, short timeouts; `sections` override whole keys."""
    delivery = {
        "attempt_timeout_seconds": 2,
        "retry_initial_seconds": 0.2,
        "retry_max_seconds": 1,
        "poll_interval_seconds": 0.05,
        "lease_seconds": 10,
    } | sections.pop("delivery", {})
    providers = sections.pop("providers", fakes.providers() if fakes is not None else [])
    return Settings(
        database={"url": database_url, "busy_timeout_seconds": 2} | sections.pop("database", {}),
        delivery=delivery,
        providers=providers,
        **sections,
    )


def email(**fields: Any) -> Email:
    """A valid `Email` as the store keeps it, with `fields` replacing defaults."""
    values: dict[str, Any] = {
        "sender": Address("ada@example.com", "Ada"),
        "to": (Address("bob@example.org"),),
        "subject": "Hello",
        "text": "Hi",
    }
    values.update(fields)
    return Email(**values)


def new_message(**fields: Any) -> NewMessage:
    """A `NewMessage` ready to accept, with `fields` replacing defaults."""
    values: dict[str, Any] = {
        "id": new_id("msg"),
        "tenant_id": "default",
        "email": email(),
        "created_at": utcnow(),
    }
    values.update(fields)
    return NewMessage(**values)


def tenant(**fields: Any) -> Tenant:
    """A `Tenant` to store, with `fields` replacing defaults (no rules, enabled)."""
    now = utcnow()
    values: dict[str, Any] = {
        "id": new_id("ten"),
        "name": f"tenant-{new_id('n')[-8:].lower()}",
        "enabled": True,
        "sender_domains": (),
        "default_from": None,
        "providers": None,
        "rate_limit": None,
        "daily_quota": None,
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return Tenant(**values)


def message(**fields: Any) -> dict[str, Any]:
    """A valid message body for the API, with `fields` replacing defaults."""
    body: dict[str, Any] = {
        "from": "Ada Lovelace <ada@example.com>",
        "to": ["bob@example.org"],
        "subject": "Hello",
        "text": "Hi Bob",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until `check()` (sync or async) is true; fail after `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
