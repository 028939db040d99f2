"""The operator's changes, each one transaction: tenants, keys, provider switches, cancel, retry.

Each function runs on a connection inside `Store`'s write transaction and
returns its result with the `Change` that the audit log records (in the
same transaction, by `Store`), or raises a `RequestError` saying why the
change cannot be made; nothing is then written.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from mailgate.errors import Conflict, NotFound
from mailgate.message import rfc3339
from mailgate.store import keys, queue, tenants
from mailgate.store import messages as reads
from mailgate.store import providers as provider_rows
from mailgate.store.audit import Actor, Change
from mailgate.store.keys import ApiKey
from mailgate.store.notify import notify
from mailgate.store.tables import DEFAULT_TENANT
from mailgate.store.tenants import Tenant


def ensure_default_tenant(conn: Connection, now: datetime) -> None:
    if tenants.get_tenant(conn, DEFAULT_TENANT) is None:
        tenants.create_tenant(
            conn,
            Tenant(
                id=DEFAULT_TENANT, name=DEFAULT_TENANT, enabled=True, sender_domains=(),
                default_from=None, providers=None, rate_limit=None, daily_quota=None,
                created_at=now, updated_at=now,
            ),
        )  # fmt: skip


def name_conflict(name: str) -> Conflict:
    return Conflict(f"a tenant named {name!r} exists", field="name")


def create_tenant(conn: Connection, tenant: Tenant) -> tuple[None, Change]:
    if tenants.name_taken(conn, tenant.name):
        raise name_conflict(tenant.name)
    tenants.create_tenant(conn, tenant)
    return None, Change("tenant.create", tenant.id, tenant.id, {"name": tenant.name})


def update_tenant(
    conn: Connection, tenant_id: str, now: datetime, values: dict[str, Any]
) -> tuple[Tenant, Change]:
    before = tenants.get_tenant(conn, tenant_id)
    if before is None:
        raise NotFound(f"no tenant {tenant_id}", field="id")
    if values.get("enabled") is False and before.is_default:
        raise Conflict(
            "the tenant 'default' holds the operator's keys; it stays enabled", field="id"
        )
    if "name" in values and tenants.name_taken(conn, values["name"], other_than=tenant_id):
        raise name_conflict(values["name"])
    if values:
        tenants.update_tenant(conn, tenant_id, now=now, **values)
    action = "tenant.update"
    if values.get("enabled") is False and before.enabled:
        tenants.hold_messages(conn, tenant_id, now=now)
        action = "tenant.disable"
    elif values.get("enabled") is True and not before.enabled:
        tenants.release_messages(conn, tenant_id, now=now)
        notify(conn)
        action = "tenant.enable"
    after = tenants.get_tenant(conn, tenant_id)
    assert after is not None
    changed = {k: _plain(v) for k, v in values.items() if k != "enabled"}
    return after, Change(action, tenant_id, tenant_id, changed)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def create_key(conn: Connection, **values: Any) -> tuple[tuple[ApiKey, str], Change]:
    tenant_id = values["tenant_id"]
    if tenants.get_tenant(conn, tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id}", field="tenant_id")
    key, secret = keys.create_key(conn, **values)
    detail = {"name": key.name, "scopes": [s.value for s in key.scopes]}
    return (key, secret), Change("key.create", key.id, tenant_id, detail)


def revoke_key(
    conn: Connection, key_id: str, tenant_id: str | None, now: datetime
) -> tuple[ApiKey, Change]:
    key = keys.revoke_key(conn, key_id, tenant_id=tenant_id, now=now)
    if key is None:
        raise NotFound(f"no active key {key_id}", field="id")
    return key, Change("key.revoke", key.id, key.tenant_id)


def switch_provider(
    conn: Connection, name: str, kind: str, actor: Actor, now: datetime, values: dict[str, Any]
) -> tuple[None, Change]:
    provider_rows.update_state(conn, name, now=now, **values)
    by = "cli" if actor.key_id is None else "api"
    provider_rows.record_event(conn, name, kind, at=now, detail={"by": by, **values})
    action = {"enabled": "provider.enable", "disabled": "provider.disable"}.get(kind)
    return None, Change(action or "provider.drill", name, actor.tenant_id, values)


def cancel(
    conn: Connection, tenant_id: str | None, message_id: str, now: datetime
) -> tuple[None, Change]:
    if not queue.cancel(conn, tenant_id=tenant_id, message_id=message_id, now=now):
        status = _status(conn, tenant_id, message_id)
        raise Conflict(
            f"message is {status}; only queued or scheduled messages can be cancelled",
            field="status",
        )
    return None, _message_change(conn, "message.cancel", message_id)


def retry(
    conn: Connection, tenant_id: str | None, message_id: str, now: datetime
) -> tuple[None, Change]:
    if not queue.retry(conn, tenant_id=tenant_id, message_id=message_id, now=now):
        status = _status(conn, tenant_id, message_id)
        raise Conflict(f"message is {status}; only failed messages can be retried", field="status")
    notify(conn)
    return None, _message_change(conn, "message.retry", message_id)


def retry_matching(
    conn: Connection,
    tenant_id: str | None,
    where: reads.MessageFilter,
    now: datetime,
    *,
    dry_run: bool,
    audit_tenant: str,
) -> tuple[tuple[int, int], Change | None]:
    """Queue every failed message the filter matches again: (matched, retried).

    `where.status` must be failed (only failed mail can be retried). A dry
    run, like a call that finds nothing to retry, changes nothing and is not audited.
    """
    ids = reads.matching_ids(conn, tenant_id=tenant_id, where=where)
    if dry_run:
        return (len(ids), 0), None
    retried = queue.retry_all(conn, ids, now=now)
    if not retried:
        return (len(ids), 0), None
    notify(conn)
    detail = {k: v for k, v in _filter_detail(where).items() if v is not None}
    detail |= {"matched": len(ids), "retried": retried}
    return (len(ids), retried), Change("messages.retry", "bulk", audit_tenant, detail)


def _filter_detail(where: reads.MessageFilter) -> dict[str, Any]:
    """The filter as the audit log keeps it: times in RFC 3339."""
    detail = asdict(where)
    return detail | {"since": rfc3339(where.since), "until": rfc3339(where.until)}


def _message_change(conn: Connection, action: str, message_id: str) -> Change:
    owner = queue.tenant_of(conn, message_id)
    assert owner is not None
    return Change(action, message_id, owner)


def _status(conn: Connection, tenant_id: str | None, message_id: str) -> str:
    status = queue.status_of(conn, tenant_id=tenant_id, message_id=message_id)
    if status is None:
        raise NotFound(f"no message {message_id}", field="id")
    return status
