"""Tenants' webhook endpoints and their deliveries (the outbox's consumer side).

A delivery is claimed with a lease, like a message: a worker that dies
mid-delivery loses its lease and the delivery is claimed again, so nothing
written to the outbox is lost (at least once; receivers dedupe on
`webhook-id`). Deliveries about one message reach one endpoint in order: a
delivery is not claimed while an earlier one of the same message to the
same endpoint is still pending or in flight.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import aliased

from mailgate.errors import NotFound
from mailgate.message import new_id
from mailgate.store import audit
from mailgate.store.audit import CLI, Change
from mailgate.store.outbox import Change as Report
from mailgate.store.outbox import new_event_id, payload
from mailgate.store.tables import webhook_attempts, webhook_deliveries, webhooks

PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
_DUE = "webhook_deliveries.status = 'pending'"
"""The due index's condition (tables.py), repeated verbatim in the claim."""
_LEASED = "webhook_deliveries.status = 'delivering'"


def new_secret() -> str:
    """`whsec_` + base64 of 24 random bytes (the Standard Webhooks form)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant_id: str
    url: str
    events: tuple[str, ...]
    description: str | None
    secret: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Try:
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    message_id: str | None
    event_type: str
    event_id: str
    status: str
    tries: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    attempts: tuple[Try, ...] = ()


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed delivery with what sending it needs."""

    id: int
    webhook_id: str
    tenant_id: str
    url: str
    secret: str
    event_id: str
    payload: dict[str, Any]
    tries: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try went; `ok` when the endpoint answered 2xx in time."""

    delivery_id: int
    webhook_id: str
    at: datetime
    ok: bool
    status_code: int | None
    duration_ms: int
    error: str | None


def _endpoint(r: Any) -> Endpoint:
    return Endpoint(
        id=r.id,
        tenant_id=r.tenant_id,
        url=r.url,
        events=tuple(r.events),
        description=r.description,
        secret=r.secret,
        enabled=r.enabled,
        disabled_reason=r.disabled_reason,
        failing_since=r.failing_since,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def _scoped(tenant_id: str | None, webhook_id: str) -> Any:
    if tenant_id is None:
        return webhooks.c.id == webhook_id
    return and_(webhooks.c.id == webhook_id, webhooks.c.tenant_id == tenant_id)


def get(conn: Connection, tenant_id: str | None, webhook_id: str) -> Endpoint:
    row = conn.execute(select(webhooks).where(_scoped(tenant_id, webhook_id))).first()
    if row is None:
        raise NotFound(f"no webhook {webhook_id}", field="id")
    return _endpoint(row)


def list_endpoints(
    conn: Connection, *, tenant_id: str | None, limit: int, before_id: str | None = None
) -> list[Endpoint]:
    query = select(webhooks)
    if tenant_id is not None:
        query = query.where(webhooks.c.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(webhooks.c.id < before_id)
    rows = conn.execute(query.order_by(webhooks.c.id.desc()).limit(limit))
    return [_endpoint(r) for r in rows]


def create(
    conn: Connection,
    tenant_id: str,
    url: str,
    events: Sequence[str],
    description: str | None,
    now: datetime,
) -> tuple[Endpoint, Change]:
    endpoint = Endpoint(
        id=new_id("wh"),
        tenant_id=tenant_id,
        url=url,
        events=tuple(events),
        description=description,
        secret=new_secret(),
        enabled=True,
        disabled_reason=None,
        failing_since=None,
        created_at=now,
        updated_at=now,
    )
    values = {k: getattr(endpoint, k) for k in webhooks.c.keys()}
    values["events"] = list(endpoint.events)
    conn.execute(insert(webhooks).values(**values))
    change = Change("webhook.create", endpoint.id, tenant_id, {"url": url, "events": list(events)})
    return endpoint, change


def change(
    conn: Connection, tenant_id: str | None, webhook_id: str, values: dict[str, Any], now: datetime
) -> tuple[Endpoint, Change]:
    before = get(conn, tenant_id, webhook_id)
    values = dict(values)
    if "events" in values:
        values["events"] = list(values["events"])
    if values.get("enabled") is True:
        values |= {"disabled_reason": None, "failing_since": None}
    conn.execute(
        update(webhooks).where(webhooks.c.id == webhook_id).values(**values, updated_at=now)
    )
    shown = {k: v for k, v in values.items() if k in ("url", "events", "description", "enabled")}
    return get(conn, None, webhook_id), Change(
        "webhook.update", webhook_id, before.tenant_id, shown
    )


def remove(conn: Connection, tenant_id: str | None, webhook_id: str) -> tuple[None, Change]:
    before = get(conn, tenant_id, webhook_id)
    ids = select(webhook_deliveries.c.id).where(webhook_deliveries.c.webhook_id == webhook_id)
    conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids)))
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id))
    conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))
    return None, Change("webhook.delete", webhook_id, before.tenant_id, {"url": before.url})


def send_test(
    conn: Connection, tenant_id: str | None, webhook_id: str, now: datetime
) -> tuple[int, Change]:
    """Queue a `webhook.test` delivery to this endpoint only; its delivery id."""
    endpoint = get(conn, tenant_id, webhook_id)
    report = Report(endpoint.tenant_id, None, "webhook.test", event={"type": "test"})
    result = conn.execute(
        insert(webhook_deliveries)
        .values(
            webhook_id=webhook_id,
            tenant_id=endpoint.tenant_id,
            message_id=None,
            event_type="webhook.test",
            event_id=new_event_id(),
            payload=payload(report, now),
            status=PENDING,
            tries=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        .returning(webhook_deliveries.c.id)
    )
    delivery_id = int(result.scalar_one())
    return delivery_id, Change("webhook.test", webhook_id, endpoint.tenant_id, {})


def list_deliveries(
    conn: Connection,
    *,
    tenant_id: str | None,
    webhook_id: str,
    limit: int,
    before_id: int | None = None,
    status: str | None = None,
) -> list[Delivery]:
    """An endpoint's deliveries, newest first, each with every try."""
    get(conn, tenant_id, webhook_id)
    d = webhook_deliveries
    query = select(d).where(d.c.webhook_id == webhook_id)
    if before_id is not None:
        query = query.where(d.c.id < before_id)
    if status is not None:
        query = query.where(d.c.status == status)
    rows = conn.execute(query.order_by(d.c.id.desc()).limit(limit)).all()
    tries: dict[int, list[Try]] = {}
    if rows:
        a = webhook_attempts
        for t in conn.execute(
            select(a).where(a.c.delivery_id.in_([r.id for r in rows])).order_by(a.c.id)
        ):
            tries.setdefault(t.delivery_id, []).append(
                Try(t.at, t.status_code, t.duration_ms, t.error)
            )
    return [
        Delivery(
            id=r.id,
            webhook_id=r.webhook_id,
            message_id=r.message_id,
            event_type=r.event_type,
            event_id=r.event_id,
            status=r.status,
            tries=r.tries,
            next_attempt_at=r.next_attempt_at if r.status == PENDING else None,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            created_at=r.created_at,
            updated_at=r.updated_at,
            attempts=tuple(tries.get(r.id, ())),
        )
        for r in rows
    ]


def retry(
    conn: Connection, tenant_id: str | None, webhook_id: str, delivery_id: int, now: datetime
) -> tuple[None, Change]:
    """Try a delivery again now (a failed one, or a pending one without waiting)."""
    endpoint = get(conn, tenant_id, webhook_id)
    result = conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.id == delivery_id,
            webhook_deliveries.c.webhook_id == webhook_id,
            webhook_deliveries.c.status.in_((FAILED, PENDING)),
        )
        .values(status=PENDING, next_attempt_at=now, updated_at=now)
    )
    if result.rowcount == 0:
        raise NotFound(
            f"no failed or pending delivery {delivery_id} of webhook {webhook_id}",
            field="delivery_id",
        )
    return None, Change("webhook.retry", f"{webhook_id}/{delivery_id}", endpoint.tenant_id, {})


# --- the sender's side ---------------------------------------------------------------


def any_work(conn: Connection) -> bool:
    """Whether any delivery is pending or in flight: a read, so an idle sender takes no lock."""
    found = (
        conn.exec_driver_sql(f"SELECT 1 FROM webhook_deliveries WHERE {_DUE} LIMIT 1").first()
        or conn.exec_driver_sql(f"SELECT 1 FROM webhook_deliveries WHERE {_LEASED} LIMIT 1").first()
    )
    return found is not None


def claim(
    conn: Connection, *, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[Due]:
    """Lease up to `limit` due deliveries of enabled endpoints, each the first of its message.

    Deliveries whose lease ran out (a worker died mid-delivery) are due again first.
    """
    d = webhook_deliveries
    conn.execute(
        update(d)
        .where(text(_LEASED), d.c.lease_until < now)
        .values(status=PENDING, lease_owner=None, lease_until=None, next_attempt_at=now)
    )
    earlier = aliased(d)
    blocked = exists().where(
        earlier.c.webhook_id == d.c.webhook_id,
        earlier.c.message_id == d.c.message_id,
        earlier.c.id < d.c.id,
        earlier.c.status.in_((PENDING, DELIVERING)),
    )
    due = (
        select(d.c.id)
        .join(webhooks, webhooks.c.id == d.c.webhook_id)
        .where(
            # Written out, not bound: SQLite uses the partial due index only
            # when the query repeats its condition with the same constant.
            text(_DUE),
            d.c.next_attempt_at <= now,
            webhooks.c.enabled.is_(True),
            ~blocked,
        )
        .order_by(d.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(of=d, skip_locked=True)
    ids = [r.id for r in conn.execute(due)]
    if not ids:
        return []
    conn.execute(
        update(d)
        .where(d.c.id.in_(ids))
        .values(status=DELIVERING, lease_owner=owner, lease_until=lease_until, updated_at=now)
    )
    rows = conn.execute(
        select(
            d.c.id,
            d.c.webhook_id,
            d.c.tenant_id,
            d.c.event_id,
            d.c.payload,
            d.c.tries,
            d.c.created_at,
            webhooks.c.url,
            webhooks.c.secret,
        )
        .join(webhooks, webhooks.c.id == d.c.webhook_id)
        .where(d.c.id.in_(ids))
        .order_by(d.c.id)
    )
    return [
        Due(
            r.id,
            r.webhook_id,
            r.tenant_id,
            r.url,
            r.secret,
            r.event_id,
            r.payload,
            r.tries,
            r.created_at,
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Policy:
    """When to try again, when to give up a delivery, when to disable an endpoint."""

    initial: float
    maximum: float
    max_age: float
    disable_after: float

    def delay(self, tries: int) -> float:
        return float(min(self.maximum, self.initial * 3 ** max(tries - 1, 0)))


def finish(
    conn: Connection, *, owner: str, outcomes: Sequence[Outcome], policy: Policy
) -> list[tuple[str, str, str]]:
    """Record tries; schedule, complete or give up each delivery; disable dead endpoints.

    Returns (tenant, webhook id, reason) for each endpoint disabled here.
    """
    if not outcomes:
        return []
    d = webhook_deliveries
    conn.execute(
        insert(webhook_attempts),
        [
            {
                "delivery_id": o.delivery_id,
                "at": o.at,
                "status_code": o.status_code,
                "duration_ms": o.duration_ms,
                "error": o.error,
            }
            for o in outcomes
        ],
    )
    rows = {
        r.id: r
        for r in conn.execute(
            select(d.c.id, d.c.tries, d.c.created_at).where(
                d.c.id.in_([o.delivery_id for o in outcomes]),
                d.c.lease_owner == owner,
                d.c.status == DELIVERING,
            )
        )
    }
    updates: list[dict[str, Any]] = []
    for o in outcomes:
        row = rows.get(o.delivery_id)
        if row is None:
            continue  # the lease ran out and another worker has it: its try is recorded above
        tries = row.tries + 1
        if o.ok:
            status, next_at = DELIVERED, o.at
        elif (o.at - row.created_at).total_seconds() >= policy.max_age:
            status, next_at = FAILED, o.at
        else:
            status, next_at = PENDING, o.at + timedelta(seconds=policy.delay(tries))
        updates.append(
            {
                "b_id": o.delivery_id,
                "b_status": status,
                "b_tries": tries,
                "b_next": next_at,
                "b_code": o.status_code,
                "b_error": o.error,
                "b_now": o.at,
            }
        )
    if updates:
        conn.execute(
            update(d)
            .where(d.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                tries=bindparam("b_tries"),
                next_attempt_at=bindparam("b_next", type_=d.c.next_attempt_at.type),
                last_status_code=bindparam("b_code"),
                last_error=bindparam("b_error"),
                lease_owner=None,
                lease_until=None,
                updated_at=bindparam("b_now", type_=d.c.updated_at.type),
            ),
            updates,
        )
    return _endpoint_health(conn, outcomes, policy)


def _endpoint_health(
    conn: Connection, outcomes: Sequence[Outcome], policy: Policy
) -> list[tuple[str, str, str]]:
    last: dict[str, Outcome] = {}
    first_failure: dict[str, datetime] = {}
    for o in outcomes:
        last[o.webhook_id] = o
        if not o.ok:
            first_failure.setdefault(o.webhook_id, o.at)
    disabled: list[tuple[str, str, str]] = []
    for webhook_id, o in last.items():
        if o.ok:
            conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id, webhooks.c.failing_since.is_not(None))
                .values(failing_since=None)
            )
            continue
        conn.execute(
            update(webhooks)
            .where(webhooks.c.id == webhook_id, webhooks.c.failing_since.is_(None))
            .values(failing_since=first_failure[webhook_id])
        )
        row = conn.execute(
            select(webhooks.c.tenant_id, webhooks.c.failing_since, webhooks.c.enabled).where(
                webhooks.c.id == webhook_id
            )
        ).first()
        if row is None or not row.enabled or row.failing_since is None:
            continue
        failing = (o.at - row.failing_since).total_seconds()
        if failing < policy.disable_after:
            continue
        reason = f"every try failed for {failing / 3600:.1f} h (last: {o.error or o.status_code})"
        conn.execute(
            update(webhooks)
            .where(webhooks.c.id == webhook_id)
            .values(enabled=False, disabled_reason=reason, updated_at=o.at)
        )
        audit.record(
            conn,
            CLI,
            Change("webhook.disable", webhook_id, row.tenant_id, {"reason": reason}),
            at=o.at,
        )
        disabled.append((row.tenant_id, webhook_id, reason))
    return disabled
