"""A tenant's rate limit and daily quota hold across API processes (`serve --workers 2`)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from mailgate.store import Store
from mailgate.store.tables import messages
from tests.e2e.processes import KEY, URL, mailgate
from tests.helpers import message

pytestmark = pytest.mark.slow

RATE = 50
CONNECTIONS = 32


@asynccontextmanager
async def two_api_processes(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[str, str]]:
    """`serve --workers 2 --no-worker` on `database_url`: its URL and admin key."""
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n')
    args = ("serve", "--workers", "2", "--no-worker", "--port", "0", "--config", str(config))
    async with mailgate(*args, cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        await server.wait_for(re.compile("with 2 API processes"))
        yield url, key
        assert await server.stop() == 0


async def tenant_key(url: str, admin: str, **rules: Any) -> tuple[str, str]:
    """A new tenant with `rules` and a send+read key of it: (tenant id, key)."""
    headers = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession(url, headers=headers) as session:
        async with session.post("/v1/tenants", json={"name": "limited", **rules}) as r:
            assert r.status == 201, await r.text()
            tenant_id = (await r.json())["id"]
        body = {"name": "app", "scopes": ["send", "read"], "tenant_id": tenant_id}
        async with session.post("/v1/keys", json=body) as r:
            assert r.status == 201
            return tenant_id, (await r.json())["key"]


async def test_a_rate_limit_holds_across_two_api_processes(tmp_path: Path) -> None:
    async with two_api_processes(tmp_path, f"sqlite:///{tmp_path}/limits.db") as (url, admin):
        _, key = await tenant_key(url, admin, rate_limit=f"{RATE}/s")
        passed: list[float] = []
        limited = 0
        retry_after: set[str] = set()
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:
            stop = time.monotonic() + 5.5

            async def hammer() -> None:
                nonlocal limited
                while time.monotonic() < stop:
                    async with session.get("/v1/me") as r:
                        await r.read()
                        if r.status == 200:
                            passed.append(time.monotonic())
                        else:
                            assert r.status == 429, await r.text()
                            limited += 1
                            retry_after.add(r.headers["Retry-After"])

            await asyncio.gather(*(hammer() for _ in range(CONNECTIONS)))
    # Whole seconds after the first half second (connections opening, both processes warm).
    start = passed[0] + 0.5
    span = 4.0
    rate = sum(1 for t in passed if start <= t < start + span) / span
    assert RATE * 0.95 <= rate <= RATE * 1.05, rate
    assert limited > 10 * len(passed)  # the load was well above the limit
    assert retry_after == {"1"}


async def test_a_daily_quota_is_exact_across_two_api_processes(
    tmp_path: Path, database_url: str, store: Store
) -> None:
    quota, tries = 300, 500
    async with two_api_processes(tmp_path, database_url) as (url, admin):
        tenant_id, key = await tenant_key(url, admin, daily_quota=quota)
        codes: list[str] = []
        # A connection per request, so the kernel spreads them over both processes.
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, force_close=True)
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

            async def one() -> None:
                async with session.post("/v1/messages", json=message()) as r:
                    body = await r.json()
                    codes.append("accepted" if r.status == 202 else body["error"]["code"])

            await asyncio.gather(*(one() for _ in range(tries)))
        assert codes.count("accepted") == quota
        assert codes.count("quota_exceeded") == tries - quota
        async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {admin}"}) as s:
            async with s.get(f"/v1/tenants/{tenant_id}") as r:
                assert (await r.json())["used_today"] == quota
    query = select(func.count()).select_from(messages).where(messages.c.tenant_id == tenant_id)
    assert await store.db.read(lambda conn: conn.execute(query).scalar_one()) == quota
