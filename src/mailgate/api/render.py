"""Turning store records into the API's JSON (the shapes `schemas.MessageOut` documents).

Built by hand rather than through pydantic on the way out: the accept path
answers thousands of times a second and the shapes are fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailgate.message import rfc3339
from mailgate.store import ApiKey, AuditRecord, MessageView, NewMessage, Tenant


def _envelope(envelope: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "from": envelope["from"],
        "to": envelope["to"],
        "cc": envelope.get("cc", []),
        "bcc": envelope.get("bcc", []),
        "reply_to": envelope.get("reply_to", []),
        "subject": envelope["subject"],
        "tags": envelope.get("tags", []),
        "metadata": envelope.get("metadata", {}),
    }


def message_json(view: MessageView, *, history: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": view.id,
        "tenant_id": view.tenant_id,
        "status": view.status,
        **_envelope(view.envelope),
        "send_at": rfc3339(view.send_at),
        "provider": view.provider or view.forced_provider,
        "provider_message_id": view.provider_message_id,
        "next_attempt_at": rfc3339(view.next_attempt_at),
        "last_error": view.last_error,
        "created_at": rfc3339(view.created_at),
        "updated_at": rfc3339(view.updated_at),
    }
    if history:
        data["attempts"] = [
            {
                "provider": a.provider,
                "started_at": rfc3339(a.started_at),
                "duration_ms": a.duration_ms,
                "outcome": a.outcome,
                "status_code": a.status_code,
                "error": a.error,
            }
            for a in view.attempts
        ]
        data["events"] = [
            {"type": e.type, "at": rfc3339(e.at), "detail": dict(e.detail)} for e in view.events
        ]
        data["recipients"] = [
            {
                "email": r.email,
                "status": r.status,
                "at": rfc3339(r.at),
                "detail": dict(r.detail) if r.detail is not None else None,
            }
            for r in view.recipients
        ]
    return data


def new_message_json(item: NewMessage) -> dict[str, Any]:
    """A just-accepted message, without reading it back."""
    at = rfc3339(item.created_at)
    kind, detail = item.first_event()
    return {
        "id": item.id,
        "tenant_id": item.tenant_id,
        "status": item.status.value,
        **_envelope(item.email.to_json()),
        "send_at": rfc3339(item.send_at),
        "provider": item.forced_provider,
        "provider_message_id": None,
        "next_attempt_at": rfc3339(item.send_at or item.created_at),
        "last_error": None,
        "created_at": at,
        "updated_at": at,
        "attempts": [],
        "events": [{"type": kind.value, "at": at, "detail": detail}],
        "recipients": [
            {"email": email, "status": item.status.value, "at": None, "detail": None}
            for email in dict.fromkeys(
                a.email.lower() for a in (*item.email.to, *item.email.cc, *item.email.bcc)
            )
        ],
    }


def tenant_json(tenant: Tenant, used_today: int | None = None) -> dict[str, Any]:
    """A tenant; `used_today` counts today's messages against its daily quota (when it has one)."""
    return {
        "id": tenant.id,
        "name": tenant.name,
        "enabled": tenant.enabled,
        "sender_domains": list(tenant.sender_domains),
        "default_from": tenant.default_from,
        "providers": list(tenant.providers) if tenant.providers is not None else None,
        "rate_limit": tenant.rate_limit,
        "daily_quota": tenant.daily_quota,
        "used_today": (used_today or 0) if tenant.daily_quota is not None else None,
        "created_at": rfc3339(tenant.created_at),
        "updated_at": rfc3339(tenant.updated_at),
    }


def key_json(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    """A key, never its secret, except right after it was made (`secret`)."""
    data: dict[str, Any] = {
        "id": key.id,
        "name": key.name,
        "tenant_id": key.tenant_id,
        "scopes": [s.value for s in key.scopes],
        "prefix": key.prefix,
        "created_at": rfc3339(key.created_at),
        "revoked_at": rfc3339(key.revoked_at),
    }
    if secret is not None:
        data["key"] = secret
    return data


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": rfc3339(record.at),
        "key_id": record.key_id,
        "tenant_id": record.tenant_id,
        "action": record.action,
        "target": record.target,
        "detail": dict(record.detail),
    }
