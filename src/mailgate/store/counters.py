"""Counters that several processes draw from without going over a cap.

Daily quotas (a provider's sends, a tenant's messages) are rows of
`(key..., used)`. A process takes what it needs inside a write
transaction: the row is created if missing, locked (`FOR UPDATE` on
PostgreSQL; SQLite's write lock already serialises writers) and raised by
no more than what is left, so the cap holds exactly across processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Table, and_, select, update

from mailgate.store.engine import upsert


def take(
    conn: Connection,
    table: Table,
    key: Mapping[str, Any],
    *,
    want: int,
    cap: int,
    whole: bool = False,
) -> int:
    """Raise the counter at `key` by up to `want` without passing `cap`; returns how much.

    `whole`: all of `want` or nothing.
    """
    conn.execute(
        upsert(conn, table).values(**key, used=0).on_conflict_do_nothing(index_elements=list(key))
    )
    where = and_(*(table.c[column] == value for column, value in key.items()))
    used = conn.execute(select(table.c.used).where(where).with_for_update()).scalar_one()
    granted = max(0, min(want, cap - used))
    if whole and granted < want:
        granted = 0
    if granted:
        conn.execute(update(table).where(where).values(used=table.c.used + granted))
    return int(granted)
