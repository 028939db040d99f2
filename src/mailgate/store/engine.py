"""Engines and transactions for SQLite and PostgreSQL.

`Database.write()` opens a write transaction, `Database.read()` a read-only
one. On SQLite every write in this process goes through one connection under
an asyncio lock with `BEGIN IMMEDIATE`, so writers in one process never race
each other for SQLite's lock (they would sleep in its busy handler), and a
read never has to be upgraded to a write mid-transaction. WAL mode lets reads
run beside the writer; `synchronous=FULL` makes a commit durable before the
API answers. Driver errors that mean "the store cannot do this now" become
`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailgate.config import DatabaseSettings
from mailgate.errors import StoreUnavailable


def async_url(url: str) -> URL:
    """Map a user's `sqlite:///` or `postgresql://` URL to its asyncio driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("SQLite needs a file path (database.url = 'sqlite:///path/to/db')")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def sqlite_path(url: str) -> Path | None:
    """The SQLite file behind `url`, or None for other engines."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


class Database:
    """The engines of one store and the way into its transactions."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.url = async_url(settings.url)
        self.dialect = self.url.get_backend_name()
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            path = sqlite_path(settings.url)
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = self._sqlite_engine(begin="BEGIN IMMEDIATE", pool_size=1)
            self.read_engine = self._sqlite_engine(begin="BEGIN", pool_size=4)
        else:
            self.write_engine = create_async_engine(
                self.url,
                pool_size=settings.pool_size,
                max_overflow=settings.pool_size,
                pool_pre_ping=True,
                pool_timeout=settings.busy_timeout_seconds,
                connect_args={"timeout": settings.busy_timeout_seconds},
            )
            self.read_engine = self.write_engine

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _sqlite_engine(self, *, begin: str, pool_size: int) -> AsyncEngine:
        engine = create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"timeout": self.settings.busy_timeout_seconds},
        )
        busy_ms = int(self.settings.busy_timeout_seconds * 1000)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transactions out of the driver's hands: it would BEGIN lazily
            # and never IMMEDIATE. We emit BEGIN ourselves below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block ends without an exception."""
        if self._write_lock is None:
            async with _translated(), self.write_engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, _translated(), self.write_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction (a consistent snapshot)."""
        async with _translated(), self.read_engine.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"store unavailable: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    return str(exc) or type(exc).__name__
