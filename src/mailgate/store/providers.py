"""Provider state shared by every process through the store.

The operator's switches (enabled, simulated failure) and the breaker's state
live here so that every worker sees the same picture and it survives
restarts. A row exists only once something changed; before that the
configuration's defaults hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from mailgate.message import Outcome
from mailgate.store.tables import attempts, provider_state


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
        )
        for r in rows
    }


def update_state(conn: Connection, /, name: str, *, now: datetime, **values: Any) -> None:
    """Set some of a provider's state columns, creating its row if needed."""
    values["updated_at"] = now
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(provider_state).values(name=name, **values)
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
