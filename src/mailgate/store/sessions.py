"""The console's sessions: a key pasted once, then a cookie that names a row here.

The cookie carries a random token; the table keeps only its sha256, the
key it stands for, the session's CSRF token and when it ends. A session
ends when it expires, when its owner logs out (the row is deleted, so the
cookie is dead everywhere at once), and when its key is revoked or its
tenant disabled (checked on every request, by the same join as an API key).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from mailgate.store.keys import ApiKey, key_from_row
from mailgate.store.tables import api_keys, console_secrets, console_sessions, tenants
from mailgate.store.tenants import Tenant, tenant_from_row


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    conn: Connection, *, key_id: str, token: str, now: datetime, expires_at: datetime
) -> str:
    """Store a new session for `token` (expired ones are swept on the way); its CSRF token."""
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
    csrf = secrets.token_urlsafe(32)
    conn.execute(
        insert(console_sessions).values(
            id=token_hash(token), key_id=key_id, csrf=csrf, created_at=now, expires_at=expires_at
        )
    )
    return csrf


def find_session(
    conn: Connection, token: str, now: datetime
) -> tuple[ApiKey, Tenant, str, datetime] | None:
    """The live session's key, tenant, CSRF token and end; None if it has ended."""
    row = conn.execute(
        select(
            api_keys,
            *(c.label(f"t_{c.name}") for c in tenants.c),
            console_sessions.c.csrf.label("s_csrf"),
            console_sessions.c.expires_at.label("s_expires_at"),
        )
        .select_from(console_sessions)
        .join(api_keys, api_keys.c.id == console_sessions.c.key_id)
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(
            console_sessions.c.id == token_hash(token),
            console_sessions.c.expires_at > now,
            api_keys.c.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    m = row._mapping
    tenant = tenant_from_row({c.name: m[f"t_{c.name}"] for c in tenants.c})
    return key_from_row(m), tenant, m["s_csrf"], m["s_expires_at"]


def end_session(conn: Connection, token: str) -> bool:
    """Delete the session (logging out); whether there was one."""
    result = conn.execute(
        delete(console_sessions).where(console_sessions.c.id == token_hash(token))
    )
    return result.rowcount == 1


def shared_secret(conn: Connection, name: str, now: datetime) -> str:
    """A secret every process of this deployment shares, made on first use."""
    found = conn.execute(select(console_secrets.c.value).where(console_secrets.c.name == name))
    value = found.scalar()
    if value is not None:
        return str(value)
    value = secrets.token_urlsafe(48)
    conn.execute(insert(console_secrets).values(name=name, value=value, created_at=now))
    return value
