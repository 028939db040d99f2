"""A rate limit holds across worker processes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path

import pytest

from mailgate.config import DatabaseSettings
from mailgate.store import Store
from tests.e2e.processes import mailgate, write_config
from tests.helpers import Fakes, eventually, new_message

pytestmark = pytest.mark.slow

RATE = 40.0


async def test_a_rate_limit_holds_across_two_worker_processes(tmp_path: Path, fakes: Fakes) -> None:
    url = f"sqlite:///{tmp_path}/limits.db"
    providers = fakes.providers(rate_limit=f"{RATE:g}/s")[:1]  # the primary alone
    config = write_config(tmp_path / "mailgate.toml", url, providers, poll_interval_seconds=0.1)
    store = Store(DatabaseSettings(url=url))
    await store.migrate()
    async with (
        mailgate("worker", "--config", str(config), cwd=tmp_path) as one,
        mailgate("worker", "--config", str(config), cwd=tmp_path) as two,
    ):
        for worker in (one, two):
            await worker.wait_for(re.compile("started"))
        await eventually(lambda: _at_least(store.live_workers(within_seconds=3), 2), timeout=10)
        await asyncio.sleep(1.5)  # both have counted each other
        n = 480
        await store.accept_many([new_message() for _ in range(n)])
        await eventually(lambda: len(fakes.sendgrid.received) >= n, timeout=60, interval=0.2)
        assert await one.stop() == 0 and await two.stop() == 0
    times = sorted(fakes.sendgrid.request_times)
    # Past the first second (each worker's small burst), the pace is the limit.
    steady = [t for t in times if t >= times[0] + 1.0]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    # The limit must hold (5 % over at most); a loaded machine may send a little below it
    # (a CI run measured 37/s), which the limit does not promise against.
    assert RATE * 0.85 <= rate <= RATE * 1.05, rate
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= RATE * 1.05 + 2, busiest  # no second much above it either
    await store.close()


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n
