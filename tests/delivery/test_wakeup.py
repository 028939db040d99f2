"""Work accepted by another process wakes an idle worker at once (PostgreSQL LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.store import Store
from tests.delivery.conftest import Run
from tests.helpers import new_message


async def test_a_notification_wakes_an_idle_worker(run: Run, store: Store) -> None:
    if store.db.is_sqlite:
        pytest.skip("SQLite workers in other processes poll; there is no NOTIFY")
    # Its own store (a separate engine, as another process would have), and a
    # poll interval far longer than the wait below: only a notification helps.
    h = await run(delivery={"poll_interval_seconds": 60}, database={"busy_timeout_seconds": 2})
    await asyncio.sleep(0.5)  # it has looked, found nothing, and sleeps
    item = new_message()
    await store.accept(item)  # through the fixture's store, not the worker's
    view = await h.wait(item.id, timeout=10)
    assert view.status == "sent"
