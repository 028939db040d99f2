"""The worker rides out a store that stops taking writes, and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from mailgate.store.engine import sqlite_path
from tests.delivery.conftest import Run
from tests.helpers import eventually


async def test_a_locked_store_pauses_delivery_without_losing_anything(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    h = await run(database={"busy_timeout_seconds": 0.1})
    path = sqlite_path(h.settings.database.url)
    if path is None:
        pytest.skip("holding the database lock from outside is a SQLite drill")
    h.fakes.sendgrid.behaviour.latency = 0.2
    ids = [await h.send() for _ in range(30)]
    await eventually(lambda: h.fakes.sendgrid.requests > 0)

    # Another process takes SQLite's write lock while sends are in flight:
    # their ends cannot be stored, and nothing new can be claimed.
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    await asyncio.sleep(1.0)
    blocker.execute("ROLLBACK")
    blocker.close()

    async def all_sent() -> bool:
        return {(await h.message(i)).status for i in ids} == {"sent"}

    await eventually(all_sent, timeout=20)
    assert sorted(h.fakes.sendgrid.counts) == sorted(ids)
    assert set(h.fakes.sendgrid.counts.values()) == {1}
    assert h.task is not None and not h.task.done()
    logged = [r.getMessage() for r in caplog.records]
    assert any("cannot store the round's end" in line for line in logged)  # the drill bit
