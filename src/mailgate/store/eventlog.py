"""The event log across messages: listing a tenant's events, and following them live.

Listing (`list_events`) is newest first by event id. A tenant's events are
those of its messages: the query walks `events` backwards on its primary key
and joins each row to `messages` by primary key to keep the tenant's (fast
for the tenants with recent events, a longer walk for one whose events are
few and old); with a `message_id` it starts from `ix_events_message_id`.

Following (`EventTail`, behind `GET /v1/events/stream`) polls for events
past the last id it has seen. The difficulty is PostgreSQL: ids come from a
sequence, taken when a row is inserted, and a transaction that took a
smaller id can commit after one that took a larger id. A plain `id > last`
poll would move past the smaller id while its transaction is still open and
never see it. SQLite has one writer at a time, so there ids become visible
in order and this cannot happen.

How the tail closes that gap:

- Each poll reads, across every tenant, the ids past the highest id read
  so far (`scanned`), and only the rows matching the stream's filter in full.
  An id missing between two ids it read is a *hole*: a transaction that has
  not committed yet, or one that rolled back (a sequence value is never
  given out twice).
- Holes are read again on every poll (primary-key ranges). One that shows
  up is sent; one that can no longer show up is dropped. On PostgreSQL a
  hole is dropped once every transaction that was running when it was seen
  has ended and it is still absent: each poll takes `pg_current_snapshot()`
  before reading, notes its `xmax` for a hole seen in an earlier poll, and
  drops the hole when a later snapshot's `xmin` (the oldest transaction still
  running) has passed that mark. (A transaction is given its transaction id
  when it first writes a row, at the latest just after taking the sequence
  value, so it has one by the next poll.) That takes a poll or two after a rollback. Whatever
  happens, a hole is dropped after `HOLE_TIMEOUT_SECONDS`, so a transaction
  left open elsewhere on the server delays the stream at most that long.
  SQLite has no holes to watch: an id below a committed one is never
  committed later (a missing id there was deleted, or set by hand).
- Events are sent in id order and only below the lowest open hole: an event
  waits until every smaller id is settled. So the last id a client received
  means "everything up to here", and resuming after it (`Last-Event-ID`)
  needs no memory of what was sent: no gap and no duplicate.

Limits:

- An event whose transaction commits more than `HOLE_TIMEOUT_SECONDS` after
  a larger id became visible is not streamed (it is in the list). mailgate's
  write transactions last milliseconds.
- While a hole is open, later events wait for it: usually milliseconds (the
  other transaction commits), a poll or two after a rollback, and up to
  `HOLE_TIMEOUT_SECONDS` while some other transaction on the PostgreSQL
  server stays open (the `xmin` does not move).
- Resuming after id N looks only above N: an event below N that settled
  after the previous stream gave up on it is not sent then.
- A stream started without a position ("from now") also watches the holes
  among the last `START_WINDOW` ids, so an event that was being committed
  while the client connected is not lost.
- A run of more than `MAX_HOLES` missing ids (a sequence moved by hand) is
  taken as a jump, not as transactions in flight.
- Every stream reads every tenant's new ids (its own rows in full): the cost
  of a poll grows with the whole store's event rate, not the tenant's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, or_, select, text, true

from mailgate.store.engine import Database
from mailgate.store.tables import events, messages

log = logging.getLogger(__name__)

HOLE_TIMEOUT_SECONDS = 30.0
"""The longest a stream waits for a missing id to commit before it moves on without it."""
START_WINDOW = 1000
"""How many ids below the newest a stream started "from now" checks for commits in flight."""
MAX_HOLES = 50_000
"""The most missing ids a stream watches at once (more in one run: a sequence jump)."""
MAX_RANGES = 100
"""The most runs of missing ids one poll reads again (the lowest ones: they hold the stream)."""
BATCH = 500
"""The most new ids one poll reads; a full batch is followed by another poll at once."""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: int
    message_id: str
    type: str
    at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a list or a stream shows."""

    tenant_id: str | None
    """The tenant's messages' events; None: every tenant's (an admin's `?tenant=*`)."""
    type: str | None = None
    message_id: str | None = None

    def conditions(
        self, tenant: ColumnElement[str] = messages.c.tenant_id
    ) -> list[ColumnElement[bool]]:
        """The filter in SQL over `events` joined to `messages` (`tenant`: its tenant column)."""
        found: list[ColumnElement[bool]] = []
        if self.tenant_id is not None:
            found.append(tenant == self.tenant_id)
        if self.type is not None:
            found.append(events.c.type == self.type)
        if self.message_id is not None:
            found.append(events.c.message_id == self.message_id)
        return found


_COLUMNS = (events.c.id, events.c.message_id, events.c.type, events.c.at, events.c.detail)


def _event(row: Any) -> LoggedEvent:
    return LoggedEvent(
        id=row.id, message_id=row.message_id, type=row.type, at=row.at, detail=dict(row.detail)
    )


def list_events(
    conn: Connection, *, filters: EventFilter, limit: int, before_id: int | None = None
) -> list[LoggedEvent]:
    """Newest first; `before_id` is the cursor (the last id of the previous page)."""
    query = select(*_COLUMNS)
    tenant: ColumnElement[str] = messages.c.tenant_id
    if filters.tenant_id is not None:
        query = query.join(messages, messages.c.id == events.c.message_id)
        if conn.dialect.name == "sqlite":
            # SQLite (without statistics) would start from the tenant's messages and sort
            # all their events for every page; `|| ''` keeps it off the tenant's index,
            # so it walks the events backwards and stops at the page.
            tenant = messages.c.tenant_id.concat("")
    query = query.where(*filters.conditions(tenant))
    if before_id is not None:
        query = query.where(events.c.id < before_id)
    rows = conn.execute(query.order_by(events.c.id.desc()).limit(limit))
    return [_event(r) for r in rows]


def newest_id(conn: Connection) -> int:
    """The largest event id committed (0 when there is none)."""
    return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


def ids_between(conn: Connection, low: int, high: int) -> list[int]:
    """The event ids in (low, high], in order (any tenant's)."""
    rows = conn.execute(
        select(events.c.id).where(events.c.id > low, events.c.id <= high).order_by(events.c.id)
    )
    return [int(i) for i in rows.scalars()]


@dataclass(frozen=True, slots=True)
class Scan:
    """One poll's reading of the log."""

    new: list[tuple[int, LoggedEvent | None]]
    """Every id past `after`, in order, up to the batch; the event when it matches the filter."""
    filled: list[tuple[int, LoggedEvent | None]]
    """The holes asked about that are there now."""
    oldest_running: int | None
    """PostgreSQL: the oldest transaction still running before the reads (`xmin`)."""
    next_transaction: int | None
    """PostgreSQL: the first transaction id not yet given out then (`xmax`)."""


def _matching_rows(filters: EventFilter) -> Any:
    """Every event's id, and its columns only where it matches the filter."""
    conditions = filters.conditions()
    mine = and_(*conditions) if conditions else true()
    query = select(
        events.c.id,
        mine.label("mine"),
        events.c.message_id,
        events.c.type,
        events.c.at,
        case((mine, events.c.detail), else_=None).label("detail"),
    )
    if filters.tenant_id is not None:
        query = query.join(messages, messages.c.id == events.c.message_id)
    return query


_SNAPSHOT_BOUNDS = text(
    "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
    "FROM pg_current_snapshot() AS s"
)


def _found(row: Any) -> tuple[int, LoggedEvent | None]:
    return int(row.id), (_event(row) if row.mine else None)


def scan(
    conn: Connection,
    *,
    filters: EventFilter,
    after: int,
    holes: Sequence[tuple[int, int]],
    limit: int,
) -> Scan:
    """The ids past `after` and those in the `holes` ranges (inclusive) now committed.

    On PostgreSQL the snapshot's bounds are read first, in a statement of
    their own, so whatever had committed when they were taken is visible to
    the reads that follow (each statement of a read-committed transaction
    sees every commit before it started).
    """
    oldest_running = next_transaction = None
    if conn.dialect.name == "postgresql":
        bounds = conn.execute(_SNAPSHOT_BOUNDS).one()
        oldest_running, next_transaction = int(bounds[0]), int(bounds[1])
    filled: list[tuple[int, LoggedEvent | None]] = []
    if holes:
        ranges = or_(*(events.c.id.between(low, high) for low, high in holes))
        rows = conn.execute(_matching_rows(filters).where(ranges).order_by(events.c.id))
        filled = [_found(r) for r in rows]
    rows = conn.execute(
        _matching_rows(filters).where(events.c.id > after).order_by(events.c.id).limit(limit)
    )
    return Scan(
        new=[_found(r) for r in rows],
        filled=filled,
        oldest_running=oldest_running,
        next_transaction=next_transaction,
    )


@dataclass(slots=True)
class _Hole:
    seen_at: float
    """When it was first missed (monotonic seconds)."""
    seen_in: int
    """The poll that first missed it."""
    mark: int | None = None
    """PostgreSQL: `xmax` of a snapshot taken after it was first missed."""


def _ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as runs of consecutive ids, (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


@dataclass
class EventTail:
    """One stream's reading of the log: `poll()` answers the events settled since the last.

    Create it with `start()` (a position, or "from now"), then poll. See the
    module's docstring for how it finds every event exactly once.
    """

    db: Database
    filters: EventFilter
    position: int = 0
    """Every id up to here is settled: sent, not the stream's, or given up."""
    scanned: int = 0
    """The highest id read."""
    holes: dict[int, _Hole] = field(default_factory=dict)
    ready: dict[int, LoggedEvent] = field(default_factory=dict)
    """The stream's events read but waiting for a smaller id to settle."""
    full: bool = False
    """The last poll read a whole batch: there is more to read at once."""
    polls: int = 0
    batch: int = BATCH

    @classmethod
    async def start(cls, db: Database, filters: EventFilter, *, after: int | None) -> EventTail:
        """A tail after the event id `after`; None: from the newest event committed now."""
        if after is not None:
            return cls(db, filters, position=after, scanned=after)
        newest = await db.read(newest_id)
        tail = cls(db, filters, position=newest, scanned=newest)
        if not db.is_sqlite:
            low = max(0, newest - START_WINDOW)
            present = set(await db.read(ids_between, low, newest))
            now = time.monotonic()
            missing = [i for i in range(low + 1, newest + 1) if i not in present]
            tail.holes = {i: _Hole(seen_at=now, seen_in=0) for i in missing}
            if missing:
                tail.position = missing[0] - 1
        return tail

    @property
    def waiting(self) -> bool:
        """Some smaller id is still expected: worth polling again soon."""
        return bool(self.holes)

    async def poll(self) -> list[LoggedEvent]:
        """Read the log once; the events that became settled, in id order."""
        self.polls += 1
        asked = _ranges(sorted(self.holes))[:MAX_RANGES]
        found = await self.db.read(
            scan, filters=self.filters, after=self.scanned, holes=asked, limit=self.batch
        )
        now = time.monotonic()
        for i, event in found.filled:
            if self.holes.pop(i, None) is not None and event is not None:
                self.ready[i] = event
        self._read_new(found.new, now)
        self._give_up(found, asked, now)
        return self._settle()

    def _read_new(self, new: list[tuple[int, LoggedEvent | None]], now: float) -> None:
        previous = self.scanned
        for i, event in new:
            gap = i - previous - 1
            if gap > 0 and not self.db.is_sqlite:
                if gap <= MAX_HOLES - len(self.holes):
                    for missing in range(previous + 1, i):
                        self.holes[missing] = _Hole(seen_at=now, seen_in=self.polls)
                else:
                    log.info("event ids %d-%d not watched: too many", previous + 1, i - 1)
            if event is not None:
                self.ready[i] = event
            previous = i
        self.scanned = previous
        self.full = len(new) >= self.batch

    def _give_up(self, found: Scan, asked: list[tuple[int, int]], now: float) -> None:
        """Drop the holes that can no longer fill (or have waited too long)."""
        checked = [i for low, high in asked for i in range(low, high + 1) if i in self.holes]
        late: list[int] = []
        for i in checked:
            hole = self.holes[i]
            if now - hole.seen_at >= HOLE_TIMEOUT_SECONDS:
                late.append(i)
                gone = True
            else:
                if hole.mark is None and hole.seen_in < self.polls:
                    hole.mark = found.next_transaction
                gone = (
                    hole.mark is not None
                    and found.oldest_running is not None
                    and found.oldest_running >= hole.mark
                )
            if gone:
                del self.holes[i]
        if late:
            log.warning(
                "%d event ids (%d-%d) still missing after %.0f s: the stream goes on without them",
                len(late),
                late[0],
                late[-1],
                HOLE_TIMEOUT_SECONDS,
            )

    def _settle(self) -> list[LoggedEvent]:
        lowest_hole = min(self.holes) if self.holes else None
        if lowest_hole is None:
            self.position = self.scanned
        else:
            self.position = max(self.position, lowest_hole - 1)
        return [self.ready.pop(i) for i in sorted(self.ready) if i <= self.position]
