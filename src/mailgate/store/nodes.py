"""The processes that use the store (API nodes and workers), each with its last sign of life."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, func, select, update

from mailgate.store.engine import upsert
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
    # A process taken for dead (`stopped`) that beats again is alive after all.
    values = {"kind": kind, "hostname": hostname, "pid": pid, "seen_at": now, "stopped_at": None}
    conn.execute(
        upsert(conn, nodes)
        .values(id=node_id, started_at=started_at, **values)
        .on_conflict_do_update(index_elements=["id"], set_=values)
    )


def live_workers(conn: Connection, *, since: datetime) -> int:
    """Worker processes that said they were alive since `since`."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(nodes)
            .where(nodes.c.kind == "worker", nodes.c.seen_at >= since, nodes.c.stopped_at.is_(None))
        ).scalar_one()
    )


def worker_beats(conn: Connection, *, since: datetime) -> dict[str, datetime]:
    """Each worker not stopped and seen since `since`: its last heartbeat, as it wrote it."""
    rows = conn.execute(
        select(nodes.c.id, nodes.c.seen_at).where(
            nodes.c.kind == "worker", nodes.c.seen_at >= since, nodes.c.stopped_at.is_(None)
        )
    )
    return {row.id: row.seen_at for row in rows}


def stopped(conn: Connection, node_id: str, *, now: datetime) -> None:
    """A process stopping cleanly: others stop counting it at once; its row stays as history."""
    conn.execute(update(nodes).where(nodes.c.id == node_id).values(stopped_at=now, seen_at=now))


def given_up(conn: Connection, node_ids: Sequence[str], *, now: datetime) -> None:
    """Workers taken for dead (their heartbeat stopped): no longer counted; `seen_at` stays
    their last heartbeat. One that beats again is alive after all (`record`)."""
    conn.execute(
        update(nodes)
        .where(nodes.c.id.in_(list(node_ids)), nodes.c.stopped_at.is_(None))
        .values(stopped_at=now)
    )
