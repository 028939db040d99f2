"""A tenant's suppression list: addresses mail is not sent to.

Keyed by (tenant, address): checking one address, or every recipient of a
claimed batch, is a primary-key lookup whatever the list's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select

from mailgate.errors import Conflict, NotFound
from mailgate.store.audit import Change
from mailgate.store.feedback import insert_new
from mailgate.store.tables import suppressions

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")


@dataclass(frozen=True, slots=True)
class Suppression:
    tenant_id: str
    email: str
    reason: str
    message_id: str | None
    created_at: datetime


def _row(r: Any) -> Suppression:
    return Suppression(r.tenant_id, r.email, r.reason, r.message_id, r.created_at)


def list_suppressions(
    conn: Connection,
    *,
    tenant_id: str,
    limit: int,
    email: str | None = None,
    reason: str | None = None,
    after: tuple[datetime, str] | None = None,
) -> list[Suppression]:
    """Newest first; `after` is the cursor (the last row's time and address)."""
    query = select(suppressions).where(suppressions.c.tenant_id == tenant_id)
    if email is not None:
        query = query.where(suppressions.c.email == email.lower())
    if reason is not None:
        query = query.where(suppressions.c.reason == reason)
    if after is not None:
        at, last = after
        query = query.where(
            or_(
                suppressions.c.created_at < at,
                and_(suppressions.c.created_at == at, suppressions.c.email < last),
            )
        )
    query = query.order_by(suppressions.c.created_at.desc(), suppressions.c.email.desc())
    return [_row(r) for r in conn.execute(query.limit(limit))]


def is_suppressed(conn: Connection, tenant_id: str, email: str) -> bool:
    row = conn.execute(
        select(suppressions.c.email).where(
            suppressions.c.tenant_id == tenant_id, suppressions.c.email == email.lower()
        )
    ).first()
    return row is not None


def add(
    conn: Connection, tenant_id: str, email: str, reason: str, now: datetime
) -> tuple[Suppression, Change]:
    email = email.lower()
    row = {
        "tenant_id": tenant_id,
        "email": email,
        "reason": reason,
        "message_id": None,
        "detail": None,
        "created_at": now,
    }
    if not insert_new(conn, suppressions, row):
        raise Conflict(f"{email} is already suppressed", field="email")
    change = Change("suppression.add", email, tenant_id, {"reason": reason})
    return Suppression(tenant_id, email, reason, None, now), change


def remove(conn: Connection, tenant_id: str, email: str) -> tuple[None, Change]:
    email = email.lower()
    result = conn.execute(
        delete(suppressions).where(
            suppressions.c.tenant_id == tenant_id, suppressions.c.email == email
        )
    )
    if result.rowcount == 0:
        raise NotFound(f"{email} is not suppressed", field="email")
    return None, Change("suppression.remove", email, tenant_id)
