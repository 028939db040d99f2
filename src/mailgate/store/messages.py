"""Reading messages and their history (the status and list APIs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select, text

from mailgate.message import Status, first_id_at
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


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which messages a list or a bulk action takes (every field optional)."""

    status: str | None = None
    tag: str | None = None
    to: str | None = None
    provider: str | None = None
    """The provider that took the message (or that its last round tried)."""
    since: datetime | None = None
    """Created at or after."""
    until: datetime | None = None
    """Created before."""

    def apply(self, query: Select[Any], tenant_id: str | None) -> Select[Any]:
        """`query` over `messages` narrowed to the tenant (None: every tenant) and this filter.

        The time range is an id range: ids sort by creation time.
        """
        if tenant_id is not None:
            query = query.where(messages.c.tenant_id == tenant_id)
        if self.status is not None:
            query = query.where(messages.c.status == self.status)
        if self.provider is not None:
            query = query.where(messages.c.provider == self.provider)
        if self.tag is not None:
            tagged = select(message_tags.c.message_id).where(message_tags.c.tag == self.tag)
            query = query.where(messages.c.id.in_(tagged))
        if self.to is not None:
            to = self.to.lower()
            addressed = select(message_recipients.c.message_id).where(
                message_recipients.c.email == to
            )
            query = query.where(messages.c.id.in_(addressed))
        if self.since is not None:
            query = query.where(messages.c.id >= first_id_at("msg", self.since))
        if self.until is not None:
            query = query.where(messages.c.id < first_id_at("msg", self.until))
        return query


def list_messages(
    conn: Connection,
    *,
    tenant_id: str | None,
    limit: int,
    status: str | None = None,
    tag: str | None = None,
    to: str | None = None,
    before_id: str | None = None,
    where: MessageFilter | None = None,
) -> list[MessageView]:
    """Newest first (ids sort by creation time); `before_id` is the cursor.

    `tenant_id` None lists every tenant's (an admin's `?tenant=*`). `where`
    takes every filter; `status`, `tag` and `to` are its short forms.
    """
    where = where or MessageFilter(status=status, tag=tag, to=to)
    query = where.apply(select(*_COLUMNS), tenant_id)
    if before_id is not None:
        query = query.where(messages.c.id < before_id)
    rows = conn.execute(query.order_by(messages.c.id.desc()).limit(limit))
    return [_view(r) for r in rows]


def matching_ids(conn: Connection, *, tenant_id: str | None, where: MessageFilter) -> list[str]:
    """Every matching message's id, oldest first (for bulk actions)."""
    query = where.apply(select(messages.c.id), tenant_id).order_by(messages.c.id)
    return list(conn.execute(query).scalars())


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


CHARTED = ("sent", "failed", "bounced")
"""The event types the console's dashboard counts per minute."""


@dataclass(frozen=True, slots=True)
class Overview:
    """What the console's dashboard shows of a tenant's mail (None: every tenant's)."""

    by_status: dict[str, int]
    start: datetime
    """The first minute of `per_minute`."""
    per_minute: dict[str, list[int]]
    """For each charted event type, how many in each of the last 60 minutes, oldest first."""
    oldest_waiting: datetime | None
    """When the oldest message still waiting (queued or scheduled) was accepted."""


def overview(conn: Connection, *, tenant_id: str | None, now: datetime) -> Overview:
    counted = select(messages.c.status, func.count()).group_by(messages.c.status)
    if tenant_id is not None:
        counted = counted.where(messages.c.tenant_id == tenant_id)
    by_status = {str(status): int(n) for status, n in conn.execute(counted)}
    oldest = select(messages.c.created_at).where(text(WAITING)).order_by(messages.c.id).limit(1)
    if tenant_id is not None:
        oldest = oldest.where(messages.c.tenant_id == tenant_id)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    return Overview(
        by_status=by_status,
        start=start,
        per_minute=_per_minute(conn, tenant_id, start),
        oldest_waiting=conn.execute(oldest).scalar(),
    )


def _per_minute(conn: Connection, tenant_id: str | None, start: datetime) -> dict[str, list[int]]:
    """Charted events per minute since `start`: a walk of the last hour's events only.

    `events` has no index on `at` (it would cost every accept a write), but
    its ids grow with time, so the hour's first id is found by a binary
    search on the primary key.
    """
    series = {kind: [0] * 60 for kind in CHARTED}
    first = _first_event_at(conn, start)
    if first is None:
        return series
    sqlite = conn.dialect.name == "sqlite"
    minute = func.substr(events.c.at, 1, 16) if sqlite else func.date_trunc("minute", events.c.at)
    query = (
        select(events.c.type, minute, func.count())
        .where(events.c.id >= first, events.c.type.in_(CHARTED), events.c.at >= start)
        .group_by(events.c.type, minute)
    )
    if tenant_id is not None:
        query = query.join(messages, messages.c.id == events.c.message_id).where(
            messages.c.tenant_id == tenant_id
        )
    for kind, at, n in conn.execute(query):
        if isinstance(at, str):
            at = datetime.strptime(at, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        index = int((at - start).total_seconds() // 60)
        if 0 <= index < 60:
            series[kind][index] += int(n)
    return series


def _first_event_at(conn: Connection, start: datetime) -> int | None:
    """The smallest event id written at or after `start` (None: none yet)."""
    low, high = conn.execute(select(func.min(events.c.id), func.max(events.c.id))).one()
    if high is None:
        return None
    at_or_after = select(events.c.at).where(events.c.id >= bindparam("b_id"))
    at_or_after = at_or_after.order_by(events.c.id).limit(1)
    last = conn.execute(select(events.c.at).where(events.c.id == high)).scalar()
    if last is None or last < start:
        return None
    while low < high:
        middle = (low + high) // 2
        at = conn.execute(at_or_after, {"b_id": middle}).scalar()
        if at is not None and at >= start:
            high = middle
        else:
            low = middle + 1
    return int(low)
