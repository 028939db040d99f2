"""`Store`: the one object the API, the worker and the CLI use to reach the database.

It owns the engines and the group commits for accepts and finishes, runs
the queue operations in transactions, and turns "no such row" and "wrong
status" into the request errors the API answers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from mailgate.config import DatabaseSettings
from mailgate.errors import (
    IdempotencyMismatch,
    NotFound,
    QuotaExceeded,
    RequestError,
)
from mailgate.events.inbound import InboundEvent
from mailgate.message import Status
from mailgate.store import (
    audit,
    changes,
    feedback,
    keys,
    migrate,
    nodes,
    outbox,
    queue,
    sessions,
    suppress,
    tenants,
)
from mailgate.store import eventlog as event_log
from mailgate.store import messages as reads
from mailgate.store import providers as provider_rows
from mailgate.store import webhooks as hooks
from mailgate.store.audit import Actor, AuditRecord, Change
from mailgate.store.engine import Database
from mailgate.store.group_commit import GroupCommit
from mailgate.store.keys import ApiKey
from mailgate.store.notify import Listener, notify
from mailgate.store.providers import ProviderEvent, ProviderState
from mailgate.store.records import Accepted, Claimed, Finish, MessageView, NewMessage
from mailgate.store.suppress import Suppression
from mailgate.store.tenants import Tenant

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.db = Database(settings)
        self._accept_listeners: list[Callable[[int], None]] = []
        self._accepts: GroupCommit[NewMessage, Accepted] = GroupCommit(
            self.db,
            _flush_accepts,
            name="accept",
            after_commit=self._notify_accepted,
            prepare=queue.new_rows,
        )
        self._finishes: GroupCommit[Finish, None] = GroupCommit(
            self.db,
            _flush_finishes,
            name="finish",
            prepare=lambda items, dialect: queue.finish_rows(items, dialect, utcnow()),
        )

    # --- lifecycle -----------------------------------------------------------

    async def migrate(self) -> None:
        await migrate.upgrade(self.db)
        await self.ensure_default_tenant()

    async def ensure_default_tenant(self) -> None:
        """The tenant `default` always exists (the migration makes it; this keeps it so)."""
        await self.db.write(changes.ensure_default_tenant, utcnow())

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

    async def get_message(self, tenant_id: str | None, message_id: str) -> MessageView:
        """A message of the tenant (None: of any tenant, for an admin); else `NotFound`."""
        view = await self.db.read(reads.get_message, tenant_id=tenant_id, message_id=message_id)
        if view is None:
            raise NotFound(f"no message {message_id}", field="id")
        return view

    async def list_messages(self, tenant_id: str | None, **filters: Any) -> list[MessageView]:
        return await self.db.read(reads.list_messages, tenant_id=tenant_id, **filters)

    async def overview(self, tenant_id: str | None) -> reads.Overview:
        """The console dashboard's figures for the tenant (None: every tenant)."""
        return await self.db.read(reads.overview, tenant_id=tenant_id, now=utcnow())

    async def queue_depth(self) -> dict[str, int]:
        return await self.db.read(reads.count_waiting)

    # --- operator actions ----------------------------------------------------

    async def cancel(
        self, tenant_id: str | None, message_id: str, *, actor: Actor | None = None
    ) -> None:
        """Cancel a queued or scheduled message of the tenant (None: any tenant's)."""
        await self._audited(actor, changes.cancel, tenant_id, message_id, utcnow())

    async def retry(
        self, tenant_id: str | None, message_id: str, *, actor: Actor | None = None
    ) -> None:
        """Queue a failed message of the tenant (None: any tenant's) again."""
        await self._audited(actor, changes.retry, tenant_id, message_id, utcnow())
        self._notify_due(1)

    async def retry_matching(
        self,
        tenant_id: str | None,
        where: reads.MessageFilter,
        *,
        dry_run: bool,
        actor: Actor,
    ) -> tuple[int, int]:
        """Queue every failed message of the tenant (None: every tenant's) that `where`
        matches again, in one transaction: (matched, retried)."""
        matched, retried = await self._audited(
            actor, changes.retry_matching, tenant_id, where, utcnow(),
            dry_run=dry_run, audit_tenant=tenant_id or actor.tenant_id,
        )  # fmt: skip
        if retried:
            self._notify_due(retried)
        return matched, retried

    async def _audited(
        self,
        actor: Actor | None,
        fn: Callable[..., tuple[T, Change | None]],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """Run a change and, in the same transaction, its audit record; then log it.

        A `fn` that changed nothing returns no `Change`, and nothing is audited.
        """
        at = utcnow()

        def run(conn: Connection) -> tuple[T, Change | None]:
            result, change = fn(conn, *args, **kwargs)
            if actor is not None and change is not None:
                audit.record(conn, actor, change, at=at)
            return result, change

        result, change = await self.db.write(run)
        if actor is not None and change is not None:
            audit.logged(actor, change)
        return result

    async def audit_records(
        self, *, tenant_id: str | None, limit: int, before_id: int | None = None
    ) -> list[AuditRecord]:
        return await self.db.read(
            audit.list_records, tenant_id=tenant_id, limit=limit, before_id=before_id
        )

    # --- the event log ---

    async def list_events(
        self, filters: event_log.EventFilter, *, limit: int, before_id: int | None = None
    ) -> list[event_log.LoggedEvent]:
        """The events of the filter's tenant (None: every tenant's), newest first."""
        return await self.db.read(
            event_log.list_events, filters=filters, limit=limit, before_id=before_id
        )

    async def follow_events(
        self, filters: event_log.EventFilter, *, after: int | None
    ) -> event_log.EventTail:
        """A live reading of the log past the event id `after` (None: from now on)."""
        return await event_log.EventTail.start(self.db, filters, after=after)

    # --- provider events and suppressions -------------------------------------

    async def record_provider_events(
        self, provider: str, items: Sequence[InboundEvent], *, replay_key: str | None = None
    ) -> feedback.Recorded:
        """Record one verified webhook request's events in one transaction.

        Raises `feedback.Replayed` when its one-time signature token was seen.
        """
        return await self.db.write(
            feedback.record, provider=provider, items=items, replay_key=replay_key, now=utcnow()
        )

    async def list_suppressions(self, tenant_id: str, **filters: Any) -> list[Suppression]:
        return await self.db.read(suppress.list_suppressions, tenant_id=tenant_id, **filters)

    async def is_suppressed(self, tenant_id: str, email: str) -> bool:
        return await self.db.read(suppress.is_suppressed, tenant_id, email)

    async def add_suppression(
        self, tenant_id: str, email: str, reason: str = "manual", *, actor: Actor | None = None
    ) -> Suppression:
        return await self._audited(actor, suppress.add, tenant_id, email, reason, utcnow())

    async def remove_suppression(
        self, tenant_id: str, email: str, *, actor: Actor | None = None
    ) -> None:
        await self._audited(actor, suppress.remove, tenant_id, email)

    # --- webhooks to the tenants' endpoints -----------------------------------

    async def create_webhook(
        self,
        tenant_id: str,
        url: str,
        events: Sequence[str],
        description: str | None = None,
        *,
        actor: Actor | None = None,
    ) -> hooks.Endpoint:
        return await self._audited(
            actor, hooks.create, tenant_id, url, events, description, utcnow()
        )

    async def get_webhook(self, tenant_id: str | None, webhook_id: str) -> hooks.Endpoint:
        return await self.db.read(hooks.get, tenant_id, webhook_id)

    async def list_webhooks(
        self, *, tenant_id: str | None, limit: int = 100, before_id: str | None = None
    ) -> list[hooks.Endpoint]:
        return await self.db.read(
            hooks.list_endpoints, tenant_id=tenant_id, limit=limit, before_id=before_id
        )

    async def update_webhook(
        self,
        tenant_id: str | None,
        webhook_id: str,
        *,
        actor: Actor | None = None,
        **values: Any,
    ) -> hooks.Endpoint:
        return await self._audited(actor, hooks.change, tenant_id, webhook_id, values, utcnow())

    async def delete_webhook(
        self, tenant_id: str | None, webhook_id: str, *, actor: Actor | None = None
    ) -> None:
        await self._audited(actor, hooks.remove, tenant_id, webhook_id)

    async def test_webhook(
        self, tenant_id: str | None, webhook_id: str, *, actor: Actor | None = None
    ) -> int:
        return await self._audited(actor, hooks.send_test, tenant_id, webhook_id, utcnow())

    async def webhook_deliveries(
        self, tenant_id: str | None, webhook_id: str, **filters: Any
    ) -> list[hooks.Delivery]:
        return await self.db.read(
            hooks.list_deliveries, tenant_id=tenant_id, webhook_id=webhook_id, **filters
        )

    async def retry_webhook_delivery(
        self,
        tenant_id: str | None,
        webhook_id: str,
        delivery_id: int,
        *,
        actor: Actor | None = None,
    ) -> None:
        await self._audited(actor, hooks.retry, tenant_id, webhook_id, delivery_id, utcnow())

    async def claim_webhook_deliveries(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> list[hooks.Due]:
        if not await self.db.read(hooks.any_work):
            return []
        now = utcnow()
        return await self.db.write(
            hooks.claim,
            owner=owner,
            now=now,
            lease_until=now + timedelta(seconds=lease_seconds),
            limit=limit,
        )

    async def finish_webhook_deliveries(
        self, owner: str, outcomes: Sequence[hooks.Outcome], policy: hooks.Policy
    ) -> list[tuple[str, str, str]]:
        return await self.db.write(hooks.finish, owner=owner, outcomes=outcomes, policy=policy)

    # --- the worker's side ---------------------------------------------------

    async def claim(self, owner: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
        claimed = await self.db.write(_claim, owner, limit, timedelta(seconds=lease_seconds))
        return claimed.decoded()

    async def finish(self, item: Finish) -> None:
        await self._finishes.submit(item)

    async def extend_leases(self, owner: str, ids: Sequence[str], *, lease_seconds: float) -> int:
        return await self.db.write(_extend_leases, owner, ids, timedelta(seconds=lease_seconds))

    async def release(self, owner: str, ids: Sequence[str]) -> None:
        await self.db.write(queue.release, owner=owner, ids=ids, now=utcnow())

    async def reclaim_expired(self, dead: Sequence[str] = ()) -> list[str]:
        """Queue again what lost its worker: leases that ran out, and every lease of a worker
        in `dead` (taken for dead from its heartbeats; it is marked stopped)."""
        return await self.db.write(_reclaim, utcnow(), dead)

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

    async def switch_provider(self, name: str, kind: str, *, actor: Actor, **values: Any) -> None:
        """An operator's switch or drill: the state, the provider's event and the audit record."""
        await self._audited(actor, changes.switch_provider, name, kind, actor, utcnow(), values)

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

    async def worker_beats(self, *, within_seconds: float) -> dict[str, datetime]:
        """The workers not stopped and seen within the last `within_seconds`, with the last
        heartbeat each wrote (by its own clock)."""
        since = utcnow() - timedelta(seconds=within_seconds)
        return await self.db.read(nodes.worker_beats, since=since)

    async def live_workers(self, *, within_seconds: float) -> int:
        since = utcnow() - timedelta(seconds=within_seconds)
        return await self.db.read(nodes.live_workers, since=since)

    async def node_stopped(self, node_id: str) -> None:
        await self.db.write(nodes.stopped, node_id, now=utcnow())

    # --- tenants -------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant, *, actor: Actor | None = None) -> Tenant:
        """Store a new tenant; `Conflict` when its name is taken."""
        try:
            await self._audited(actor, changes.create_tenant, tenant)
        except IntegrityError:  # a concurrent create took the name first
            raise changes.name_conflict(tenant.name) from None
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant:
        tenant = await self.db.read(tenants.get_tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id}", field="id")
        return tenant

    async def list_tenants(
        self, *, limit: int | None = None, before_id: str | None = None
    ) -> list[Tenant]:
        return await self.db.read(tenants.list_tenants, limit=limit, before_id=before_id)

    async def update_tenant(
        self, tenant_id: str, *, actor: Actor | None = None, **values: Any
    ) -> Tenant:
        """Change some of a tenant's fields (`enabled` too: holding or releasing its mail)."""
        try:
            return await self._audited(actor, changes.update_tenant, tenant_id, utcnow(), values)
        except IntegrityError:
            raise changes.name_conflict(values.get("name", "")) from None

    async def used_today(self, tenant_ids: Sequence[str]) -> dict[str, int]:
        """Messages each tenant had accepted this UTC day (counted only under a daily quota)."""
        return await self.db.read(tenants.used_on, tenant_ids, day=utc_day(utcnow()))

    async def take_rate(self, tenant_id: str, *, period: int, want: int, cap: int) -> int:
        return await self.db.write(tenants.take_rate, tenant_id, period=period, want=want, cap=cap)

    # --- API keys ------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        *,
        tenant_id: str,
        scopes: Iterable[str] = keys.EVERY_SCOPE,
        key: str | None = None,
        actor: Actor | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key of an existing tenant, and its secret (shown once, never stored)."""
        return await self._audited(
            actor, changes.create_key, tenant_id=tenant_id, name=name, scopes=scopes, key=key,
            now=utcnow(),
        )  # fmt: skip

    async def find_key(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        """The active key with this secret, and its tenant."""
        return await self.db.read(keys.find_key, secret)

    async def any_keys(self) -> bool:
        return await self.db.read(keys.any_keys)

    async def get_key(self, key_id: str, *, tenant_id: str | None) -> ApiKey:
        key = await self.db.read(keys.get_key, key_id, tenant_id=tenant_id)
        if key is None:
            raise NotFound(f"no key {key_id}", field="id")
        return key

    async def list_keys(
        self,
        *,
        tenant_id: str | None = None,
        limit: int | None = None,
        before_id: str | None = None,
    ) -> list[ApiKey]:
        return await self.db.read(
            keys.list_keys, tenant_id=tenant_id, limit=limit, before_id=before_id
        )

    async def revoke_key(
        self, key_id: str, *, tenant_id: str | None = None, actor: Actor | None = None
    ) -> ApiKey:
        """Revoke an active key of the tenant (None: of any tenant)."""
        return await self._audited(actor, changes.revoke_key, key_id, tenant_id, utcnow())

    # --- console sessions ------------------------------------------------------

    async def shared_secret(self, name: str) -> str:
        """A secret every process shares (made by whichever asks first)."""
        try:
            return await self.db.write(sessions.shared_secret, name, utcnow())
        except IntegrityError:  # another process made it at the same moment
            return await self.db.write(sessions.shared_secret, name, utcnow())

    async def open_session(self, key_id: str, token: str, *, expires_at: datetime) -> str:
        """A console session for the key; its CSRF token."""
        return await self.db.write(
            sessions.open_session, key_id=key_id, token=token, now=utcnow(), expires_at=expires_at
        )

    async def find_session(self, token: str) -> tuple[ApiKey, Tenant, str, datetime] | None:
        return await self.db.read(sessions.find_session, token, utcnow())

    async def end_session(self, token: str) -> bool:
        return await self.db.write(sessions.end_session, token)


def utc_day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def _claim(conn: Connection, owner: str, limit: int, lease: timedelta) -> queue.ClaimedRows:
    """A claim whose lease starts when its statement runs.

    Reading the clock before the write would start the lease early by however
    long the write waited for a connection or the write lock: under load a
    lease could be spent, or nearly, before the worker held the message, and
    another worker's reclaim would take back a message still being sent.
    """
    now = utcnow()
    return queue.claim(conn, owner=owner, now=now, lease_until=now + lease, limit=limit)


def _extend_leases(conn: Connection, owner: str, ids: Sequence[str], lease: timedelta) -> int:
    """Push leases forward from when the statement runs (see `_claim`)."""
    return queue.extend_leases(conn, owner=owner, ids=ids, lease_until=utcnow() + lease)


def _reclaim(conn: Connection, now: datetime, dead: Sequence[str]) -> list[str]:
    if dead:
        nodes.given_up(conn, dead, now=now)
    reclaimed = queue.reclaim_expired(conn, now=now, dead=dead)
    if reclaimed:
        notify(conn)
    return reclaimed


def _flush_accepts(
    conn: Connection, items: Sequence[NewMessage], made: dict[str, queue.NewRows] | None = None
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
    if any(item.daily_quota is not None for item in fresh):
        fresh = _within_quotas(conn, fresh, results, items)
    queue.enqueue(conn, fresh, made)
    if fresh:
        outbox.enqueue_lazily(
            conn,
            {item.tenant_id for item in fresh},
            lambda: [
                outbox.Change(
                    item.tenant_id,
                    item.id,
                    "message.accepted",
                    status=item.status.value,
                    event={"type": item.first_event()[0].value, **item.first_event()[1]},
                )
                for item in fresh
            ],
            now=fresh[0].created_at,
        )
    if any(item.send_at is None for item in fresh):
        notify(conn)
    return results


def _within_quotas(
    conn: Connection,
    fresh: list[NewMessage],
    results: list[Accepted | Exception],
    items: Sequence[NewMessage],
) -> list[NewMessage]:
    """Count new messages against their tenants' daily quotas; refuse those over it.

    Counted in the accepting transaction, so the quota holds exactly across
    every process and a message that is not committed is not counted.
    """
    wanted: dict[tuple[str, str, int, str | None], list[NewMessage]] = {}
    for item in fresh:
        if item.daily_quota is not None:
            slot = (item.tenant_id, utc_day(item.created_at), item.daily_quota, item.together)
            wanted.setdefault(slot, []).append(item)
    refused: set[str] = set()
    for (tenant_id, day, quota, together), group in wanted.items():
        granted = tenants.take_daily(
            conn, tenant_id, day=day, want=len(group), quota=quota, whole=together is not None
        )
        refused.update(item.id for item in group[granted:])
    if not refused:
        return fresh
    for i, (item, result) in enumerate(zip(items, results, strict=True)):
        # A refused message, or a repeat of its idempotency key in the same group.
        if isinstance(result, Accepted) and result.id in refused:
            results[i] = QuotaExceeded(
                f"the tenant's daily quota of {item.daily_quota} messages is used up "
                "(it starts again at 00:00 UTC)",
                retry_after=_seconds_to_midnight(item.created_at),
            )
    return [item for item in fresh if item.id not in refused]


def _seconds_to_midnight(at: datetime) -> int:
    at = at.astimezone(UTC)
    midnight = (at + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((midnight - at).total_seconds()) + 1


def _repeat(
    item: NewMessage, message_id: str, status: Status, request_hash: str
) -> Accepted | RequestError:
    if request_hash != (item.request_hash or ""):
        return IdempotencyMismatch(
            "this Idempotency-Key was used with a different request body",
            field="Idempotency-Key",
        )
    return Accepted(message_id, status, created=False)


def _flush_finishes(
    conn: Connection, items: Sequence[Finish], rows: queue.FinishRows | None = None
) -> list[None]:
    queue.finish(conn, items, rows or queue.finish_rows(items, conn.dialect.name, utcnow()))
    return [None] * len(items)
