"""`Store`: the one object the API, the worker and the CLI use to reach the database.

It owns the engines and the group commits for accepts and finishes, runs
the queue operations in transactions, and turns "no such row" and "wrong
status" into the request errors the API answers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from mailgate.config import DatabaseSettings
from mailgate.errors import Conflict, IdempotencyMismatch, NotFound, RequestError
from mailgate.message import Status
from mailgate.store import keys, migrate, nodes, queue
from mailgate.store import messages as reads
from mailgate.store import providers as provider_rows
from mailgate.store.engine import Database
from mailgate.store.group_commit import GroupCommit
from mailgate.store.keys import ApiKey
from mailgate.store.notify import Listener, notify
from mailgate.store.providers import ProviderEvent, ProviderState
from mailgate.store.records import Accepted, Claimed, Finish, MessageView, NewMessage


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
        await self.db.write(
            nodes.record,
            node_id=node_id,
            kind=kind,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=started_at,
            now=utcnow(),
        )

    # --- accepting -----------------------------------------------------------

    def on_accept(self, listener: Callable[[int], None]) -> None:
        """Call `listener(n)` after each commit that made `n` messages due now."""
        self._accept_listeners.append(listener)

    def _notify_accepted(self, items: Sequence[NewMessage]) -> None:
        due = sum(1 for item in items if item.send_at is None)
        if due:
            self._notify_due(due)

    def _notify_due(self, n: int) -> None:
        for listener in self._accept_listeners:
            listener(n)

    async def accept(self, item: NewMessage) -> Accepted:
        """Commit one message (grouped with concurrent accepts); raises on refusal."""
        return await self._accepts.submit(item)

    async def accept_many(self, items: Sequence[NewMessage]) -> list[Accepted | Exception]:
        return await self._accepts.submit_many(items)

    # --- reading -------------------------------------------------------------

    async def get_message(self, tenant_id: str, message_id: str) -> MessageView:
        view = await self.db.read(reads.get_message, tenant_id=tenant_id, message_id=message_id)
        if view is None:
            raise NotFound(f"no message {message_id}", field="id")
        return view

    async def list_messages(self, tenant_id: str, **filters: Any) -> list[MessageView]:
        return await self.db.read(reads.list_messages, tenant_id=tenant_id, **filters)

    async def queue_depth(self) -> dict[str, int]:
        return await self.db.read(reads.count_waiting)

    # --- operator actions ----------------------------------------------------

    async def cancel(self, tenant_id: str, message_id: str) -> None:
        status = await self.db.write(_cancel, tenant_id, message_id, utcnow())
        if status is not None:
            raise Conflict(
                f"message is {status}; only queued or scheduled messages can be cancelled",
                field="status",
            )

    async def retry(self, tenant_id: str, message_id: str) -> None:
        status = await self.db.write(_retry, tenant_id, message_id, utcnow())
        if status is not None:
            raise Conflict(
                f"message is {status}; only failed messages can be retried", field="status"
            )
        self._notify_due(1)

    # --- the worker's side ---------------------------------------------------

    async def claim(self, owner: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
        now = utcnow()
        return await self.db.write(
            queue.claim,
            owner=owner,
            now=now,
            lease_until=now + timedelta(seconds=lease_seconds),
            limit=limit,
        )

    async def finish(self, item: Finish) -> None:
        await self._finishes.submit(item)

    async def extend_leases(self, owner: str, ids: Sequence[str], *, lease_seconds: float) -> int:
        until = utcnow() + timedelta(seconds=lease_seconds)
        return await self.db.write(queue.extend_leases, owner=owner, ids=ids, lease_until=until)

    async def release(self, owner: str, ids: Sequence[str]) -> None:
        await self.db.write(queue.release, owner=owner, ids=ids, now=utcnow())

    async def reclaim_expired(self) -> list[str]:
        return await self.db.write(_reclaim, utcnow())

    async def listen(self, on_work: Callable[[], None]) -> None:
        """Call `on_work()` when another process makes work due; runs until cancelled.

        PostgreSQL only (LISTEN/NOTIFY); on SQLite it returns at once and
        workers in other processes rely on polling.
        """
        if self.db.is_sqlite:
            return
        listener = Listener(
            self.settings.url, on_work, connect_timeout=self.settings.busy_timeout_seconds
        )
        await listener.run()

    # --- providers -----------------------------------------------------------

    async def provider_states(self) -> dict[str, ProviderState]:
        return await self.db.read(provider_rows.get_states)

    async def update_provider(self, name: str, **values: Any) -> None:
        await self.db.write(provider_rows.update_state, name, now=utcnow(), **values)

    async def recent_outcomes(self, window: timedelta) -> Mapping[str, tuple[int, int]]:
        return await self.db.read(provider_rows.recent_outcomes, since=utcnow() - window)

    async def provider_event(self, name: str, kind: str, **detail: Any) -> None:
        """Append to the provider's history (breaker changes, switches, drills, probes)."""
        await self.db.write(provider_rows.record_event, name, kind, at=utcnow(), detail=detail)

    async def provider_events(self, name: str, *, limit: int = 50) -> list[ProviderEvent]:
        return await self.db.read(provider_rows.list_events, name, limit=limit)

    async def reserve_quota(self, name: str, *, day: str, want: int, quota: int) -> int:
        return await self.db.write(
            provider_rows.reserve_quota, name, day=day, want=want, quota=quota
        )

    async def release_quota(self, name: str, *, day: str, unused: int) -> None:
        await self.db.write(provider_rows.release_quota, name, day=day, unused=unused)

    async def quota_used(self, *, day: str) -> dict[str, int]:
        return await self.db.read(provider_rows.quota_used, day=day)

    async def claim_probe(self, name: str, *, every_seconds: float) -> bool:
        return await self.db.write(
            provider_rows.claim_probe, name, now=utcnow(), every=timedelta(seconds=every_seconds)
        )

    async def live_workers(self, *, within_seconds: float) -> int:
        since = utcnow() - timedelta(seconds=within_seconds)
        return await self.db.read(nodes.live_workers, since=since)

    async def node_stopped(self, node_id: str) -> None:
        await self.db.write(nodes.stopped, node_id, now=utcnow())

    # --- API keys ------------------------------------------------------------

    async def create_key(
        self, name: str, *, tenant_id: str, key: str | None = None
    ) -> tuple[ApiKey, str]:
        return await self.db.write(
            keys.create_key, tenant_id=tenant_id, name=name, now=utcnow(), key=key
        )

    async def find_key(self, secret: str) -> ApiKey | None:
        return await self.db.read(keys.find_key, secret)

    async def list_keys(self) -> list[ApiKey]:
        return await self.db.read(keys.list_keys)

    async def revoke_key(self, key_id: str) -> None:
        if not await self.db.write(keys.revoke_key, key_id, now=utcnow()):
            raise NotFound(f"no active key {key_id}", field="id")


def _cancel(conn: Connection, tenant_id: str, message_id: str, now: datetime) -> str | None:
    """None when cancelled, else the status that prevented it."""
    if queue.cancel(conn, tenant_id=tenant_id, message_id=message_id, now=now):
        return None
    return _status(conn, tenant_id, message_id)


def _retry(conn: Connection, tenant_id: str, message_id: str, now: datetime) -> str | None:
    """None when queued again, else the status that prevented it."""
    if queue.retry(conn, tenant_id=tenant_id, message_id=message_id, now=now):
        notify(conn)
        return None
    return _status(conn, tenant_id, message_id)


def _reclaim(conn: Connection, now: datetime) -> list[str]:
    reclaimed = queue.reclaim_expired(conn, now=now)
    if reclaimed:
        notify(conn)
    return reclaimed


def _status(conn: Connection, tenant_id: str, message_id: str) -> str:
    status = queue.status_of(conn, tenant_id=tenant_id, message_id=message_id)
    if status is None:
        raise NotFound(f"no message {message_id}", field="id")
    return status


def _flush_accepts(conn: Connection, items: Sequence[NewMessage]) -> list[Accepted | Exception]:
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
        for key, found in queue.find_idempotent(conn, tenant_id, tenant_keys).items():
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
    queue.enqueue(conn, fresh)
    if any(item.send_at is None for item in fresh):
        notify(conn)
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


def _flush_finishes(conn: Connection, items: Sequence[Finish]) -> list[None]:
    queue.finish(conn, items, now=utcnow())
    return [None] * len(items)
