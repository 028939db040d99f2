"""The processes that use the store (API nodes and workers), each with its last sign of life."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from mailgate.store.tables import nodes


def record(
    conn: Connection,
    *,
    node_id: str,
    kind: str,
    hostname: str,
    pid: int,
    started_at: datetime,
    now: datetime,
) -> None:
    values = {"kind": kind, "hostname": hostname, "pid": pid, "seen_at": now}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(nodes)
        .values(id=node_id, started_at=started_at, **values)
        .on_conflict_do_update(index_elements=["id"], set_=values)
    )
