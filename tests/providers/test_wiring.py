"""Every provider type, from its `[[providers]]` table to a sent message, through the worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailgate.delivery import ProviderPool, Worker
from mailgate.metrics import Metrics
from mailgate.store import Store
from tests.helpers import eventually, make_settings, new_message
from tests.providers.support import ProviderCase


async def test_a_configured_provider_sends_and_is_probed(
    case: ProviderCase, tmp_path: Path
) -> None:
    table = {"name": "only", "health_probe_seconds": 60, **case.config()}
    settings = make_settings(f"sqlite:///{tmp_path}/mailgate.db", providers=[table])
    store = Store(settings.database)
    await store.migrate()
    metrics = Metrics()
    pool = ProviderPool(settings, store, metrics)
    worker = Worker(settings, store, pool, metrics)
    running = asyncio.create_task(worker.run())
    try:
        item = new_message()
        await store.accept(item)

        async def settled() -> bool:
            view = await store.get_message("default", item.id)
            state = (await store.provider_states()).get("only")
            return view.status == "sent" and state is not None and state.probed_at is not None

        await eventually(settled, timeout=15)
    finally:
        worker.stop()
        await running
        await pool.close()
    view = await store.get_message("default", item.id)
    state = (await store.provider_states())["only"]
    await store.close()
    [taken] = case.taken()
    assert view.provider == "only" and taken["mailgate_id"] == item.id
    assert view.provider_message_id == taken["provider_message_id"]
    assert state.probe_error is None  # the health probe reached the fake and passed
