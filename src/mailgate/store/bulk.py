"""Many rows into one table with one driver `executemany`, without SQLAlchemy's per-row work.

The accept path writes five rows per message (the queue row, its body,
recipients, tags, first event). Measured with py-spy, SQLAlchemy spent more
CPU building those rows' parameters (`construct_params`, a bind processor
per value) than the driver and SQLite spent storing them. A `BulkInsert`
keeps one SQL string per dialect and takes rows as tuples already in the
form the driver wants; `stamp` and `json_text` make that form, the same one
SQLAlchemy's column types make, so a row reads back alike whichever way it
was written (`tests/store/test_bulk.py` holds them to it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table, TypeDecorator


class DriverStatement:
    """One SQL statement with `?` placeholders, run through the driver for many rows.

    PostgreSQL's driver (asyncpg) numbers its placeholders (`$1`, `$2`...);
    the statement is rewritten for it once. The SQL must hold no other `?`.
    """

    def __init__(self, sql: str) -> None:
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        self._sql = {"sqlite": sql, "postgresql": numbered}

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run the statement once per row (one `executemany`), rows in placeholder order."""
        if rows:
            conn.exec_driver_sql(self._sql[conn.dialect.name], list(rows))


class BulkInsert(DriverStatement):
    """`INSERT INTO table (columns) VALUES (...)` for many rows at once."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        for name in columns:
            table.c[name]
        self.table = table
        self.columns = tuple(columns)
        marks = ", ".join("?" for _ in self.columns)
        super().__init__(f"INSERT INTO {table.name} ({', '.join(self.columns)}) VALUES ({marks})")

    def unnest_sql(self, first: int) -> str:
        """The insert for PostgreSQL with one array parameter per column, numbered from
        `$first`: `INSERT ... SELECT ... FROM unnest($1::type[], ...)`. JSON travels as
        text (its driver form, `json_text`) and is cast in the select."""
        names = ", ".join(self.columns)
        arrays, picks = [], []
        for i, name in enumerate(self.columns, first):
            kind = self.table.c[name].type
            if isinstance(kind, TypeDecorator):
                kind = kind.impl_instance
            if isinstance(kind, JSON):
                arrays.append(f"${i}::text[]")
                picks.append(f"{name}::json")
            else:
                arrays.append(f"${i}::{_ARRAY_TYPES[kind.python_type]}[]")
                picks.append(name)
        return (
            f"INSERT INTO {self.table.name} ({names}) SELECT {', '.join(picks)} "
            f"FROM unnest({', '.join(arrays)}) AS u({names})"
        )


_ARRAY_TYPES = {str: "text", int: "int", datetime: "timestamptz"}
"""PostgreSQL's array type for a column's values, by their Python type."""


class InsertsAsOne:
    """Several `BulkInsert`s in one round trip: on PostgreSQL one statement, each
    column's values an array and each insert a data-modifying part of one `WITH`
    (foreign keys are checked at the statement's end, when every part is in); on
    SQLite, which has no round trips to save, one `executemany` each."""

    def __init__(self, *inserts: BulkInsert) -> None:
        self.inserts = inserts
        parts, first = [], 1
        for insert in inserts:
            parts.append(insert.unnest_sql(first))
            first += len(insert.columns)
        *ahead, last = parts
        withs = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(ahead))
        self._postgresql = f"WITH {withs} {last}"

    def run(self, conn: Connection, rows: Sequence[Sequence[tuple[Any, ...]]]) -> None:
        """Insert `rows[i]` with `inserts[i]`, rows in placeholder order."""
        if conn.dialect.name != "postgresql":
            for insert, some in zip(self.inserts, rows, strict=True):
                insert.run(conn, some)
            return
        params: list[list[Any]] = []
        for insert, some in zip(self.inserts, rows, strict=True):
            columns = zip(*some, strict=True) if some else ((),) * len(insert.columns)
            params.extend(list(column) for column in columns)
        conn.exec_driver_sql(self._postgresql, tuple(params))


class Values:
    """The driver-ready form of values for one connection's dialect."""

    def __init__(self, conn: Connection) -> None:
        self._set(conn.dialect.name)

    def _set(self, dialect: str) -> None:
        sqlite = dialect == "sqlite"
        self.stamp: Callable[[datetime], Any] = _sqlite_stamp if sqlite else _utc
        self.read_stamp: Callable[[Any], datetime] = _sqlite_read_stamp if sqlite else _utc

    @classmethod
    def of(cls, dialect: str) -> Values:
        """The forms of a dialect by its name (`sqlite`, `postgresql`), without a connection."""
        values = cls.__new__(cls)
        values._set(dialect)
        return values

    def optional_stamp(self, value: datetime | None) -> Any:
        return None if value is None else self.stamp(value)

    @staticmethod
    def optional_json(value: Any) -> str | None:
        return None if value is None else json_text(value)


def json_text(value: Any) -> str:
    """A JSON column's value as stored: the store's engines write their JSON columns with
    this too (`json_serializer`), so a row reads back alike whichever way it was written.

    orjson, measured: a sixth of the CPU `json.dumps` takes for an envelope.
    """
    return orjson.dumps(value).decode()


def json_value(stored: Any) -> Any:
    """A JSON column's value as the driver returned it, decoded: SQLite returns the text,
    PostgreSQL's driver (with the codec SQLAlchemy gives it) the decoded value."""
    return orjson.loads(stored) if isinstance(stored, str | bytes) else stored


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a Timestamp column")
    return value.astimezone(UTC)


def _sqlite_stamp(value: datetime) -> str:
    """`Timestamp` on SQLite: the naive UTC time in SQLAlchemy's fixed-width text form
    (`YYYY-MM-DD HH:MM:SS.ffffff`), which sorts and compares chronologically."""
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_read_stamp(stored: str) -> datetime:
    return datetime.fromisoformat(stored).replace(tzinfo=UTC)
