"""Scale-out on PostgreSQL with real processes: many workers, kills, a database restart.

Every test counts: each accepted message must end `sent`, reach the fake
provider, and reach it twice only if it was in flight in a killed worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, event, func, select, text

from mailgate.store import Store, queue, utcnow
from mailgate.store.tables import messages, nodes
from tests.e2e.processes import KEY, URL, Process, mailgate, write_config
from tests.helpers import Fakes, eventually, message, new_message

pytestmark = pytest.mark.slow

WORKER_SETTINGS: dict[str, Any] = {
    "concurrency": 50,
    "poll_interval_seconds": 0.5,
    "lease_seconds": 2,
    "retry_initial_seconds": 0.2,
}


async def accept(store: Store, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        items = [new_message() for _ in range(min(1000, count - start))]
        await store.accept_many(items)
        ids += [item.id for item in items]
    return ids


async def statuses(store: Store) -> dict[str, str]:
    query = select(messages.c.id, messages.c.status)
    return await store.db.read(lambda conn: {r.id: r.status for r in conn.execute(query)})


def worker_pid(worker_id: str) -> int:
    """The process id in a worker id (host:pid:suffix)."""
    return int(worker_id.split(":")[-2])


async def all_done(store: Store) -> bool:
    return set((await statuses(store)).values()) <= {"sent", "failed"}


def received(fakes: Fakes) -> Counter[str]:
    return fakes.sendgrid.counts + fakes.mailgun.counts


async def histories(store: Store, ids: set[str]) -> str:
    """The events and attempts of these messages, for a failed count to explain itself."""
    lines: list[str] = []
    for message_id in sorted(ids)[:5]:
        view = await store.get_message("default", message_id)
        lines.append(f"{message_id}:")
        lines += [f"  event {e.at.isoformat()} {e.type} {e.detail}" for e in view.events]
        lines += [
            f"  attempt {a.started_at.isoformat()} {a.provider} {a.outcome} {a.error}"
            for a in view.attempts
        ]
    return "\n".join(lines)


async def test_four_workers_send_each_message_exactly_once(
    tmp_path: Path, fakes: Fakes, pg_store: Store
) -> None:
    config = write_config(
        tmp_path / "mailgate.toml", pg_store.settings.url, fakes.providers(), **WORKER_SETTINGS
    )
    ids = await accept(pg_store, 10_000)
    workers = [mailgate("worker", "--config", str(config), cwd=tmp_path) for _ in range(4)]
    async with workers[0] as w1, workers[1] as w2, workers[2] as w3, workers[3] as w4:
        await eventually(lambda: all_done(pg_store), timeout=180, interval=0.5)
        for worker in (w1, w2, w3, w4):
            assert await worker.stop() == 0
    assert set((await statuses(pg_store)).values()) == {"sent"}
    counts = received(fakes)
    assert sorted(counts) == sorted(ids)
    doubles = {i for i, n in counts.items() if n > 1}
    assert not doubles, await histories(pg_store, doubles)
    workers_seen = select(func.count()).select_from(nodes).where(nodes.c.kind == "worker")
    assert await pg_store.db.read(lambda conn: conn.execute(workers_seen).scalar()) == 4


async def test_workers_killed_again_and_again_lose_nothing(
    tmp_path: Path, fakes: Fakes, pg_store: Store
) -> None:
    config = write_config(
        tmp_path / "mailgate.toml", pg_store.settings.url, fakes.providers(), **WORKER_SETTINGS
    )
    fakes.sendgrid.behaviour.latency = 0.05  # sends are in flight when a kill comes
    ids = await accept(pg_store, 6_000)
    killed: set[int] = set()
    kills = 0
    async with contextlib.AsyncExitStack() as stack:
        running: list[Process] = [
            await stack.enter_async_context(
                mailgate("worker", "--config", str(config), cwd=tmp_path)
            )
            for _ in range(4)
        ]
        while not await all_done(pg_store) and kills < 6:
            await asyncio.sleep(1.5)
            victim = running.pop(random.randrange(len(running)))
            victim.kill()
            await victim.proc.wait()
            kills += 1
            killed.add(victim.proc.pid)
            running.append(
                await stack.enter_async_context(
                    mailgate("worker", "--config", str(config), cwd=tmp_path)
                )
            )
        await eventually(lambda: all_done(pg_store), timeout=180, interval=0.5)
        for worker in running:
            await worker.wait_for(re.compile("started"))  # a fresh one may still be starting
            assert await worker.stop() == 0
    assert kills >= 3, "the run ended before enough kills to prove anything"
    assert set((await statuses(pg_store)).values()) == {"sent"}
    counts = received(fakes)
    assert set(counts) == set(ids)  # nothing lost
    doubles = {i for i, n in counts.items() if n > 1}
    # Doubled only if in flight in a killed worker: the store's own record says whose
    # lease was taken back (asking right after the kill would race the survivors'
    # reclaim, which may already have queued and sent the message again).
    for message_id in doubles:
        view = await pg_store.get_message("default", message_id)
        from_killed = [
            e
            for e in view.events
            if e.type == "reclaimed" and worker_pid(e.detail["worker"]) in killed
        ]
        assert from_killed, await histories(pg_store, {message_id})
        assert any(a.outcome == "ambiguous" for a in view.attempts)


def _postgres_restart_command() -> list[str] | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


async def test_a_postgres_restart_loses_no_accepted_message(
    tmp_path: Path, fakes: Fakes, pg_store: Store
) -> None:
    restart = _postgres_restart_command()
    if restart is None:
        pytest.skip("no pg_ctlcluster to restart PostgreSQL with")
    config = write_config(
        tmp_path / "mailgate.toml", pg_store.settings.url, fakes.providers(), **WORKER_SETTINGS
    )
    accepted: list[str] = []
    answers: Counter[int] = Counter()
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            stop = asyncio.Event()

            async def keep_sending() -> None:
                while not stop.is_set():
                    response = await client.post("/v1/messages", json=message())
                    answers[response.status_code] += 1
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    await asyncio.sleep(0.01)

            sender = asyncio.create_task(keep_sending())
            await asyncio.sleep(2)
            before = len(accepted)
            await asyncio.to_thread(subprocess.run, restart, check=True, capture_output=True)
            await asyncio.sleep(3)
            stop.set()
            await sender
            assert len(accepted) > before  # accepting again after the restart

            async def everything_sent() -> bool:
                return set(received(fakes)) >= set(accepted)

            await eventually(everything_sent, timeout=60, interval=0.5)
            assert (await client.get("/readyz")).status_code == 200
        assert server.proc.returncode is None  # recovered without a restart of its own
        assert await server.stop() == 0
    assert set(answers) <= {202, 503}, answers  # refused cleanly while down, never a 500
    counts = received(fakes)
    assert set(accepted) <= set(counts)
    assert all(counts[i] == 1 for i in accepted)


async def test_signals_stop_a_worker_cleanly(tmp_path: Path, fakes: Fakes, pg_store: Store) -> None:
    config = write_config(
        tmp_path / "mailgate.toml", pg_store.settings.url, fakes.providers(), **WORKER_SETTINGS
    )
    async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:
        await worker.wait_for(re.compile("started"))
        assert await worker.stop(signal.SIGINT) == 0


_BULK_MESSAGES = """
INSERT INTO messages (id, tenant_id, status, envelope, next_attempt_at, window_start, rounds,
                      created_at, updated_at)
SELECT 'msg_' || lpad(g::text, 26, '0'), 'default', 'queued',
       '{"from": {"email": "ada@example.com"}, "to": [{"email": "bob@example.org"}], "cc": [],
         "bcc": [], "reply_to": [], "subject": "Hello", "tags": [], "metadata": {}}'::json,
       now() - interval '1 day' + g * interval '1 millisecond', now(), 0, now(), now()
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
"""
_BULK_BODIES = """
INSERT INTO message_bodies (message_id, body)
SELECT 'msg_' || lpad(g::text, 26, '0'),
       '{"text": "Hi", "html": null, "headers": {}, "attachments": []}'::json
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
"""


async def bulk_queue(store: Store, first: int, last: int) -> None:
    """Queue messages first..last straight in SQL (a million through the API takes minutes).

    In transactions of 50,000 rows, each well inside the store's statement
    timeout even on a loaded machine.
    """

    def insert(start: int, end: int) -> Callable[[Connection], None]:
        def run(conn: Connection) -> None:
            for statement in (_BULK_MESSAGES, _BULK_BODIES):
                conn.execute(text(statement), {"first": start, "last": end})

        return run

    for start in range(first, last + 1, 50_000):
        await store.db.write(insert(start, min(start + 49_999, last)))
    await store.db.write(lambda conn: conn.execute(text("ANALYZE messages")))


async def claim_buffers(store: Store) -> tuple[int, str]:
    """Buffers one claim of 100 touches, and how it found its rows (rolled back)."""
    engine = store.db._async_engine
    assert engine is not None
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE MESSAGES"):
            captured.append((statement, params))

    now = utcnow()
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with engine.connect() as conn:
            async with conn.begin() as transaction:  # a real claim: warms the cache
                await conn.run_sync(
                    lambda c: queue.claim(c, owner="probe", now=now, lease_until=now, limit=100)
                )
                await transaction.rollback()
            statement, params = captured[-1]
            async with conn.begin() as transaction:
                result = await conn.exec_driver_sql(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", params
                )
                plan: Any = result.scalar()
                await transaction.rollback()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    top = plan[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"], json.dumps(plan)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)  # a million rows queued, then 25,000 delivered: a minute or two
async def test_a_million_queued_messages(tmp_path: Path, fakes: Fakes, pg_store: Store) -> None:
    await bulk_queue(pg_store, 1, 1_000)
    small, _ = await claim_buffers(pg_store)
    await bulk_queue(pg_store, 1_001, 1_000_000)
    large, large_plan = await claim_buffers(pg_store)
    # The claim walks the due index from its oldest entry: no sort, no scan of
    # the table, so its work does not grow with the queue.
    assert "ix_messages_due" in large_plan
    assert '"Sort"' not in large_plan and "Seq Scan" not in large_plan
    # A thousand times the rows, and only deeper B-trees to update (measured:
    # 1,355 buffers then 2,143); reading the queue would be tens of thousands.
    assert large < small * 3, (small, large)

    # A worker draining the big queue keeps its memory flat.
    config = write_config(
        tmp_path / "mailgate.toml", pg_store.settings.url, fakes.providers(), concurrency=200
    )
    async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:
        await eventually(lambda: fakes.total() >= 5_000, timeout=120, interval=0.2)
        early = rss_kb(worker.proc.pid)
        await eventually(lambda: fakes.total() >= 25_000, timeout=120, interval=0.2)
        late = rss_kb(worker.proc.pid)
        assert await worker.stop() == 0
    assert late - early < 25_000, (early, late)  # kB
