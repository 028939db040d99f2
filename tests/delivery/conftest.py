"""A real worker delivering from a real store to the fake providers over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from mailgate.config import Settings
from mailgate.delivery import ProviderPool, Worker
from mailgate.metrics import Metrics
from mailgate.store import MessageView, Store
from tests.helpers import Fakes, email, eventually, make_settings, new_message

DONE = ("sent", "failed", "cancelled")


@dataclass
class Harness:
    settings: Settings
    store: Store
    metrics: Metrics
    pool: ProviderPool
    worker: Worker
    fakes: Fakes
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.worker.stop()
            await self.task
            self.task = None

    async def send(
        self, *, provider: str | None = None, send_at: datetime | None = None, **fields: Any
    ) -> str:
        item = new_message(email=email(**fields), send_at=send_at, forced_provider=provider)
        await self.store.accept(item)
        return item.id

    async def message(self, message_id: str) -> MessageView:
        return await self.store.get_message("default", message_id)

    async def wait(self, message_id: str, *statuses: str, timeout: float = 10) -> MessageView:
        """The message once its status is one of `statuses` (default: any final one)."""
        wanted = statuses or DONE

        async def reached() -> bool:
            return (await self.message(message_id)).status in wanted

        await eventually(reached, timeout=timeout)
        return await self.message(message_id)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


Run = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def run(database_url: str, fakes: Fakes, store: Store) -> AsyncIterator[Run]:
    """`await run(**sections)`: a started worker; `sections` override settings keys.

    `providers=` replaces the provider list; `provider_overrides=` is applied
    to both default providers (primary: SendGrid, backup: Mailgun).
    """
    harnesses: list[Harness] = []
    stores: list[Store] = []

    async def start(
        *, start: bool = True, provider_overrides: dict[str, Any] | None = None, **sections: Any
    ) -> Harness:
        if "providers" not in sections:
            sections["providers"] = fakes.providers(**(provider_overrides or {}))
        own_store = "database" in sections  # its own engine, with its own database settings
        settings = make_settings(database_url, fakes, **sections)
        the_store = Store(settings.database) if own_store else store
        if own_store:
            stores.append(the_store)
        metrics = Metrics()
        pool = ProviderPool(settings, the_store, metrics)
        worker = Worker(settings, the_store, pool, metrics)
        harness = Harness(settings, the_store, metrics, pool, worker, fakes)
        harnesses.append(harness)
        if start:
            harness.start()
        return harness

    yield start
    for harness in harnesses:
        await harness.stop()
        await harness.pool.close()
    for own in stores:
        await own.close()
