"""Engines and transactions for SQLite and PostgreSQL.

The store's operations are plain functions of a SQLAlchemy `Connection`
(`queue.py`, `messages.py`, ...). `Database.write(fn, ...)` runs one of them
inside a write transaction, `Database.read(fn, ...)` inside a read one, and
each engine runs them the way that suits it:

- SQLite, writes: the statements on the event loop's own thread, on the
  process's one write connection (`BEGIN IMMEDIATE` ...); the `COMMIT`, which
  waits for the disk (`fsync`), in a thread of its own, so the loop goes on
  serving while it waits (measured: a worker's loop spent a fifth of its
  time blocked in commits). One write transaction at a time per process
  (`_write_lock`): the next group of accepts or finishes gathers while the
  disk works. Write transactions are short (a claim, a group of accepts or
  finishes) and, measured here, running their statements in a writer thread
  was slower: it and the event loop fought over the GIL on every statement.
  mailgate's writers take turns through a lock file beside the database
  (`WriterTurn`): a writer waiting for another process's transaction is
  woken by the kernel the moment that one has committed. Should SQLite's
  write lock still be held (by something other than mailgate), the
  connection does not block (`busy_timeout=0`); `write` sleeps without
  blocking the loop and tries again. Either wait ends at
  `busy_timeout_seconds` with `StoreUnavailable`. WAL lets readers run beside the writer;
  `synchronous=FULL` makes a commit durable before the API answers.
- SQLite, reads: in a few threads of their own, so a long listing never
  holds up the loop.
- PostgreSQL: asyncpg under SQLAlchemy's asyncio engine, the function run
  with `AsyncConnection.run_sync`.

Driver errors that mean "the store cannot do this now" become
`StoreUnavailable`, and PostgreSQL's data exceptions (a value it cannot
keep) `InvalidRequest`; integrity errors pass through for the caller to judge.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mailgate.config import DatabaseSettings
from mailgate.errors import InvalidRequest, StoreUnavailable
from mailgate.store.bulk import json_text

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's lock alone, and the polling
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

READER_THREADS = 4
_FIRST_BUSY_WAIT = 0.001
_LONGEST_BUSY_WAIT = 0.05


def driver_url(url: str) -> URL:
    """The user's `sqlite:///` or `postgresql://` URL with the driver mailgate uses."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("SQLite needs a file path (database.url = 'sqlite:///path/to/db')")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def shown_url(url: str) -> str:
    """The database URL as it may be printed or logged: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The SQLite file behind `url`, or None for other engines."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def upsert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT in the connection's dialect, so it can take `ON CONFLICT`."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class WriterTurn:
    """An exclusive `flock` on `<database>-lock`, held from a write transaction's
    `BEGIN` until its `COMMIT` has returned, in every mailgate process on the file.

    SQLite's own write lock has no queue: a writer that finds it taken can
    only sleep and try again. With the API and a worker writing at once (the
    default `serve`), that polling slept through a third of each process's
    time while the lock stood free (docs/performance.md). A process waiting
    for its turn instead blocks in `flock` (in a thread), and the kernel
    wakes it when the holder lets go, or dies. Correctness does not rest on
    it: SQLite's lock still guards the data, and a writer outside mailgate
    only costs the polling back.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_take(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def take(self) -> None:
        """Wait for the turn (blocks: call it in a thread)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def give(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class _Busy(Exception):
    """Another process holds SQLite's write lock; try again shortly."""


class Database:
    """The engines of one store and the way into its transactions."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.url = driver_url(settings.url)
        self.dialect = self.url.get_backend_name()
        self._async_engine: AsyncEngine | None = None
        self._write_engine: Engine | None = None
        self._read_engine: Engine | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._committer: ThreadPoolExecutor | None = None
        self._write_lock: asyncio.Lock | None = None
        self._turn: WriterTurn | None = None
        self._turn_tried = False
        if self.is_sqlite:
            path = sqlite_path(settings.url)
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_engine = self._sqlite_engine(
                begin="BEGIN IMMEDIATE", pool_size=1, busy_seconds=0
            )
            self._read_engine = self._sqlite_engine(
                begin="BEGIN", pool_size=READER_THREADS, busy_seconds=settings.busy_timeout_seconds
            )
            self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="mailgate-sqlite")
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="mailgate-sqlite-commit")
        else:
            # No pre-ping: it would cost a round trip per transaction. A dead
            # connection fails its transaction once (503, or a worker retry),
            # and SQLAlchemy then discards the whole pool.
            self._async_engine = create_async_engine(
                self.url,
                pool_size=settings.pool_size,
                max_overflow=settings.pool_size,
                pool_timeout=settings.busy_timeout_seconds,
                json_serializer=json_text,
                connect_args={
                    "timeout": settings.busy_timeout_seconds,
                    "command_timeout": settings.statement_timeout_seconds,
                    "server_settings": {"application_name": "mailgate"},
                },
            )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _sqlite_engine(self, *, begin: str, pool_size: int, busy_seconds: float) -> Engine:
        engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"timeout": busy_seconds, "check_same_thread": False},
            json_serializer=json_text,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transactions out of the driver's hands: it would BEGIN lazily
            # and never IMMEDIATE. We emit BEGIN ourselves below.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, ...)` in a write transaction; committed if it returns.

        On SQLite `fn` may run more than once (after another process held the
        lock); it runs in a fresh transaction each time.
        """
        if self._async_engine is not None:
            return await self._run_async(fn, *args, **kwargs)
        assert self._write_engine is not None and self._committer is not None
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        lock, turn = self._write_lock, self._writer_turn()
        deadline = time.monotonic() + self.settings.busy_timeout_seconds
        try:
            async with asyncio.timeout(self.settings.busy_timeout_seconds):
                await lock.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                "store unavailable: this process's earlier writes still wait (database is locked)"
            ) from None
        if turn is not None and not turn.try_take():
            await self._wait_for_turn(turn, lock, deadline)
        handed_over = False
        try:
            wait = _FIRST_BUSY_WAIT
            while True:
                try:
                    conn, result = _run_uncommitted(self._write_engine, fn, *args, **kwargs)
                    break
                except _Busy as exc:
                    if time.monotonic() + wait > deadline:
                        raise StoreUnavailable(f"store unavailable: {exc}") from None
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_BUSY_WAIT)
            loop = asyncio.get_running_loop()
            committed = loop.run_in_executor(self._committer, _commit, conn, turn)
            # The lock (and with it the connection) is free when the commit has ended,
            # even if this caller is cancelled meanwhile: the commit is not.
            committed.add_done_callback(lambda _: lock.release())
            handed_over = True
            # Let go of the GIL for a moment, so the commit thread starts now rather
            # than when the loop next waits: SQLite's write lock, which another
            # process may be waiting for, is held until the commit has run.
            time.sleep(0)
            await asyncio.shield(committed)
            return result
        finally:
            if not handed_over:
                if turn is not None:
                    turn.give()
                lock.release()

    def _writer_turn(self) -> WriterTurn | None:
        """The turn, opened at the first write (reading needs no lock file); None where
        there is no `flock`, or the file cannot be made (writers then poll SQLite's lock)."""
        if not self._turn_tried:
            self._turn_tried = True
            path = sqlite_path(self.settings.url)
            if fcntl is not None and path is not None:
                try:
                    self._turn = WriterTurn(path.with_name(path.name + "-lock"))
                except OSError as exc:
                    log.warning("no writer turns for %s (%s): writers poll its lock", path, exc)
        return self._turn

    async def _wait_for_turn(self, turn: WriterTurn, lock: asyncio.Lock, deadline: float) -> None:
        """Wait in the commit thread until no other process is writing.

        `StoreUnavailable` at the deadline. A wait given up (deadline,
        cancellation) goes on in the thread; when it ends, the turn is given
        back and only then `lock` released, so nothing else in this process
        writes meanwhile.
        """
        assert self._committer is not None
        taking = asyncio.get_running_loop().run_in_executor(self._committer, turn.take)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(taking)
        except BaseException as exc:

            def given_back(taken: asyncio.Future[None]) -> None:
                if not taken.cancelled() and taken.exception() is None:
                    turn.give()
                lock.release()

            taking.add_done_callback(given_back)
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    "store unavailable: another mailgate process has held the database's "
                    "write lock too long (database is locked)"
                ) from None
            raise

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, ...)` in a read transaction (a consistent snapshot)."""
        if self._async_engine is not None:
            return await self._run_async(fn, *args, **kwargs)
        assert self._readers is not None and self._read_engine is not None
        job = functools.partial(_run_sync, self._read_engine, fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, job)
        except _Busy as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from None

    async def _run_async(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        assert self._async_engine is not None
        async with _translated_async(), self._async_engine.begin() as conn:
            return await conn.run_sync(fn, *args, **kwargs)

    async def dispose(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
        for pool in (self._committer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        for engine in (self._write_engine, self._read_engine):
            if engine is not None:
                engine.dispose()
        if self._turn is not None:
            self._turn.close()
            self._turn = None


def _run_sync(
    engine: Engine, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    with _translated(), engine.begin() as conn:
        return fn(conn, *args, **kwargs)


def _run_uncommitted(
    engine: Engine, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
) -> tuple[Connection, T]:
    """Begin a transaction and run `fn` in it; the caller commits (`_commit`). Rolled back
    and the connection returned if `fn` fails."""
    with _translated():
        conn = engine.connect()
        try:
            conn.begin()
            return conn, fn(conn, *args, **kwargs)
        except BaseException:
            try:
                conn.rollback()
            finally:
                conn.close()
            raise


def _commit(conn: Connection, turn: WriterTurn | None) -> None:
    """Commit the connection's transaction (rolled back if the commit fails), return the
    connection to its pool, and give the writer's turn to the next process."""
    with _translated():
        try:
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
            if turn is not None:
                turn.give()


def _is_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (IntegrityError, ProgrammingError):
        raise  # for the caller to judge; a bug, not an outage
    except OperationalError as exc:
        if _is_busy(exc):
            raise _Busy(_describe(exc)) from exc
        raise StoreUnavailable(f"store unavailable: {_describe(exc)}") from exc
    except DBAPIError as exc:
        if _is_bad_value(exc):
            raise InvalidRequest(f"a value the store cannot keep: {_describe(exc)}") from exc
        raise StoreUnavailable(f"store unavailable: {_describe(exc)}") from exc
    except (PoolTimeout, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"store unavailable: {_describe(exc)}") from exc


def _is_bad_value(exc: DBAPIError) -> bool:
    """PostgreSQL's "data exception" class (SQLSTATE 22...: a NUL in text, a number out of
    range): the request's fault, not an outage, so never a 503 that invites a retry."""
    return str(getattr(exc.orig, "sqlstate", None) or "").startswith("22")


@asynccontextmanager
async def _translated_async() -> AsyncIterator[None]:
    with _translated():
        yield


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    return str(exc) or type(exc).__name__
