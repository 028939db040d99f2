"""What the providers' event webhooks tell: recorded once, per recipient, with suppressions.

One small transaction per webhook request (`record`): the dedupe keys, the
message's events, its recipients' states, its status, the tenant's new
suppressions and the webhooks to its endpoints (the outbox) all commit
together or not at all, so a provider that retries after a failure finds
nothing half-recorded, and one that repeats an event finds it recorded.

Statuses follow interface.md: a recipient moves `sent` → `deferred` →
`delivered` / `bounced` → `complained` and never back (a late deferral
after a delivery is kept as an event only). The message is `complained`
once any recipient complained, `bounced` once every recipient bounced, and
`delivered` once every recipient is final and one was delivered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailgate.events.inbound import EventKind, InboundEvent
from mailgate.message import Status, rfc3339
from mailgate.store import outbox
from mailgate.store.tables import (
    events,
    message_recipients,
    messages,
    provider_event_keys,
    suppressions,
)

RANK = {"sent": 0, "deferred": 1, "delivered": 2, "bounced": 3, "complained": 4, "suppressed": 5}
"""A recipient's state only moves up this order."""
FINAL = frozenset({"delivered", "bounced", "complained", "suppressed"})
AFTER_SENT = (Status.SENT, Status.DELIVERED, Status.BOUNCED, Status.COMPLAINED)
"""The statuses a message's recipients decide (before `sent`, the queue decides)."""

_RECIPIENT_STATE = {
    EventKind.DELIVERED: "delivered",
    EventKind.DEFERRED: "deferred",
    EventKind.BOUNCED: "bounced",
    EventKind.COMPLAINED: "complained",
}
_SUPPRESS = {
    EventKind.COMPLAINED: "complaint",
    EventKind.UNSUBSCRIBED: "unsubscribe",
}


class Replayed(Exception):
    """The request's one-time signature token was seen before."""


@dataclass
class Recorded:
    """What one webhook request changed."""

    recorded: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    """How many of each type were recorded."""
    duplicates: int = 0
    unknown: int = 0
    suppressed: list[tuple[str, str]] = field(default_factory=list)
    """(tenant, email) pairs newly suppressed."""


def insert_new(conn: Connection, table: Table, row: dict[str, Any]) -> bool:
    """Insert unless the primary key exists; True when inserted (no error either way)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**row).on_conflict_do_nothing()
    return conn.execute(statement).rowcount == 1


def record(
    conn: Connection,
    *,
    provider: str,
    items: Sequence[InboundEvent],
    replay_key: str | None,
    now: datetime,
) -> Recorded:
    """Record one verified webhook request's events (see the module's docstring)."""
    if replay_key is not None and not insert_new(
        conn,
        provider_event_keys,
        {"provider": provider, "key": f"replay:{replay_key}"[:255], "at": now},
    ):
        raise Replayed(f"signature token already used: {replay_key[:12]}…")
    done = Recorded()
    changed: dict[str, Any] = {}
    reports: list[outbox.Change] = []
    for item in items:
        if not insert_new(
            conn, provider_event_keys, {"provider": provider, "key": item.key[:255], "at": now}
        ):
            done.duplicates += 1
            continue
        message = _find(conn, provider, item)
        if message is None:
            done.unknown += 1
            continue
        done.recorded += 1
        done.kinds[item.kind.value] += 1
        reports.append(_apply(conn, provider, message, item, now, done))
        changed[message.id] = message
    status = {m.id: settle(conn, m.id, now) for m in changed.values()}
    outbox.enqueue(conn, [replace(r, status=status[r.message_id or ""]) for r in reports], now=now)
    return done


def _find(conn: Connection, provider: str, item: InboundEvent) -> Any:
    columns = (messages.c.id, messages.c.tenant_id, messages.c.status)
    if item.message_id is not None:
        row = conn.execute(select(*columns).where(messages.c.id == item.message_id)).first()
        if row is not None:
            return row
    if item.provider_message_id is not None:
        return conn.execute(
            select(*columns).where(
                messages.c.provider_message_id == item.provider_message_id,
                messages.c.provider == provider,
            )
        ).first()
    return None


def _apply(
    conn: Connection, provider: str, message: Any, item: InboundEvent, now: datetime, done: Recorded
) -> outbox.Change:
    recipient = item.recipient.lower() if item.recipient else None
    detail: dict[str, Any] = {"provider": provider}
    if recipient is not None:
        detail["recipient"] = recipient
    detail.update(_what_happened(item))
    detail.update({k: v for k, v in item.detail.items() if k not in detail})
    detail["provider_at"] = rfc3339(item.at)
    conn.execute(
        events.insert().values(message_id=message.id, type=item.kind.value, at=now, detail=detail)
    )
    state = _RECIPIENT_STATE.get(item.kind)
    if recipient is not None and state is not None:
        _move_recipient(conn, message.id, recipient, state, item, now)
    reason = _SUPPRESS.get(item.kind)
    if item.kind is EventKind.BOUNCED and (item.bounce or "hard") == "hard":
        reason = "hard_bounce"
    if recipient is not None and reason is not None:
        if insert_new(
            conn,
            suppressions,
            {
                "tenant_id": message.tenant_id,
                "email": recipient,
                "reason": reason,
                "message_id": message.id,
                "detail": {"provider": provider, "reason": item.reason},
                "created_at": now,
            },
        ):
            done.suppressed.append((message.tenant_id, recipient))
    return outbox.Change(
        message.tenant_id,
        message.id,
        f"message.{_webhook_type(item.kind)}",
        recipient=recipient,
        event={"type": item.kind.value, **detail},
    )


def _what_happened(item: InboundEvent) -> dict[str, Any]:
    """A bounce's kind and the provider's reason, as events and recipients show them."""
    detail: dict[str, Any] = {}
    if item.kind is EventKind.BOUNCED:
        detail["kind"] = item.bounce or "hard"
    if item.reason:
        detail["reason"] = item.reason
    return detail


def _webhook_type(kind: EventKind) -> str:
    return "deferred" if kind is EventKind.DEFERRED else kind.value


def _move_recipient(
    conn: Connection, message_id: str, email: str, state: str, item: InboundEvent, now: datetime
) -> None:
    row = conn.execute(
        select(message_recipients.c.status).where(
            message_recipients.c.message_id == message_id, message_recipients.c.email == email
        )
    ).first()
    if row is None:
        return  # an address the message did not have (a forward, an alias): history only
    current = row.status or "sent"
    if RANK[state] <= RANK[current] and not (state == current == "deferred"):
        return
    detail = _what_happened(item)
    conn.execute(
        update(message_recipients)
        .where(message_recipients.c.message_id == message_id, message_recipients.c.email == email)
        .values(status=state, at=now, detail=detail or None)
    )


def derived_status(states: Sequence[str | None]) -> Status:
    """The message's status from its recipients' (None: nothing heard yet, i.e. `sent`)."""
    known = [s or "sent" for s in states]
    if any(s == "complained" for s in known):
        return Status.COMPLAINED
    counted = [s for s in known if s != "suppressed"]
    if counted and all(s == "bounced" for s in counted):
        return Status.BOUNCED
    if counted and all(s in FINAL for s in counted) and "delivered" in counted:
        return Status.DELIVERED
    return Status.SENT


def settle(conn: Connection, message_id: str, now: datetime) -> str | None:
    """Bring a sent message's status in line with its recipients' states.

    Before `sent` (the worker has not finished) nothing changes here: the
    worker's finish settles it when it marks the message sent. Returns the
    message's status.
    """
    row = conn.execute(select(messages.c.status).where(messages.c.id == message_id)).first()
    if row is None:
        return None
    if row.status not in AFTER_SENT:
        return str(row.status)
    states = (
        conn.execute(
            select(message_recipients.c.status).where(message_recipients.c.message_id == message_id)
        )
        .scalars()
        .all()
    )
    status = derived_status(list(states))
    if status.value != row.status:
        conn.execute(
            update(messages)
            .where(and_(messages.c.id == message_id, messages.c.status == row.status))
            .values(status=status, updated_at=now)
        )
    return status.value
