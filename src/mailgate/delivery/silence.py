"""Telling a dead worker from a live one by its heartbeats, without trusting its clock.

Every worker writes a heartbeat to the store each second (`nodes.seen_at`,
by its own clock). A worker killed mid-send leaves messages leased to it;
waiting for those leases to run out (`delivery.lease_seconds`, a minute by
default) delays them that long after a crash. Instead each worker watches
the others' heartbeats: one whose heartbeat has not changed for
`dead_after` seconds, *as measured by the watcher's own monotonic clock*,
has its leases taken back at once. Clocks of different hosts never meet:
only whether the value changed matters.

A live worker must never lose a lease this way, so the watcher judges only
while its own heartbeats have gone through steadily for `dead_after`
seconds: after a store outage or a stall of its own, every other worker
looked silent too, and it waits until they had the same time to beat again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

DEAD_AFTER_SECONDS = 4.0
"""Four missed heartbeats (one a second)."""


class Silence:
    """Which other workers have stopped beating, as one worker sees it."""

    def __init__(self, *, dead_after: float = DEAD_AFTER_SECONDS, steady_gap: float = 2.5) -> None:
        self.dead_after = dead_after
        self.steady_gap = steady_gap
        """A longer gap between two of our own heartbeats restarts our steady time."""
        self._last_beat: float | None = None
        self._steady_since: float | None = None
        self._seen: dict[str, tuple[datetime, float]] = {}
        """Another worker's last heartbeat, and when (our monotonic time) we first saw it."""

    def beat(self, at: float) -> None:
        """Our own heartbeat was stored at `at` (monotonic seconds)."""
        if self._last_beat is None or at - self._last_beat > self.steady_gap:
            self._steady_since = at
        self._last_beat = at

    def observe(self, beats: Mapping[str, datetime], at: float, *, me: str) -> list[str]:
        """The workers in `beats` (id → last heartbeat) taken for dead at `at`."""
        for node, seen in beats.items():
            if node == me:
                continue
            known = self._seen.get(node)
            if known is None or known[0] != seen:
                self._seen[node] = (seen, at)
        for node in [n for n in self._seen if n not in beats]:
            del self._seen[node]
        if self._steady_since is None or at - self._steady_since < self.dead_after:
            return []
        return sorted(n for n, (_, since) in self._seen.items() if at - since >= self.dead_after)
