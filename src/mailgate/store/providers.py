"""Provider state shared by every process through the store.

The operator's switches (enabled, simulated failure) and the breaker's state
live here so that every worker sees the same picture and it survives
restarts. A row exists only once something changed; before that the
configuration's defaults hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, or_, select, update

from mailgate.message import Outcome
from mailgate.store import counters
from mailgate.store.engine import upsert
from mailgate.store.tables import attempts, provider_events, provider_quota, provider_state


@dataclass(frozen=True, slots=True)
class ProviderState:
    name: str
    enabled: bool | None = None
    simulated_failure: str = "off"
    breaker_state: str = "closed"
    breaker_changed_at: datetime | None = None
    paused_until: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    probed_at: datetime | None = None
    probe_error: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """Something that happened to a provider: a breaker change, a switch, a drill, a probe."""

    provider: str
    type: str
    at: datetime
    detail: Mapping[str, Any]


def get_states(conn: Connection) -> dict[str, ProviderState]:
    rows = conn.execute(select(provider_state))
    return {
        r.name: ProviderState(
            name=r.name,
            enabled=r.enabled,
            simulated_failure=r.simulated_failure,
            breaker_state=r.breaker_state,
            breaker_changed_at=r.breaker_changed_at,
            paused_until=r.paused_until,
            last_error=r.last_error,
            last_error_at=r.last_error_at,
            probed_at=r.probed_at,
            probe_error=r.probe_error,
        )
        for r in rows
    }


def update_state(conn: Connection, /, name: str, *, now: datetime, **values: Any) -> None:
    """Set some of a provider's state columns, creating its row if needed."""
    values["updated_at"] = now
    statement = upsert(conn, provider_state).values(name=name, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))


def recent_outcomes(conn: Connection, *, since: datetime) -> Mapping[str, tuple[int, int]]:
    """Per provider: (attempts, attempts that were not the provider's fault) since `since`.

    A rejected message (`permanent`) says nothing bad about the provider, so
    it counts as a success for the provider's health.
    """
    healthy = case((attempts.c.outcome.in_((Outcome.SENT, Outcome.PERMANENT)), 1), else_=0)
    rows = conn.execute(
        select(attempts.c.provider, func.count(), func.sum(healthy))
        .where(and_(attempts.c.started_at >= since, attempts.c.provider.is_not(None)))
        .group_by(attempts.c.provider)
    )
    return {provider: (int(total), int(ok or 0)) for provider, total, ok in rows}


def record_event(
    conn: Connection, provider: str, kind: str, *, at: datetime, detail: Mapping[str, Any]
) -> None:
    conn.execute(
        insert(provider_events).values(provider=provider, type=kind, at=at, detail=dict(detail))
    )


def list_events(conn: Connection, provider: str, *, limit: int) -> list[ProviderEvent]:
    """The provider's latest events, newest first."""
    rows = conn.execute(
        select(provider_events)
        .where(provider_events.c.provider == provider)
        .order_by(provider_events.c.id.desc())
        .limit(limit)
    )
    return [ProviderEvent(r.provider, r.type, r.at, r.detail) for r in rows]


def reserve_quota(conn: Connection, provider: str, *, day: str, want: int, quota: int) -> int:
    """Take up to `want` of today's `quota` sends; returns how many were granted.

    Workers reserve in chunks, so the daily quota holds across processes
    without a write per send.
    """
    key = {"provider": provider, "day": day}
    return counters.take(conn, provider_quota, key, want=want, cap=quota)


def release_quota(conn: Connection, provider: str, *, day: str, unused: int) -> None:
    """Give back sends reserved but not made (a worker stopping)."""
    left = provider_quota.c.used - unused
    conn.execute(
        update(provider_quota)
        .where(provider_quota.c.provider == provider, provider_quota.c.day == day)
        .values(used=case((left < 0, 0), else_=left))
    )


def quota_used(conn: Connection, *, day: str) -> dict[str, int]:
    rows = conn.execute(
        select(provider_quota.c.provider, provider_quota.c.used).where(provider_quota.c.day == day)
    )
    return {provider: int(used) for provider, used in rows}


def claim_probe(conn: Connection, provider: str, *, now: datetime, every: timedelta) -> bool:
    """True for the one process whose turn it is to probe the provider now."""
    conn.execute(
        upsert(conn, provider_state)
        .values(name=provider, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    result = conn.execute(
        update(provider_state)
        .where(
            provider_state.c.name == provider,
            or_(provider_state.c.probed_at.is_(None), provider_state.c.probed_at <= now - every),
        )
        .values(probed_at=now)
    )
    return bool(result.rowcount == 1)
