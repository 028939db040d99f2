"""All queue SQL: one function per operation, each a plain function of a
`Connection` that `Database.write` runs inside one transaction.

The same statements serve SQLite and PostgreSQL. PostgreSQL claims with
`FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on each other;
SQLAlchemy renders nothing for it on SQLite, where a writer already holds
the database's only write lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
    update,
)

from mailgate.message import Email, EventType, Outcome, Status
from mailgate.store import feedback, outbox
from mailgate.store.bulk import (
    BulkInsert,
    DriverStatement,
    InsertsAsOne,
    Values,
    json_text,
    json_value,
)
from mailgate.store.records import Claimed, Finish, NewMessage
from mailgate.store.tables import (
    WAITING,
    attempts,
    events,
    message_bodies,
    message_recipients,
    message_tags,
    messages,
    suppressions,
)

_WAITING = text(WAITING)


def split_email(email: Email) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope (kept on the queue row) and the body (kept apart) of an email."""
    data = email.to_json()
    body = {k: data.pop(k) for k in ("text", "html", "headers", "attachments")}
    return data, body


def join_email(envelope: dict[str, Any], body: dict[str, Any]) -> Email:
    return Email.from_json({**envelope, **body})


def find_idempotent(
    conn: Connection, tenant_id: str, keys: Iterable[str]
) -> dict[str, tuple[str, str, str]]:
    """Messages already accepted under these keys: key -> (id, status, request_hash)."""
    keys = list(keys)
    if not keys:
        return {}
    rows = conn.execute(
        select(
            messages.c.idempotency_key, messages.c.id, messages.c.status, messages.c.request_hash
        ).where(messages.c.tenant_id == tenant_id, messages.c.idempotency_key.in_(keys))
    )
    return {r.idempotency_key: (r.id, r.status, r.request_hash or "") for r in rows}


_NEW_MESSAGES = BulkInsert(
    messages,
    (
        "id", "tenant_id", "status", "envelope", "send_at", "next_attempt_at", "window_start",
        "rounds", "forced_provider", "idempotency_key", "request_hash", "created_at",
        "updated_at",
    ),
)  # fmt: skip
_NEW_BODIES = BulkInsert(message_bodies, ("message_id", "body"))
_NEW_RECIPIENTS = BulkInsert(message_recipients, ("message_id", "email"))
_NEW_TAGS = BulkInsert(message_tags, ("message_id", "tag"))
_NEW_EVENTS = BulkInsert(events, ("message_id", "type", "at", "detail"))
_NEW_ALL = InsertsAsOne(_NEW_MESSAGES, _NEW_BODIES, _NEW_RECIPIENTS, _NEW_TAGS, _NEW_EVENTS)
"""A group of new messages: one round trip on PostgreSQL (five before: 35-67 % more
batch accepts, docs/performance.md), an `executemany` per table on SQLite."""


@dataclass(frozen=True, slots=True)
class NewRows:
    """One new message's rows in the driver's form; made without the database."""

    message: tuple[Any, ...]
    body: tuple[Any, ...]
    recipients: list[tuple[Any, ...]]
    tags: list[tuple[Any, ...]]
    event: tuple[Any, ...]


def new_rows(items: Sequence[NewMessage], dialect: str) -> dict[str, NewRows]:
    """The rows of new messages, by message id (`enqueue` writes them)."""
    values = Values.of(dialect)
    stamp = values.stamp
    made: dict[str, NewRows] = {}
    # The messages of one batch share their time of acceptance: formatted once.
    last_at: datetime | None = None
    created: Any = None
    for item in items:
        envelope, body = split_email(item.email)
        if item.created_at is not last_at:
            last_at, created = item.created_at, stamp(item.created_at)
        start = stamp(item.send_at) if item.send_at is not None else created
        message_id = item.id
        email = item.email
        emails = {a.email.lower() for a in (*email.to, *email.cc, *email.bcc)}
        kind, detail = item.first_event()
        made[message_id] = NewRows(
            message=(
                message_id, item.tenant_id, item.status.value, json_text(envelope),
                values.optional_stamp(item.send_at), start, start, 0, item.forced_provider,
                item.idempotency_key, item.request_hash, created, created,
            ),
            body=(message_id, json_text(body)),
            recipients=[(message_id, e) for e in emails],
            tags=[(message_id, t) for t in set(email.tags)],
            event=(message_id, kind.value, created, json_text(detail)),
        )  # fmt: skip
    return made


def enqueue(
    conn: Connection, items: Sequence[NewMessage], made: dict[str, NewRows] | None = None
) -> None:
    """Insert new messages with their bodies, recipients, tags and first event, the
    whole group at once (`bulk.InsertsAsOne`). `made` holds their
    rows when the caller made them before the transaction (`new_rows`)."""
    if not items:
        return
    if made is None:
        made = new_rows(items, conn.dialect.name)
    rows = [made[item.id] for item in items]
    _NEW_ALL.run(
        conn,
        (
            [r.message for r in rows],
            [r.body for r in rows],
            [x for r in rows for x in r.recipients],
            [x for r in rows for x in r.tags],
            [r.event for r in rows],
        ),
    )


_CLAIM = (
    "UPDATE messages SET status = 'sending', lease_owner = {0}, lease_until = {1}, "
    "updated_at = {2} WHERE id IN (SELECT id FROM messages {index}"
    f"WHERE {WAITING} AND next_attempt_at <= {{3}} ORDER BY next_attempt_at LIMIT {{4}}{{lock}}) "
    "RETURNING id, tenant_id, envelope, window_start, rounds, forced_provider"
)
_CLAIM_SQL = {
    "sqlite": _CLAIM.format("?", "?", "?", "?", "?", index="INDEXED BY ix_messages_due ", lock=""),
    "postgresql": _CLAIM.format(
        "$1", "$2", "$3", "$4", "$5", index="", lock=" FOR UPDATE SKIP LOCKED"
    ),
}
"""The claim as the driver runs it. SQLite without statistics prefers the status index for
`status IN (...)`, then reads and sorts every waiting row; the due index hands over the
oldest first, so the claim names it."""

_BODIES = (
    "SELECT b.message_id, b.body, EXISTS (SELECT 1 FROM message_recipients r "
    "JOIN messages m ON m.id = r.message_id "
    "JOIN suppressions s ON s.tenant_id = m.tenant_id AND s.email = r.email "
    "WHERE r.message_id = b.message_id) FROM message_bodies b WHERE b.message_id IN ({})"
)
"""The claimed messages' bodies, and whether any of a message's recipients is on its
tenant's suppression list: the claim pays a second query only for the rare message that
has one."""


@dataclass(frozen=True, slots=True)
class ClaimedRows:
    """A claim as the database returned it; `decoded` makes the messages of it."""

    dialect: str
    rows: Sequence[Any]
    bodies: dict[str, Any]
    suppressed: dict[str, list[str]]

    def decoded(self) -> list[Claimed]:
        """The claimed messages, their JSON decoded: done after the commit, so the work
        does not hold SQLite's write lock, which other processes may be waiting for."""
        bodies, suppressed = self.bodies, self.suppressed
        read_stamp = Values.of(self.dialect).read_stamp
        return [
            Claimed(
                id=message_id,
                tenant_id=tenant_id,
                email=join_email(json_value(envelope), json_value(bodies[message_id])),
                window_start=read_stamp(window_start),
                rounds=rounds,
                forced_provider=forced_provider,
                suppressed=frozenset(suppressed.get(message_id, ())),
            )
            for message_id, tenant_id, envelope, window_start, rounds, forced_provider in self.rows
        ]


def claim(
    conn: Connection, *, owner: str, now: datetime, lease_until: datetime, limit: int
) -> ClaimedRows:
    """Lease up to `limit` due messages, oldest due first, and read their content.

    Plain SQL through the driver, its values decoded by the caller
    (`ClaimedRows.decoded`): SQLAlchemy's result processing cost as much as
    the statements (bench.profile).
    """
    dialect = conn.dialect.name
    stamp = Values.of(dialect).stamp
    params = (owner, stamp(lease_until), stamp(now), stamp(now), limit)
    rows = conn.exec_driver_sql(_CLAIM_SQL[dialect], params).all()
    if not rows:
        return ClaimedRows(dialect, [], {}, {})
    marks = outbox.placeholders(conn, len(rows))
    body_rows = conn.exec_driver_sql(
        _BODIES.format(", ".join(marks)), tuple(r[0] for r in rows)
    ).all()
    flagged = [r[0] for r in body_rows if r[2]]
    suppressed = _suppressed(conn, flagged) if flagged else {}
    return ClaimedRows(dialect, rows, {r[0]: r[1] for r in body_rows}, suppressed)


def _suppressed(conn: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    """These claimed messages' recipients on their tenant's suppression list.

    By primary keys on both sides: cheap whatever the size of the list.
    """
    found = conn.execute(
        select(message_recipients.c.message_id, message_recipients.c.email)
        .join(messages, messages.c.id == message_recipients.c.message_id)
        .join(
            suppressions,
            and_(
                suppressions.c.tenant_id == messages.c.tenant_id,
                suppressions.c.email == message_recipients.c.email,
            ),
        )
        .where(message_recipients.c.message_id.in_(ids))
    )
    by_message: dict[str, list[str]] = {}
    for row in found:
        by_message.setdefault(row.message_id, []).append(row.email)
    return by_message


def extend_leases(
    conn: Connection, *, owner: str, ids: Sequence[str], lease_until: datetime
) -> int:
    """Push the lease of messages this worker still holds; returns how many it still held.

    A message taken back from this worker (`reclaim_expired`: it stalled past its
    lease) that nobody has claimed since is leased to it again: its send is still
    on its way, and whoever claimed the message now would send it a second time.
    """
    if not ids:
        return 0
    result = conn.execute(
        update(messages)
        .where(
            messages.c.id.in_(ids),
            messages.c.status.in_((Status.SENDING, Status.QUEUED)),
            messages.c.lease_owner == owner,
        )
        .values(status=Status.SENDING, lease_until=lease_until)
    )
    return result.rowcount


def release(conn: Connection, *, owner: str, ids: Sequence[str], now: datetime) -> None:
    """Hand back messages claimed but never sent (a worker stopping cleanly)."""
    if not ids:
        return
    conn.execute(
        update(messages)
        .where(
            messages.c.id.in_(ids),
            messages.c.status == Status.SENDING,
            messages.c.lease_owner == owner,
        )
        .values(
            status=Status.QUEUED,
            lease_owner=None,
            lease_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    )


def reclaim_expired(
    conn: Connection, *, now: datetime, dead: Sequence[str] = (), limit: int = 1000
) -> list[str]:
    """Queue again messages whose worker lost its lease mid-send (it died or hung), and
    every message leased by a worker in `dead` (its heartbeat stopped), lease or not.

    The lost try may have reached a provider, so it is recorded as an
    `ambiguous` attempt and a `reclaimed` event naming the old owner: a
    resulting double send is visible in the message's history.

    The old owner stays named on the queued message until someone claims it:
    a worker that was only slow (starved of CPU, paused) and comes back before
    then still finishes its round (`finish`) or keeps its lease
    (`extend_leases`), and the message is not sent twice.
    """
    lost = messages.c.lease_until < now
    if dead:
        lost = or_(lost, messages.c.lease_owner.in_(list(dead)))
    rows = (
        conn.execute(
            select(messages.c.id, messages.c.lease_owner, messages.c.lease_until)
            .where(messages.c.status == Status.SENDING, lost)
            .order_by(messages.c.lease_until)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    conn.execute(
        update(messages)
        .where(messages.c.id.in_(ids), messages.c.status == Status.SENDING)
        .values(status=Status.QUEUED, lease_until=None, next_attempt_at=now, updated_at=now)
    )
    conn.execute(
        insert(attempts),
        [
            {
                "message_id": r.id,
                "provider": None,
                "started_at": min(r.lease_until, now),
                "duration_ms": 0,
                "outcome": Outcome.AMBIGUOUS,
                "status_code": None,
                "error": f"worker {r.lease_owner} lost its lease mid-send; "
                "a provider may have taken the message",
            }
            for r in rows
        ],
    )
    conn.execute(
        insert(events),
        [
            {
                "message_id": r.id,
                "type": EventType.RECLAIMED,
                "at": now,
                "detail": {"worker": r.lease_owner},
            }
            for r in rows
        ],
    )
    return ids


_FINISH = DriverStatement(
    "UPDATE messages SET status = ?, rounds = ?, provider = coalesce(?, provider), "
    "provider_message_id = ?, last_error = ?, next_attempt_at = ?, lease_owner = NULL, "
    "lease_until = NULL, updated_at = ? "
    "WHERE id = ? AND status IN ('sending', 'queued') AND lease_owner = ?"
)
"""A round's end changes the message only while the finishing worker holds its lease, or
its lease was taken back and nobody has claimed the message since (`reclaim_expired`)."""
_NEW_ATTEMPTS = BulkInsert(
    attempts,
    ("message_id", "provider", "started_at", "duration_ms", "outcome", "status_code", "error"),
)


@dataclass(frozen=True, slots=True)
class FinishRows:
    """A group of finished rounds' rows in the driver's form; made without the database."""

    now: datetime
    messages: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]


def finish_rows(items: Sequence[Finish], dialect: str, now: datetime) -> FinishRows:
    stamp = Values.of(dialect).stamp
    at_now = stamp(now)
    return FinishRows(
        now,
        [
            (
                f.status.value, f.rounds, f.provider, f.provider_message_id, f.last_error,
                stamp(f.next_attempt_at) if f.next_attempt_at is not None else at_now, at_now,
                f.message_id, f.lease_owner,
            )
            for f in items
        ],
        [
            (
                f.message_id, a.provider, stamp(a.started_at), a.duration_ms, a.outcome.value,
                a.status_code, a.error,
            )
            for f in items
            for a in f.attempts
        ],
        [
            (f.message_id, e.type.value, stamp(e.at), json_text(dict(e.detail)))
            for f in items
            for e in f.events
        ],
    )  # fmt: skip


def finish(conn: Connection, items: Sequence[Finish], rows: FinishRows) -> None:
    """Record how delivery rounds ended: status, attempts and events, in one go.

    The status changes only while the finishing worker still holds the lease
    (or lost it and nobody else has claimed the message since); the attempts and
    events are kept either way, because they happened.
    `rows` are the items' rows (`finish_rows`), made before the transaction.
    """
    if not items:
        return
    now = rows.now
    _FINISH.run(conn, rows.messages)
    _NEW_ATTEMPTS.run(conn, rows.attempts)
    _NEW_EVENTS.run(conn, rows.events)
    dropped = [(f.message_id, email) for f in items for email in f.suppressed]
    if dropped:
        conn.execute(
            update(message_recipients)
            .where(
                message_recipients.c.message_id == bindparam("b_id"),
                message_recipients.c.email == bindparam("b_email"),
            )
            .values(status="suppressed", at=now),
            [{"b_id": m, "b_email": e} for m, e in dropped],
        )
    reported = [f for f in items if f.tenant_id is not None and f.status in _REPORTED]
    tenants = {f.tenant_id for f in reported if f.tenant_id is not None}
    sent = [f.message_id for f in items if f.status is Status.SENT]
    endpoints, heard = _endpoints_and_heard(conn, tenants, sent)
    if endpoints:
        outbox.write(conn, _reports(reported), endpoints, now)
    # Provider events that came in before this commit (a fast provider)
    # changed recipients while the message was still `sending`.
    for message_id in heard:
        feedback.settle(conn, message_id, now)


_REPORTED = (Status.SENT, Status.FAILED)


def _endpoints_and_heard(
    conn: Connection, tenants: Collection[str], sent: Sequence[str]
) -> tuple[list[outbox.Endpoint], list[str]]:
    """The tenants' enabled webhook endpoints, and which of the `sent` messages a provider
    event already reached (nearly always none of either).

    One plain-SQL statement through the driver for both: it runs on every
    group of finishes, where a second round trip and a Core statement cost
    more than the reads themselves (docs/performance.md).
    """
    if not tenants and not sent:
        return [], []
    parts: list[str] = []
    params: list[str] = []
    marks = outbox.placeholders(conn, len(tenants) + len(sent))
    if tenants:
        parts.append(outbox.endpoints_sql(conn, marks[: len(tenants)], kind=0))
        params += sorted(tenants)
    if sent:
        parts.append(
            "SELECT DISTINCT 1, message_id, NULL, NULL FROM message_recipients "
            f"WHERE message_id IN ({', '.join(marks[len(tenants) :])}) AND status IS NOT NULL"
        )
        params += sent
    rows = conn.exec_driver_sql(" UNION ALL ".join(parts), tuple(params)).all()
    endpoints = [outbox.endpoint_of(r[1:]) for r in rows if r[0] == 0]
    return endpoints, [r[1] for r in rows if r[0] == 1]


def _reports(items: Sequence[Finish]) -> list[outbox.Change]:
    """What the tenants' webhooks hear of finished rounds: sent, failed, suppressed."""
    reports: list[outbox.Change] = []
    for f in items:
        assert f.tenant_id is not None
        for email in f.suppressed:
            reports.append(
                outbox.Change(f.tenant_id, f.message_id, "message.suppressed", f.status.value,
                              email, {"type": "suppressed"})
            )  # fmt: skip
        event: dict[str, Any] = {"type": f.status.value}
        if f.status is Status.SENT:
            event |= {"provider": f.provider, "provider_message_id": f.provider_message_id}
        else:
            event["error"] = f.last_error
        reports.append(
            outbox.Change(f.tenant_id, f.message_id, f"message.{f.status.value}", f.status.value,
                          None, event)
        )  # fmt: skip
    return reports


def _in_tenant(tenant_id: str | None, message_id: str) -> Any:
    """The one message, in the tenant (None: an admin, in any tenant)."""
    if tenant_id is None:
        return messages.c.id == message_id
    return and_(messages.c.id == message_id, messages.c.tenant_id == tenant_id)


def cancel(conn: Connection, *, tenant_id: str | None, message_id: str, now: datetime) -> bool:
    """Cancel a queued or scheduled message; False when it is in another status."""
    result = conn.execute(
        update(messages)
        .where(_in_tenant(tenant_id, message_id), _WAITING)
        .values(status=Status.CANCELLED, updated_at=now)
    )
    if result.rowcount != 1:
        return False
    conn.execute(
        insert(events).values(message_id=message_id, type=EventType.CANCELLED, at=now, detail={})
    )
    return True


def retry(conn: Connection, *, tenant_id: str | None, message_id: str, now: datetime) -> bool:
    """Put a failed message back in the queue with a fresh age window."""
    result = conn.execute(
        update(messages)
        .where(_in_tenant(tenant_id, message_id), messages.c.status == Status.FAILED)
        .values(_queued_again(now))
    )
    if result.rowcount != 1:
        return False
    conn.execute(
        insert(events).values(message_id=message_id, type=EventType.RETRIED, at=now, detail={})
    )
    return True


def retry_all(conn: Connection, ids: Sequence[str], *, now: datetime) -> int:
    """`retry` for many messages at once (those still failed); how many went back."""
    retried = 0
    for start in range(0, len(ids), _CHUNK):
        back = (
            conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids[start : start + _CHUNK]))
                .where(messages.c.status == Status.FAILED)
                .values(_queued_again(now))
                .returning(messages.c.id)
            )
            .scalars()
            .all()
        )
        if back:
            rows = [{"message_id": m, "type": EventType.RETRIED, "at": now, "detail": {}}
                    for m in back]  # fmt: skip
            conn.execute(insert(events), rows)
        retried += len(back)
    return retried


def _queued_again(now: datetime) -> dict[str, Any]:
    """A failed message back in the queue, due now, with a fresh age window."""
    return {
        "status": Status.QUEUED,
        "next_attempt_at": now,
        "window_start": now,
        "rounds": 0,
        "last_error": None,
        "updated_at": now,
    }


_CHUNK = 500
"""Ids per statement in bulk changes: well under every driver's parameter limit."""


def status_of(conn: Connection, *, tenant_id: str | None, message_id: str) -> str | None:
    return conn.execute(select(messages.c.status).where(_in_tenant(tenant_id, message_id))).scalar()


def tenant_of(conn: Connection, message_id: str) -> str | None:
    return conn.execute(select(messages.c.tenant_id).where(messages.c.id == message_id)).scalar()
