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
from sqlalchemy import Connection, Table


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
