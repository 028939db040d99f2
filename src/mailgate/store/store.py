"""`Store`: the one object the API, the worker and the CLI use to reach the database.

It owns the engines, the group commits for accepts and finishes, and turns
"no such row" and "wrong status" into the request errors the API answers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.config import DatabaseSettings
from mailgate.errors import Conflict, IdempotencyMismatch, NotFound, RequestError
from mailgate.message import Status
from mailgate.store import keys, migrate, queue
from mailgate.store import messages as reads
from mailgate.store import providers as provider_rows
from mailgate.store.engine import Database
from mailgate.store.group_commit import GroupCommit
from mailgate.store.keys import ApiKey
from mailgate.store.providers import ProviderState
from mailgate.store.records import Accepted, Claimed, Finish, MessageView, NewMessage
from mailgate.store.tables import messages, nodes


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.db = Database(settings)
        self._accept_listeners: list[Callable[[int], None]] = []
        self._accepts: GroupCommit[NewMessage, Accepted] = GroupCommit(
            self.db, _flush_accepts, name="accept", after_commit=self._notify_accepted
        )
        self._finishes: GroupCommit[Finish, None] = GroupCommit(
            self.db, _flush_finishes, name="finish"
        )

    # --- lifecycle -----------------------------------------------------------

    async def migrate(self) -> None:
        await migrate.upgrade(self.db)

    async def close(self) -> None:
        await self._accepts.close()
        await self._finishes.close()
        await self.db.dispose()

    async def heartbeat(self, node_id: str, kind: str, started_at: datetime) -> None:
        """Record that this process is alive; also proves the store takes writes."""
        now = utcnow()
        values = {
            "kind": kind,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "seen_at": now,
        }
        async with self.db.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            await conn.execute(
                dialect.insert(nodes)
                .values(id=node_id, started_at=started_at, **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
            )

    # --- accepting -----------------------------------------------------------

    def on_accept(self, listener: Callable[[int], None]) -> None:
        """Call `listener(n)` after each commit that queued `n` messages due now."""
        self._accept_listeners.append(listener)

    def _notify_accepted(self, items: Sequence[NewMessage]) -> None:
        due = sum(1 for item in items if item.send_at is None)
        if due:
            for listener in self._accept_listeners:
                listener(due)

    async def accept(self, item: NewMessage) -> Accepted:
        """Commit one message (grouped with concurrent accepts); raises on refusal."""
        return await self._accepts.submit(item)

    async def accept_many(self, items: Sequence[NewMessage]) -> list[Accepted | Exception]:
        return await self._accepts.submit_many(items)

    # --- reading -------------------------------------------------------------

    async def get_message(self, tenant_id: str, message_id: str) -> MessageView:
        async with self.db.read() as conn:
            view = await reads.get_message(conn, tenant_id=tenant_id, message_id=message_id)
        if view is None:
            raise NotFound(f"no message {message_id}", field="id")
        return view

    async def list_messages(self, tenant_id: str, **filters: Any) -> list[MessageView]:
        async with self.db.read() as conn:
            return await reads.list_messages(conn, tenant_id=tenant_id, **filters)

    async def queue_depth(self) -> dict[str, int]:
        async with self.db.read() as conn:
            return await reads.count_waiting(conn)

    # --- operator actions ----------------------------------------------------

    async def cancel(self, tenant_id: str, message_id: str) -> None:
        async with self.db.write() as conn:
            if await queue.cancel(conn, tenant_id=tenant_id, message_id=message_id, now=utcnow()):
                return
            status = await _status(conn, tenant_id, message_id)
        raise Conflict(
            f"message is {status}; only queued or scheduled messages can be cancelled",
            field="status",
        )

    async def retry(self, tenant_id: str, message_id: str) -> None:
        async with self.db.write() as conn:
            if await queue.retry(conn, tenant_id=tenant_id, message_id=message_id, now=utcnow()):
                self._notify_due(1)
                return
            status = await _status(conn, tenant_id, message_id)
        raise Conflict(f"message is {status}; only failed messages can be retried", field="status")

    def _notify_due(self, n: int) -> None:
        for listener in self._accept_listeners:
            listener(n)

    # --- the worker's side ---------------------------------------------------

    async def claim(self, owner: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
        now = utcnow()
        async with self.db.write() as conn:
            return await queue.claim(
                conn,
                owner=owner,
                now=now,
                lease_until=now + timedelta(seconds=lease_seconds),
                limit=limit,
            )

    async def finish(self, item: Finish) -> None:
        await self._finishes.submit(item)

    async def extend_leases(self, owner: str, ids: Sequence[str], *, lease_seconds: float) -> int:
        async with self.db.write() as conn:
            return await queue.extend_leases(
                conn, owner=owner, ids=ids, lease_until=utcnow() + timedelta(seconds=lease_seconds)
            )

    async def release(self, owner: str, ids: Sequence[str]) -> None:
        async with self.db.write() as conn:
            await queue.release(conn, owner=owner, ids=ids, now=utcnow())

    async def reclaim_expired(self) -> list[str]:
        async with self.db.write() as conn:
            return await queue.reclaim_expired(conn, now=utcnow())

    # --- providers -----------------------------------------------------------

    async def provider_states(self) -> dict[str, ProviderState]:
        async with self.db.read() as conn:
            return await provider_rows.get_states(conn)

    async def update_provider(self, name: str, **values: Any) -> None:
        async with self.db.write() as conn:
            await provider_rows.update_state(conn, name, now=utcnow(), **values)

    async def recent_outcomes(self, window: timedelta) -> Mapping[str, tuple[int, int]]:
        async with self.db.read() as conn:
            return await provider_rows.recent_outcomes(conn, since=utcnow() - window)

    # --- API keys ------------------------------------------------------------

    async def create_key(
        self, name: str, *, tenant_id: str, key: str | None = None
    ) -> tuple[ApiKey, str]:
        async with self.db.write() as conn:
            return await keys.create_key(
                conn, tenant_id=tenant_id, name=name, now=utcnow(), key=key
            )

    async def find_key(self, secret: str) -> ApiKey | None:
        async with self.db.read() as conn:
            return await keys.find_key(conn, secret)

    async def list_keys(self) -> list[ApiKey]:
        async with self.db.read() as conn:
            return await keys.list_keys(conn)

    async def revoke_key(self, key_id: str) -> None:
        async with self.db.write() as conn:
            if not await keys.revoke_key(conn, key_id, now=utcnow()):
                raise NotFound(f"no active key {key_id}", field="id")


async def _status(conn: AsyncConnection, tenant_id: str, message_id: str) -> str:
    status = (
        await conn.execute(
            select(messages.c.status).where(
                messages.c.id == message_id, messages.c.tenant_id == tenant_id
            )
        )
    ).scalar()
    if status is None:
        raise NotFound(f"no message {message_id}", field="id")
    return str(status)


async def _flush_accepts(
    conn: AsyncConnection, items: Sequence[NewMessage]
) -> list[Accepted | Exception]:
    """Insert a group of new messages, answering repeats of an idempotency key.

    A key seen before (in the store or earlier in this group) with the same
    request body answers with the original message; with another body it is
    refused. Everything else is inserted.
    """
    known: dict[tuple[str, str], tuple[str, str, str]] = {}
    by_tenant: dict[str, set[str]] = {}
    for item in items:
        if item.idempotency_key is not None:
            by_tenant.setdefault(item.tenant_id, set()).add(item.idempotency_key)
    for tenant_id, tenant_keys in by_tenant.items():
        for key, found in (await queue.find_idempotent(conn, tenant_id, tenant_keys)).items():
            known[(tenant_id, key)] = found
    results: list[Accepted | Exception] = []
    fresh: list[NewMessage] = []
    for item in items:
        if item.idempotency_key is None:
            fresh.append(item)
            results.append(Accepted(item.id, item.status, created=True))
            continue
        slot = (item.tenant_id, item.idempotency_key)
        if slot in known:
            message_id, status, request_hash = known[slot]
            results.append(_repeat(item, message_id, Status(status), request_hash))
            continue
        known[slot] = (item.id, item.status.value, item.request_hash or "")
        fresh.append(item)
        results.append(Accepted(item.id, item.status, created=True))
    await queue.enqueue(conn, fresh)
    return results


def _repeat(
    item: NewMessage, message_id: str, status: Status, request_hash: str
) -> Accepted | RequestError:
    if request_hash != (item.request_hash or ""):
        return IdempotencyMismatch(
            "this Idempotency-Key was used with a different request body",
            field="Idempotency-Key",
        )
    return Accepted(message_id, status, created=False)


async def _flush_finishes(conn: AsyncConnection, items: Sequence[Finish]) -> list[None]:
    await queue.finish(conn, items, now=utcnow())
    return [None] * len(items)
