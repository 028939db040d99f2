"""Turning store records into the API's JSON (the shapes `schemas.MessageOut` documents).

Built by hand rather than through pydantic on the way out: the accept path
answers thousands of times a second and the shapes are fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailgate.message import rfc3339
from mailgate.store import MessageView, NewMessage


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
    return data


def new_message_json(item: NewMessage) -> dict[str, Any]:
    """A just-accepted message, without reading it back."""
    at = rfc3339(item.created_at)
    kind, detail = item.first_event()
    return {
        "id": item.id,
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
    }
