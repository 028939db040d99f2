"""A circuit breaker per provider: closed → open → half-open probe → closed.

It opens when, over the last `window_seconds`, at least `min_calls` calls
were made and at least `failure_ratio` of them failed, or at once when
`trip` is called (bad credentials). After `cooldown_seconds` one probe call
is let through (half-open): success closes it, failure opens it again.

Times are Unix seconds so that state can be shared through the store: the
worker persists each open/close with the time it happened, and adopts a
newer state another process wrote (`adopt`). Half-open is never stored;
every process derives it from "open, and the cool-down has passed".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window_seconds: float = 60.0
    min_calls: int = 10
    failure_ratio: float = 0.5
    cooldown_seconds: float = 30.0


def visible_state(
    state: str, changed_at: float | None, cooldown: float, now: float
) -> BreakerState:
    """What a stored state means now: an open breaker past its cool-down is half-open."""
    if state == BreakerState.OPEN and changed_at is not None and now >= changed_at + cooldown:
        return BreakerState.HALF_OPEN
    return BreakerState.OPEN if state == BreakerState.OPEN else BreakerState.CLOSED


class CircuitBreaker:
    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._state = BreakerState.CLOSED
        self.changed_at = 0.0
        self._probe_in_flight = False
        # One bucket per second: [second, calls, failures].
        self._buckets: deque[list[int]] = deque()

    def state(self, now: float) -> BreakerState:
        return visible_state(self._state, self.changed_at, self.config.cooldown_seconds, now)

    def allow(self, now: float) -> bool:
        """May a call go to this provider now? In half-open, only one probe at a time."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self, now: float) -> BreakerState | None:
        """Count a call the provider handled; returns the new state if it changed."""
        self._count(now, failed=False)
        if self._state is BreakerState.OPEN:  # this was the half-open probe
            self._probe_in_flight = False
            return self._move(BreakerState.CLOSED, now)
        return None

    def record_failure(self, now: float) -> BreakerState | None:
        """Count a call that failed for the provider's sake; returns the new state if it changed."""
        self._count(now, failed=True)
        if self._state is BreakerState.OPEN:
            if self._probe_in_flight:
                self._probe_in_flight = False
                return self._move(BreakerState.OPEN, now)  # probe failed: a fresh cool-down
            return None
        calls, failures = self.counts(now)
        if calls >= self.config.min_calls and failures >= self.config.failure_ratio * calls:
            return self._move(BreakerState.OPEN, now)
        return None

    def trip(self, now: float) -> BreakerState | None:
        """Open at once (the provider refused our credentials)."""
        self._count(now, failed=True)
        self._probe_in_flight = False
        if (
            self._state is BreakerState.OPEN
            and now < self.changed_at + self.config.cooldown_seconds
        ):
            return None
        return self._move(BreakerState.OPEN, now)

    def release_probe(self) -> None:
        """The probe ended without saying anything about the provider's health."""
        self._probe_in_flight = False

    def adopt(self, state: str, changed_at: float) -> bool:
        """Take a state another process stored, if it is newer than ours."""
        # A millisecond of slack: our own writes come back through a datetime round trip.
        newer = changed_at > self.changed_at + 0.001
        if not newer or state not in (BreakerState.OPEN, BreakerState.CLOSED):
            return False
        self._state = BreakerState(state)
        self.changed_at = changed_at
        self._probe_in_flight = False
        self._buckets.clear()
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) within the window."""
        self._prune(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _move(self, state: BreakerState, now: float) -> BreakerState:
        self._state = state
        self.changed_at = now
        self._buckets.clear()
        return state

    def _count(self, now: float, *, failed: bool) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(failed)
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()
