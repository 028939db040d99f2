"""Migrations, and what the store does when the database will not take a write."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, select

from mailgate.config import DatabaseSettings
from mailgate.errors import StoreUnavailable
from mailgate.store import Store, utcnow
from mailgate.store import migrate as migrations
from mailgate.store.engine import driver_url
from mailgate.store.tables import messages, metadata
from tests.store.test_queue import count, new


async def test_schema_matches_the_tables(store: Store) -> None:
    assert await migrations.current(store.db) == migrations.head()
    diff = await store.db.read(
        lambda conn: compare_metadata(MigrationContext.configure(conn), metadata)
    )
    assert diff == []


async def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path}/db.sqlite")
    stores = [Store(settings) for _ in range(3)]
    assert await migrations.current(stores[0].db) is None
    await asyncio.gather(*(s.migrate() for s in stores))
    for s in stores:
        assert await migrations.current(s.db) == migrations.head()
        await s.close()


def test_urls_map_to_asyncio_drivers() -> None:
    assert driver_url("sqlite:///a/b.db").drivername == "sqlite+pysqlite"
    assert driver_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="file path"):
        driver_url("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        driver_url("mysql://u@h/db")


async def test_a_locked_database_is_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = Store(DatabaseSettings(url=f"sqlite:///{path}", busy_timeout_seconds=0.2))
    await store.migrate()
    kept = new()
    await store.accept(kept)

    # Another process holds SQLite's write lock past our busy timeout.
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.accept(new())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert await count(store) == 1
    assert (await store.get_message("default", kept.id)).status == "queued"
    await store.accept(new())
    assert await count(store) == 2
    await store.close()


async def test_claims_read_the_due_index_not_the_whole_queue(tmp_path: Path) -> None:
    """A claim must take the oldest due rows from the due index, never sort the queue.

    Nothing functional shows the difference; the query plan does (a claim of
    100 from 20,000 waiting rows took 14 ms with a sort, 5 ms without).
    """
    path = tmp_path / "db.sqlite"
    store = Store(DatabaseSettings(url=f"sqlite:///{path}"))
    await store.migrate()
    await store.accept_many([new() for _ in range(50)])
    statements: list[tuple[str, object]] = []
    engine = store.db._write_engine
    assert engine is not None

    def capture(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE MESSAGES"):
            statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    assert len(await store.claim("w", limit=10, lease_seconds=30)) == 10
    await store.close()
    [(statement, params)] = statements
    with sqlite3.connect(path) as raw:
        plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", params)]  # type: ignore[arg-type]
    assert any("ix_messages_due" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


@asynccontextmanager
async def turn_held_elsewhere(path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding the writers' turn (`<db>-lock`) until its stdin closes."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path) + '-lock'!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert await holder.stdout.readline() == b"held\n"
    try:
        yield holder
    finally:
        if holder.returncode is None:
            holder.stdin.close()
        await holder.wait()


async def sqlite_store(tmp_path: Path, **settings: Any) -> tuple[Store, Path]:
    path = tmp_path / "db.sqlite"
    store = Store(DatabaseSettings(url=f"sqlite:///{path}", **settings))
    await store.migrate()
    return store, path


async def test_a_writer_waits_its_turn_and_writes_when_the_other_process_is_done(
    tmp_path: Path,
) -> None:
    store, path = await sqlite_store(tmp_path)
    async with turn_held_elsewhere(path) as holder:
        accepting = asyncio.create_task(store.accept(new()))
        await asyncio.sleep(0.3)
        assert not accepting.done()  # waiting for the turn, not failing
        assert holder.stdin is not None
        holder.stdin.close()
        await asyncio.wait_for(accepting, timeout=5)
    assert await count(store) == 1
    await store.close()


async def test_a_writer_killed_holding_the_turn_frees_it(tmp_path: Path) -> None:
    store, path = await sqlite_store(tmp_path)
    async with turn_held_elsewhere(path) as holder:
        accepting = asyncio.create_task(store.accept(new()))
        await asyncio.sleep(0.2)
        assert not accepting.done()
        holder.kill()
        await asyncio.wait_for(accepting, timeout=5)
    assert await count(store) == 1
    await store.close()


async def test_a_turn_held_past_the_busy_timeout_is_unavailable_and_loses_nothing(
    tmp_path: Path,
) -> None:
    store, path = await sqlite_store(tmp_path, busy_timeout_seconds=0.3)
    kept = new()
    await store.accept(kept)
    async with turn_held_elsewhere(path):
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.accept(new())
        # A wait given up is cancelled, too, without leaving the turn taken.
        waiting = asyncio.create_task(store.accept(new()))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises((asyncio.CancelledError, StoreUnavailable)):
            await waiting
    # Both abandoned waits got the turn when the holder left and gave it back.
    await asyncio.wait_for(store.accept(new()), timeout=5)
    with sqlite3.connect(path, timeout=5) as raw:  # and nobody holds SQLite's lock
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("ROLLBACK")
    assert await count(store) in (2, 3)  # the cancelled one may have been written after all
    assert (await store.get_message("default", kept.id)).status == "queued"
    await store.close()


async def test_two_stores_in_one_process_take_turns(tmp_path: Path) -> None:
    """Each store has its own turn (as two processes would): they write alternately."""
    path = tmp_path / "db.sqlite"
    settings = DatabaseSettings(url=f"sqlite:///{path}")
    first, second = Store(settings), Store(settings)
    await first.migrate()
    await asyncio.gather(
        *(first.accept(new()) for _ in range(200)), *(second.accept(new()) for _ in range(200))
    )
    assert await count(first) == 400
    await first.close()
    await second.close()


async def test_a_lease_starts_when_the_claim_is_written_not_when_it_was_asked_for(
    tmp_path: Path,
) -> None:
    """A claim or a lease extension that waited for the write turn still gets its whole
    lease: otherwise a worker could be handed messages whose lease ran out meanwhile."""
    store, path = await sqlite_store(tmp_path)
    item = new()
    await store.accept(item)
    async with turn_held_elsewhere(path):
        claiming = asyncio.create_task(store.claim("w1", limit=1, lease_seconds=30))
        await asyncio.sleep(0.3)
        assert not claiming.done()
        let_go = utcnow()
    [claimed] = await asyncio.wait_for(claiming, timeout=5)
    assert await lease_until(store, claimed.id) >= let_go + timedelta(seconds=30)
    async with turn_held_elsewhere(path):
        extending = asyncio.create_task(store.extend_leases("w1", [item.id], lease_seconds=60))
        await asyncio.sleep(0.3)
        let_go = utcnow()
    assert await asyncio.wait_for(extending, timeout=5) == 1
    assert await lease_until(store, item.id) >= let_go + timedelta(seconds=60)
    await store.close()


async def lease_until(store: Store, message_id: str) -> datetime:
    query = select(messages.c.lease_until).where(messages.c.id == message_id)
    until: datetime = await store.db.read(lambda conn: conn.execute(query).scalar_one())
    return until if until.tzinfo else until.replace(tzinfo=UTC)
