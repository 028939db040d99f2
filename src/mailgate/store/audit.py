"""The audit log: every change made with a `manage` or `admin` key, or with the CLI.

An audit record is written in the same transaction as the change it
describes, so there is never a change without its record or a record
without its change. Each is also a log line (logger `mailgate.audit`),
written once the transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from mailgate.store.tables import audit_log

log = logging.getLogger("mailgate.audit")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: an API key, or the CLI (`key_id` None)."""

    key_id: str | None
    tenant_id: str

    @property
    def name(self) -> str:
        return f"key {self.key_id}" if self.key_id is not None else "the CLI"


CLI = Actor(key_id=None, tenant_id="default")


@dataclass(frozen=True, slots=True)
class Change:
    """One audited change: what was done, to what, in which tenant."""

    action: str
    target: str
    tenant_id: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    key_id: str | None
    tenant_id: str
    action: str
    target: str
    detail: Mapping[str, Any]


def record(conn: Connection, actor: Actor, change: Change, *, at: datetime) -> None:
    conn.execute(
        insert(audit_log).values(
            at=at,
            key_id=actor.key_id,
            tenant_id=change.tenant_id,
            action=change.action,
            target=change.target,
            detail=dict(change.detail),
        )
    )


def logged(actor: Actor, change: Change) -> None:
    """The log line of a committed change."""
    log.info(
        "audit: %s %s (tenant %s) by %s%s",
        change.action,
        change.target,
        change.tenant_id,
        actor.name,
        "".join(f" {k}={v}" for k, v in change.detail.items()),
    )


def list_records(
    conn: Connection, *, tenant_id: str | None, limit: int, before_id: int | None = None
) -> list[AuditRecord]:
    """Newest first; `tenant_id` None lists every tenant's."""
    query = select(audit_log)
    if tenant_id is not None:
        query = query.where(audit_log.c.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    rows = conn.execute(query.order_by(audit_log.c.id.desc()).limit(limit))
    return [
        AuditRecord(
            id=r.id,
            at=r.at,
            key_id=r.key_id,
            tenant_id=r.tenant_id,
            action=r.action,
            target=r.target,
            detail=r.detail,
        )
        for r in rows
    ]
