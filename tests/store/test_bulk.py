"""Rows written with `bulk.BulkInsert` are stored exactly as SQLAlchemy's column types store
them: the same text on SQLite (its time columns compare as text), the same values on
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from mailgate.message import new_id
from mailgate.store import Store
from mailgate.store.bulk import BulkInsert, Values, json_text
from mailgate.store.tables import events, messages
from tests import helpers

ENVELOPE = {"from": {"email": "a@example.com"}, "to": [{"email": "b@example.org"}], "n": [1.5]}
TIMES = [
    datetime(2026, 12, 4, 14, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 4, 14, 0, 0, 7, tzinfo=UTC),
    datetime(2026, 12, 4, 16, 30, 1, 999_999, tzinfo=timezone(timedelta(hours=2))),
    datetime(9999, 1, 1, tzinfo=UTC),
]
COLUMNS = ("id", "status", "envelope", "send_at", "next_attempt_at", "window_start")
BULK = BulkInsert(messages, (*COLUMNS, "created_at", "updated_at"))


def _raw(conn: Connection, ids: list[str]) -> list[tuple[Any, ...]]:
    """The stored values as the driver returns them, no column type in between."""
    marks = ", ".join(
        "?" if conn.dialect.name == "sqlite" else f"${i + 1}" for i in range(len(ids))
    )
    sql = f"SELECT {', '.join(COLUMNS[1:])}, created_at FROM messages WHERE id IN ({marks})"
    return [tuple(row) for row in conn.exec_driver_sql(sql, tuple(ids)).all()]


@pytest.mark.parametrize("at", TIMES)
async def test_a_bulk_row_is_stored_as_sqlalchemy_stores_it(store: Store, at: datetime) -> None:
    ours, theirs = new_id("msg"), new_id("msg")

    def write(conn: Connection) -> None:
        values = Values(conn)
        stamp = values.stamp
        BULK.run(
            conn,
            [
                (
                    ours,
                    "queued",
                    json_text(ENVELOPE),
                    None,
                    stamp(at),
                    stamp(at),
                    stamp(at),
                    stamp(at),
                )
            ],
        )
        conn.execute(
            insert(messages),
            [
                {
                    "id": theirs, "status": "queued", "envelope": ENVELOPE, "send_at": None,
                    "next_attempt_at": at, "window_start": at, "created_at": at, "updated_at": at,
                }
            ],
        )  # fmt: skip

    await store.db.write(write)
    ours_raw = await store.db.read(_raw, [ours])
    theirs_raw = await store.db.read(_raw, [theirs])
    assert ours_raw == theirs_raw
    read = select(messages.c.next_attempt_at, messages.c.envelope).where(messages.c.id == ours)
    row = await store.db.read(lambda conn: conn.execute(read).one())
    assert row.next_attempt_at == at and row.envelope == ENVELOPE


async def test_times_written_in_bulk_compare_in_order(store: Store) -> None:
    """SQLite compares the stored text: the bulk form must sort as the times do."""
    items = [helpers.new_message(created_at=at) for at in reversed(TIMES)]
    for item in items:
        await store.accept(item)
    query = select(messages.c.id).order_by(messages.c.next_attempt_at)
    ordered = await store.db.read(lambda conn: list(conn.execute(query).scalars()))
    assert ordered == [item.id for item in sorted(items, key=lambda i: i.created_at)]
    query = select(events.c.message_id).where(events.c.at > TIMES[1]).order_by(events.c.at)
    later = await store.db.read(lambda conn: list(conn.execute(query).scalars()))
    assert later == [item.id for item in sorted(items, key=lambda i: i.created_at)][2:]


def test_a_misspelt_column_fails_at_once() -> None:
    with pytest.raises(KeyError):
        BulkInsert(messages, ("id", "nope"))


async def test_a_naive_time_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.db.write(lambda conn: Values(conn).stamp(datetime(2026, 1, 1)))
