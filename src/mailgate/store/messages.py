"""Reading messages and their history (the status and list APIs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, text

from mailgate.message import Status
from mailgate.store.records import AttemptView, EventView, MessageView, RecipientView
from mailgate.store.tables import (
    HELD,
    WAITING,
    attempts,
    events,
    message_recipients,
    message_tags,
    messages,
)

_COLUMNS = (
    messages.c.id,
    messages.c.tenant_id,
    messages.c.status,
    messages.c.envelope,
    messages.c.send_at,
    messages.c.provider,
    messages.c.provider_message_id,
    messages.c.forced_provider,
    messages.c.last_error,
    messages.c.next_attempt_at,
    messages.c.created_at,
    messages.c.updated_at,
)


def _view(row: Any, **history: Any) -> MessageView:
    waiting = row.status in (Status.QUEUED, Status.SCHEDULED) and row.next_attempt_at != HELD
    return MessageView(
        id=row.id,
        tenant_id=row.tenant_id,
        status=row.status,
        envelope=row.envelope,
        send_at=row.send_at,
        provider=row.provider,
        provider_message_id=row.provider_message_id,
        forced_provider=row.forced_provider,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if waiting else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        **history,
    )


def get_message(conn: Connection, *, tenant_id: str | None, message_id: str) -> MessageView | None:
    """One message with every attempt and event, in order; `tenant_id` None: any tenant's."""
    query = select(*_COLUMNS).where(messages.c.id == message_id)
    if tenant_id is not None:
        query = query.where(messages.c.tenant_id == tenant_id)
    row = conn.execute(query).first()
    if row is None:
        return None
    attempt_rows = conn.execute(
        select(attempts).where(attempts.c.message_id == message_id).order_by(attempts.c.id)
    )
    event_rows = conn.execute(
        select(events).where(events.c.message_id == message_id).order_by(events.c.id)
    )
    return _view(
        row,
        attempts=tuple(
            AttemptView(
                provider=a.provider,
                started_at=a.started_at,
                duration_ms=a.duration_ms,
                outcome=a.outcome,
                status_code=a.status_code,
                error=a.error,
            )
            for a in attempt_rows
        ),
        events=tuple(EventView(type=e.type, at=e.at, detail=e.detail) for e in event_rows),
        recipients=_recipients(conn, row),
    )


_HEARD_FROM = frozenset({"sent", "delivered", "bounced", "complained"})


def _recipients(conn: Connection, row: Any) -> tuple[RecipientView, ...]:
    """Every to/cc/bcc address in the message's order, with its state.

    An address nothing was heard about has the message's status (`sent`
    once the message is sent, `queued` before).
    """
    states = {
        r.email: r
        for r in conn.execute(
            select(
                message_recipients.c.email,
                message_recipients.c.status,
                message_recipients.c.at,
                message_recipients.c.detail,
            ).where(message_recipients.c.message_id == row.id)
        )
    }
    fallback = "sent" if row.status in _HEARD_FROM else row.status
    seen: dict[str, RecipientView] = {}
    envelope = row.envelope
    for part in ("to", "cc", "bcc"):
        for address in envelope.get(part, []):
            email = str(address["email"]).lower()
            if email in seen:
                continue
            state = states.get(email)
            seen[email] = RecipientView(
                email=email,
                status=(state.status if state is not None else None) or fallback,
                at=state.at if state is not None else None,
                detail=state.detail if state is not None else None,
            )
    return tuple(seen.values())


def list_messages(
    conn: Connection,
    *,
    tenant_id: str | None,
    limit: int,
    status: str | None = None,
    tag: str | None = None,
    to: str | None = None,
    before_id: str | None = None,
) -> list[MessageView]:
    """Newest first (ids sort by creation time); `before_id` is the cursor.

    `tenant_id` None lists every tenant's (an admin's `?tenant=*`).
    """
    query = select(*_COLUMNS)
    if tenant_id is not None:
        query = query.where(messages.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(messages.c.status == status)
    if tag is not None:
        query = query.where(
            messages.c.id.in_(select(message_tags.c.message_id).where(message_tags.c.tag == tag))
        )
    if to is not None:
        query = query.where(
            messages.c.id.in_(
                select(message_recipients.c.message_id).where(
                    message_recipients.c.email == to.lower()
                )
            )
        )
    if before_id is not None:
        query = query.where(messages.c.id < before_id)
    rows = conn.execute(query.order_by(messages.c.id.desc()).limit(limit))
    return [_view(r) for r in rows]


def count_waiting(conn: Connection) -> dict[str, int]:
    """How many messages are queued, scheduled and sending (the queue depth)."""
    due = conn.execute(
        select(messages.c.status, func.count()).where(text(WAITING)).group_by(messages.c.status)
    )
    counts = {Status.QUEUED.value: 0, Status.SCHEDULED.value: 0, Status.SENDING.value: 0}
    counts.update({status: n for status, n in due})
    counts[Status.SENDING.value] = (
        conn.execute(
            select(func.count()).select_from(messages).where(messages.c.status == Status.SENDING)
        )
    ).scalar_one()
    return counts
