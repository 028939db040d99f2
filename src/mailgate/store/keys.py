"""API keys: stored as SHA-256 hashes, shown once at creation, each with its scopes.

Keys are 256 random bits, so a fast hash is enough: there is nothing to
brute-force that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert, select, update

from mailgate.message import new_id
from mailgate.store.tables import api_keys, tenants
from mailgate.store.tenants import Tenant, tenant_from_row

KEY_PREFIX = "mg_"


class Scope(StrEnum):
    """What a key may do (reference/interface.md, "Tenants and keys").

    `admin` includes every other scope, on every tenant.
    """

    SEND = "send"
    READ = "read"
    MANAGE = "manage"
    ADMIN = "admin"


EVERY_SCOPE = tuple(Scope)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def ordered_scopes(scopes: Iterable[str]) -> tuple[Scope, ...]:
    """Scopes without repeats, in the one order every listing shows."""
    wanted = {Scope(s) for s in scopes}
    return tuple(s for s in Scope if s in wanted)


def create_key(
    conn: Connection,
    *,
    tenant_id: str,
    name: str,
    scopes: Iterable[str],
    now: datetime,
    key: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its secret (the only time the secret exists)."""
    secret = key or generate_key()
    record = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        scopes=ordered_scopes(scopes),
        created_at=now,
        revoked_at=None,
    )
    conn.execute(
        insert(api_keys).values(
            id=record.id,
            tenant_id=tenant_id,
            name=name,
            prefix=record.prefix,
            key_hash=hash_key(secret),
            scopes=[s.value for s in record.scopes],
            created_at=now,
        )
    )
    return record, secret


def find_key(conn: Connection, secret: str) -> tuple[ApiKey, Tenant] | None:
    """The active key with this secret and its tenant, if any (one query)."""
    row = conn.execute(
        select(api_keys, *(c.label(f"t_{c.name}") for c in tenants.c))
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    tenant = tenant_from_row({c.name: row._mapping[f"t_{c.name}"] for c in tenants.c})
    return key_from_row(row._mapping), tenant


def get_key(conn: Connection, key_id: str, *, tenant_id: str | None) -> ApiKey | None:
    """One key; `tenant_id` None finds it in any tenant."""
    query = select(api_keys).where(api_keys.c.id == key_id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    row = conn.execute(query).first()
    return key_from_row(row._mapping) if row is not None else None


def list_keys(
    conn: Connection,
    *,
    tenant_id: str | None = None,
    limit: int | None = None,
    before_id: str | None = None,
) -> list[ApiKey]:
    """Keys newest first (ids sort by creation time); `tenant_id` None lists every tenant's."""
    query = select(api_keys)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(api_keys.c.id < before_id)
    query = query.order_by(api_keys.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [key_from_row(r._mapping) for r in conn.execute(query)]


def any_keys(conn: Connection) -> bool:
    return conn.execute(select(api_keys.c.id).limit(1)).first() is not None


def revoke_key(
    conn: Connection, key_id: str, *, tenant_id: str | None, now: datetime
) -> ApiKey | None:
    """Revoke an active key; None when there is no such active key (in that tenant)."""
    query = update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if conn.execute(query.values(revoked_at=now)).rowcount != 1:
        return None
    return get_key(conn, key_id, tenant_id=None)


def key_from_row(r: Any) -> ApiKey:
    return ApiKey(
        id=r["id"],
        tenant_id=r["tenant_id"],
        name=r["name"],
        prefix=r["prefix"],
        scopes=ordered_scopes(r["scopes"]),
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
    )
