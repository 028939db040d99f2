"""Group commit's `prepare`: the work that needs no database, done before the transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from mailgate.config import DatabaseSettings
from mailgate.store import Store
from mailgate.store.group_commit import GroupCommit
from tests.store.test_engine import turn_held_elsewhere


def _write(conn: Connection, items: Sequence[str], prepared: Any) -> list[str]:
    conn.execute(text("CREATE TABLE IF NOT EXISTS t (v TEXT)"))
    for value in prepared:
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
    return list(prepared)


async def test_prepare_runs_before_the_transaction_and_the_flush_gets_its_result(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    store = Store(DatabaseSettings(url=f"sqlite:///{path}"))
    prepared: list[tuple[list[str], str]] = []

    def prepare(items: Sequence[str], dialect: str) -> list[str]:
        prepared.append((list(items), dialect))
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(store.db, _write, name="t", prepare=prepare)
    async with turn_held_elsewhere(path) as holder:
        writing = asyncio.create_task(group.submit("a"))
        await asyncio.sleep(0.2)
        # Another process is writing: the transaction waits, its rows are made already.
        assert prepared == [(["a"], "sqlite")]
        assert not writing.done()
        assert holder.stdin is not None
        holder.stdin.close()
        assert await asyncio.wait_for(writing, timeout=5) == "A"
    rows = await store.db.read(lambda conn: conn.execute(text("SELECT v FROM t")).all())
    assert [tuple(r) for r in rows] == [("A",)]
    await group.close()
    await store.close()


async def test_a_prepare_that_fails_fails_its_group_only(tmp_path: Path) -> None:
    store = Store(DatabaseSettings(url=f"sqlite:///{tmp_path / 'db.sqlite'}"))

    def prepare(items: Sequence[str], dialect: str) -> list[str]:
        if "bad" in items:
            raise ValueError("cannot make this row")
        return list(items)

    group: GroupCommit[str, str] = GroupCommit(store.db, _write, name="t", prepare=prepare)
    with pytest.raises(ValueError, match="cannot make"):
        await group.submit("bad")
    assert await group.submit("good") == "good"
    await group.close()
    await store.close()
