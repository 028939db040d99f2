"""API keys: stored as SHA-256 hashes, shown once at creation.

Keys are 256 random bits, so a fast hash is enough: there is nothing to
brute-force that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from mailgate.message import new_id
from mailgate.store.tables import api_keys

KEY_PREFIX = "mg_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    conn: Connection, *, tenant_id: str, name: str, now: datetime, key: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its secret (the only time the secret exists)."""
    secret = key or generate_key()
    record = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
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
            created_at=now,
        )
    )
    return record, secret


def find_key(conn: Connection, secret: str) -> ApiKey | None:
    """The active key with this secret, if any."""
    row = (
        conn.execute(
            select(api_keys).where(
                api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    return _key(row) if row is not None else None


def list_keys(conn: Connection) -> list[ApiKey]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at))
    return [_key(r) for r in rows]


def revoke_key(conn: Connection, key_id: str, *, now: datetime) -> bool:
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount == 1


def _key(row: object) -> ApiKey:
    r = row._mapping  # type: ignore[attr-defined]
    return ApiKey(
        id=r["id"],
        tenant_id=r["tenant_id"],
        name=r["name"],
        prefix=r["prefix"],
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
    )
