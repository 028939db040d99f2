"""Waking idle workers at once when work arrives (PostgreSQL LISTEN/NOTIFY).

A transaction that makes messages due calls `notify(conn)`; PostgreSQL
delivers the notification to every listener when, and only if, that
transaction commits. Each worker keeps one connection of its own that
listens (`Listener`). A notification is only a hint to claim now: the
queue itself stays in the table, so a notification lost while a listener
reconnects costs at most a poll interval, and a reconnect claims at once.
SQLite has no equivalent; there, a worker in the same process is woken
directly and others poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "mailgate_queue"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
_LONGEST_RETRY = 5.0
_PING_SECONDS = 10.0


def notify(conn: Connection) -> None:
    """Within a transaction: wake listening workers when it commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)


class Listener:
    """Calls `on_work()` whenever another process says there is work (PostgreSQL)."""

    def __init__(self, url: str, on_work: Callable[[], None], *, connect_timeout: float) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_work = on_work
        self._connect_timeout = connect_timeout

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        wait = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("cannot listen for new work (%s); again in %.1fs", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_RETRY)
                continue
            wait = 0.1
            try:
                await self._listen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("listening for new work failed (%s); reconnecting", exc)
            finally:
                if not conn.is_closed():
                    conn.terminate()

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, lambda *_args: self._on_work())
        self._on_work()  # whatever came while nobody listened
        while not lost.is_set():
            try:
                async with asyncio.timeout(_PING_SECONDS):
                    await lost.wait()
            except TimeoutError:
                # A link that died silently never says so; a query finds out.
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        log.warning("lost the connection listening for new work; reconnecting")
