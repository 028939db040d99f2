"""Tenants: who owns which messages and keys, and the rules their mail follows.

Every message, key and audit record carries a `tenant_id`; the tenant
`default` always exists (the migration creates it). A tenant is never
deleted, only disabled: its keys are refused and its waiting messages are
held (`next_attempt_at` = `HELD`, never due) until it is enabled again,
when they become due at once (or at their `send_at`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, insert, select, text, tuple_, update

from mailgate.store import counters
from mailgate.store.engine import upsert
from mailgate.store.tables import (
    DEFAULT_TENANT,
    HELD,
    WAITING,
    messages,
    tenant_quota,
    tenant_rate,
    tenants,
)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    enabled: bool
    sender_domains: tuple[str, ...]
    """Lower-case domains a `from` may use; empty: any."""
    default_from: str | None
    providers: tuple[str, ...] | None
    """The configured providers its mail may use; None: every one."""
    rate_limit: str | None
    daily_quota: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_default(self) -> bool:
        return self.id == DEFAULT_TENANT


def tenant_from_row(r: Any) -> Tenant:
    return Tenant(
        id=r["id"],
        name=r["name"],
        enabled=bool(r["enabled"]),
        sender_domains=tuple(r["sender_domains"] or ()),
        default_from=r["default_from"],
        providers=tuple(r["providers"]) if r["providers"] is not None else None,
        rate_limit=r["rate_limit"],
        daily_quota=r["daily_quota"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _values(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "enabled": tenant.enabled,
        "sender_domains": list(tenant.sender_domains),
        "default_from": tenant.default_from,
        "providers": list(tenant.providers) if tenant.providers is not None else None,
        "rate_limit": tenant.rate_limit,
        "daily_quota": tenant.daily_quota,
        "created_at": tenant.created_at,
        "updated_at": tenant.updated_at,
    }


def create_tenant(conn: Connection, tenant: Tenant) -> None:
    conn.execute(insert(tenants).values(**_values(tenant)))


def name_taken(conn: Connection, name: str, *, other_than: str | None = None) -> bool:
    query = select(tenants.c.id).where(tenants.c.name == name)
    if other_than is not None:
        query = query.where(tenants.c.id != other_than)
    return conn.execute(query).first() is not None


def get_tenant(conn: Connection, tenant_id: str) -> Tenant | None:
    row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
    return tenant_from_row(row._mapping) if row is not None else None


def list_tenants(
    conn: Connection, *, limit: int | None = None, before_id: str | None = None
) -> list[Tenant]:
    """Newest first; `before_id` is the cursor (the last tenant of the previous page)."""
    query = select(tenants)
    if before_id is not None:
        at = select(tenants.c.created_at).where(tenants.c.id == before_id).scalar_subquery()
        query = query.where(tuple_(tenants.c.created_at, tenants.c.id) < tuple_(at, before_id))
    query = query.order_by(tenants.c.created_at.desc(), tenants.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [tenant_from_row(r._mapping) for r in conn.execute(query)]


def update_tenant(conn: Connection, tenant_id: str, *, now: datetime, **values: Any) -> None:
    for name in ("sender_domains", "providers"):
        if name in values and values[name] is not None:
            values[name] = list(values[name])
    conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(updated_at=now, **values))


def hold_messages(conn: Connection, tenant_id: str, *, now: datetime) -> int:
    """A tenant disabled: its waiting messages are never due until it is enabled."""
    result = conn.execute(
        update(messages)
        .where(messages.c.tenant_id == tenant_id, text(WAITING))
        .values(next_attempt_at=HELD, updated_at=now)
    )
    return int(result.rowcount)


def release_messages(conn: Connection, tenant_id: str, *, now: datetime) -> int:
    """A tenant enabled again: its held messages are due now, or at their `send_at`."""
    due = case(
        (messages.c.send_at.is_not(None) & (messages.c.send_at > now), messages.c.send_at),
        else_=now,
    )
    result = conn.execute(
        update(messages)
        .where(
            messages.c.tenant_id == tenant_id,
            text(WAITING),
            messages.c.next_attempt_at == HELD,
        )
        .values(next_attempt_at=due, updated_at=now)
    )
    return int(result.rowcount)


# --- limits ------------------------------------------------------------------------


def take_daily(
    conn: Connection, tenant_id: str, *, day: str, want: int, quota: int, whole: bool = False
) -> int:
    """Count up to `want` new messages against the tenant's quota for `day` (`whole`: all
    of them or none)."""
    key = {"tenant_id": tenant_id, "day": day}
    return counters.take(conn, tenant_quota, key, want=want, cap=quota, whole=whole)


def used_on(conn: Connection, tenant_ids: Sequence[str], *, day: str) -> dict[str, int]:
    rows = conn.execute(
        select(tenant_quota.c.tenant_id, tenant_quota.c.used).where(
            tenant_quota.c.tenant_id.in_(tenant_ids), tenant_quota.c.day == day
        )
    )
    return {tenant_id: int(used) for tenant_id, used in rows}


def take_rate(conn: Connection, tenant_id: str, *, period: int, want: int, cap: int) -> int:
    """Take up to `want` of the `cap` requests of rate window `period`; returns how many.

    One row per tenant holds the current window's count; the first taker in
    a new window starts it again from zero. A window older than the row's
    (a process whose clock lags) gets nothing.
    """
    conn.execute(
        upsert(conn, tenant_rate)
        .values(tenant_id=tenant_id, period=period, used=0)
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    row = conn.execute(
        select(tenant_rate.c.period, tenant_rate.c.used)
        .where(tenant_rate.c.tenant_id == tenant_id)
        .with_for_update()
    ).one()
    if row.period > period:
        return 0
    used = row.used if row.period == period else 0
    granted = max(0, min(want, cap - used))
    conn.execute(
        update(tenant_rate)
        .where(tenant_rate.c.tenant_id == tenant_id)
        .values(period=period, used=used + granted)
    )
    return int(granted)
