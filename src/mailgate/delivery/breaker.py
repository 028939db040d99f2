"""A circuit breaker per provider: closed → open → half-open probe → closed.

It opens when, over the last `window_seconds`, at least `min_calls` calls
were made and at least `failure_ratio` of them failed; when the last
`min_calls` calls in a row failed within the window (so a long healthy
spell does not hide a provider that has just gone down); or at once when
`trip` is called (bad credentials). After `cooldown_seconds` it is
half-open: up to `half_open_calls` probe calls are let through; when that
many have succeeded it closes, and the first that fails opens it again for
a fresh cool-down.

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
    half_open_calls: int = 1


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
        self._probes_in_flight = 0
        self._probes_passed = 0
        self._streak = 0
        """Failures in a row, in the closed state, the first at `_streak_started`."""
        self._streak_started = 0.0
        # One bucket per second: [second, calls, failures].
        self._buckets: deque[list[int]] = deque()

    def state(self, now: float) -> BreakerState:
        return visible_state(self._state, self.changed_at, self.config.cooldown_seconds, now)

    def allow(self, now: float) -> bool:
        """May a call go to this provider now? In half-open, only the probe calls still due."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        due = self.config.half_open_calls - self._probes_passed - self._probes_in_flight
        if state is BreakerState.OPEN or due <= 0:
            return False
        self._probes_in_flight += 1
        return True

    def record_success(self, now: float) -> BreakerState | None:
        """Count a call the provider handled; returns the new state if it changed."""
        self._count(now, failed=False)
        self._streak = 0
        if self._state is BreakerState.OPEN and self._probes_in_flight:  # a half-open probe
            self._probes_in_flight -= 1
            self._probes_passed += 1
            if self._probes_passed >= self.config.half_open_calls:
                return self._move(BreakerState.CLOSED, now)
        return None

    def record_failure(self, now: float) -> BreakerState | None:
        """Count a call that failed for the provider's sake; returns the new state if it changed."""
        self._count(now, failed=True)
        if self._state is BreakerState.OPEN:
            if self._probes_in_flight:
                return self._move(BreakerState.OPEN, now)  # probe failed: a fresh cool-down
            return None
        if self._streak == 0 or now - self._streak_started > self.config.window_seconds:
            self._streak, self._streak_started = 0, now
        self._streak += 1
        calls, failures = self.counts(now)
        if self._streak >= self.config.min_calls or (
            calls >= self.config.min_calls and failures >= self.config.failure_ratio * calls
        ):
            return self._move(BreakerState.OPEN, now)
        return None

    def trip(self, now: float) -> BreakerState | None:
        """Open at once (the provider refused our credentials)."""
        self._count(now, failed=True)
        if (
            self._state is BreakerState.OPEN
            and now < self.changed_at + self.config.cooldown_seconds
        ):
            return None
        return self._move(BreakerState.OPEN, now)

    def release_probe(self) -> None:
        """A probe ended without saying anything about the provider's health."""
        self._probes_in_flight = max(self._probes_in_flight - 1, 0)

    def adopt(self, state: str, changed_at: float) -> bool:
        """Take a state another process stored, if it is newer than ours."""
        # A millisecond of slack: our own writes come back through a datetime round trip.
        newer = changed_at > self.changed_at + 0.001
        if not newer or state not in (BreakerState.OPEN, BreakerState.CLOSED):
            return False
        self._state = BreakerState(state)
        self.changed_at = changed_at
        self._probes_in_flight = self._probes_passed = self._streak = 0
        self._buckets.clear()
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) within the window."""
        self._prune(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _move(self, state: BreakerState, now: float) -> BreakerState:
        self._state = state
        self.changed_at = now
        self._probes_in_flight = self._probes_passed = self._streak = 0
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
