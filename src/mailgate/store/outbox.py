"""The webhook outbox: deliveries to tenants' endpoints, written with the change they report.

`enqueue` runs inside the transaction that makes the change, so a change
that commits has its deliveries and one that rolls back has none: a crash
can delay a webhook, never lose it. It reads the tenant's enabled
endpoints (one indexed query per call; none at all for a tenant without
endpoints is the common, cheap case) and writes one delivery per endpoint
that subscribes to the type. The worker's webhook sender takes them from
there (`claim`, `finish`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from mailgate.message import rfc3339
from mailgate.store.tables import webhook_deliveries

EVENT_TYPES = (
    "message.accepted",
    "message.sent",
    "message.failed",
    "message.delivered",
    "message.deferred",
    "message.bounced",
    "message.complained",
    "message.opened",
    "message.clicked",
    "message.unsubscribed",
    "message.suppressed",
    "webhook.test",
)


@dataclass(frozen=True, slots=True)
class Change:
    """One thing that happened to a message, as its tenant's endpoints will hear it."""

    tenant_id: str
    message_id: str | None
    type: str
    status: str | None = None
    recipient: str | None = None
    event: dict[str, Any] | None = None


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def payload(change: Change, at: datetime) -> dict[str, Any]:
    """The body every endpoint gets: `{"type", "timestamp", "data": {...}}` (interface.md)."""
    return {
        "type": change.type,
        "timestamp": rfc3339(at),
        "data": {
            "message_id": change.message_id,
            "tenant_id": change.tenant_id,
            "status": change.status,
            "recipient": change.recipient,
            "event": change.event or {},
        },
    }


_MARKS: dict[str, Callable[[int], str]] = {
    "qmark": lambda _: "?",
    "numeric_dollar": lambda i: f"${i}",
    "format": lambda _: "%s",
}
"""The driver's placeholder for the i-th parameter, by its paramstyle."""


def placeholders(conn: Connection, n: int) -> list[str]:
    """The driver's own placeholders for `n` parameters (for plain SQL on a hot path)."""
    mark = _MARKS[conn.dialect.paramstyle]
    return [mark(i) for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant_id: str
    events: list[str]


def endpoints_sql(conn: Connection, marks: Sequence[str], *, kind: int | None = None) -> str:
    """Plain SQL for the enabled endpoints of as many tenants as `marks` holds.

    With `kind`, each row starts with that number, so the query can be one
    part of a `UNION ALL` (the worker's finish reads this and more at once);
    `events` is then read as text, which the other parts' NULLs can match.
    """
    enabled = "true" if conn.dialect.name == "postgresql" else "1"
    lead, events = ("", "events") if kind is None else (f"{kind}, ", "CAST(events AS TEXT)")
    return (
        f"SELECT {lead}id, tenant_id, {events} FROM webhooks "
        f"WHERE tenant_id IN ({', '.join(marks)}) AND enabled = {enabled}"
    )


def endpoint_of(row: Sequence[Any]) -> Endpoint:
    """An endpoint from an `endpoints_sql` row (`events` is JSON text on SQLite)."""
    events = row[2]
    return Endpoint(
        row[0], row[1], json.loads(events) if isinstance(events, str | bytes) else events
    )


def endpoints_of(conn: Connection, tenants: Iterable[str]) -> list[Endpoint]:
    """The enabled endpoints of these tenants (usually none: one cheap indexed read).

    Every group commit of accepts and finishes asks this, so it is plain SQL
    through the driver: measured, a Core `select` here cost about ten times
    as much as the query itself and added a fifth to an accept's
    instructions (docs/performance.md).
    """
    wanted = sorted(set(tenants))
    rows = conn.exec_driver_sql(
        endpoints_sql(conn, placeholders(conn, len(wanted))), tuple(wanted)
    ).all()
    return [endpoint_of(r) for r in rows]


def enqueue_lazily(
    conn: Connection,
    tenants: Iterable[str],
    changes: Callable[[], Sequence[Change]],
    *,
    now: datetime,
) -> int:
    """`enqueue`, building the changes only when one of the tenants has an endpoint.

    The accept and finish paths call this: a tenant without endpoints pays
    one indexed read per group commit and nothing else.
    """
    endpoints = endpoints_of(conn, tenants)
    if not endpoints:
        return 0
    return write(conn, changes(), endpoints, now)


def enqueue(conn: Connection, changes: Sequence[Change], *, now: datetime) -> int:
    """Write a delivery for every enabled endpoint subscribed to each change; how many."""
    if not changes:
        return 0
    endpoints = endpoints_of(conn, (c.tenant_id for c in changes))
    if not endpoints:
        return 0
    return write(conn, changes, endpoints, now)


def write(
    conn: Connection, changes: Sequence[Change], endpoints: list[Endpoint], now: datetime
) -> int:
    rows: list[dict[str, Any]] = []
    for change in changes:
        event_id = new_event_id()
        body = payload(change, now)
        for endpoint in endpoints:
            wanted = endpoint.events
            if endpoint.tenant_id != change.tenant_id:
                continue
            if "*" not in wanted and change.type not in wanted:
                continue
            rows.append(
                {
                    "webhook_id": endpoint.id,
                    "tenant_id": change.tenant_id,
                    "message_id": change.message_id,
                    "event_type": change.type,
                    "event_id": event_id,
                    "payload": body,
                    "status": "pending",
                    "tries": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    if rows:
        conn.execute(insert(webhook_deliveries), rows)
    return len(rows)
