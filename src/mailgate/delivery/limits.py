"""Per-provider sending limits that hold across every worker process.

- `RateLimiter`: `rate_limit = "100/s"`. Each worker takes an equal share of
  the rate (the number of live workers comes from the store's heartbeats,
  every second) and enforces it locally with a token bucket holding a tenth
  of a second's worth. No write per send; a worker joining or leaving is
  seen within about a second, and until then the sum errs on the low side
  only while a worker stops, on the high side only while one starts.
- `DailyQuota`: `daily_quota = 50000`. Workers reserve sends from a counter
  in the store in chunks (a hundredth of the quota, at most 100), so the
  quota holds exactly across processes at one write per chunk; a worker
  that stops gives back what it did not use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mailgate.store import Store

BURST_SECONDS = 0.1
QUOTA_RECHECK_SECONDS = 60.0


class RateLimiter:
    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_second
        self._clock = clock
        self.share = per_second
        self.capacity = max(1.0, per_second * BURST_SECONDS)
        self._tokens = self.capacity
        self._stamp = clock()

    def set_workers(self, workers: int) -> None:
        """Take a `1/workers` share of the provider's rate."""
        self._fill()
        self.share = self.rate / max(1, workers)
        self.capacity = max(1.0, self.share * BURST_SECONDS)
        self._tokens = min(self._tokens, self.capacity)

    def _fill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.share)
        self._stamp = now

    def wait(self) -> float:
        """Seconds until a send may go (0: now)."""
        self._fill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.share

    def take(self) -> bool:
        self._fill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def budget(self, seconds: float) -> float:
        """How many sends this worker may make within `seconds` from now."""
        self._fill()
        return self._tokens + self.share * seconds


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(epoch: float) -> float:
    now = datetime.fromtimestamp(epoch, UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


class DailyQuota:
    def __init__(
        self,
        provider: str,
        quota: int,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.quota = quota
        self.chunk = max(1, min(100, quota // 100))
        self._store = store
        self._clock = clock
        self._day = utc_day(clock())
        self._local = 0
        self._exhausted_at: float | None = None

    @property
    def exhausted(self) -> bool:
        return self._exhausted_at is not None and self._local == 0

    def wait(self) -> float:
        """Seconds until a send may go under the quota (0: maybe now)."""
        now = self._clock()
        self._roll(now)
        if not self.exhausted:
            return 0.0
        assert self._exhausted_at is not None
        recheck = self._exhausted_at + QUOTA_RECHECK_SECONDS - now
        return max(0.0, min(seconds_to_midnight(now), recheck))

    def budget(self) -> float:
        """Sends this worker may make without asking the store (inf: it may ask)."""
        return float(self._local) if self.exhausted or self._local else math.inf

    async def take(self) -> bool:
        """Use one send of today's quota, reserving a chunk from the store when needed."""
        now = self._clock()
        self._roll(now)
        if self._local == 0:
            if self.wait() > 0:
                return False
            granted = await self._store.reserve_quota(
                self.provider, day=self._day, want=self.chunk, quota=self.quota
            )
            if granted == 0:
                self._exhausted_at = now
                return False
            self._exhausted_at = None
            self._local = granted
        self._local -= 1
        return True

    async def release(self) -> None:
        """Give back what was reserved and not used (a worker stopping)."""
        if self._local:
            unused, self._local = self._local, 0
            await self._store.release_quota(self.provider, day=self._day, unused=unused)

    def _roll(self, now: float) -> None:
        day = utc_day(now)
        if day != self._day:  # a new day: yesterday's leftovers are gone with it
            self._day, self._local, self._exhausted_at = day, 0, None
