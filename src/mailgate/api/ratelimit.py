"""A tenant's `rate_limit`: API requests per second across every API process.

Time is cut into short windows, each allowing a whole number of requests:
at least a tenth of a second long, and long enough for one request
(`"100/s"`: windows of 0.1 s allowing 10; `"30/min"`: windows of 2 s
allowing 1). The count of the current window lives in the store (one row
per tenant), and each process takes its requests from it in small chunks,
so the limit holds across processes at one write per chunk, not per
request. A process keeps what is left of its chunk for the rest of the
window and forgets it when the window ends; once the store has nothing
left, the process answers `429 rate_limited` until the next window without
asking again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from mailgate.config import parse_rate
from mailgate.errors import RateLimited
from mailgate.store import Store, Tenant

SHORTEST_WINDOW = 0.1
CHUNKS_PER_WINDOW = 4
"""A process takes about a quarter of a window's requests at a time."""


@dataclass(frozen=True, slots=True)
class Window:
    seconds: float
    requests: int

    @property
    def chunk(self) -> int:
        return max(1, math.ceil(self.requests / CHUNKS_PER_WINDOW))


@lru_cache(maxsize=1024)
def window_of(rate_limit: str) -> Window:
    """The window a rate such as `"100/s"` is counted in."""
    per_second = parse_rate(rate_limit)
    requests = max(1, math.ceil(per_second * SHORTEST_WINDOW))
    return Window(seconds=requests / per_second, requests=requests)


@dataclass
class _Local:
    """What this process holds of one tenant's current window."""

    spec: str
    period: int
    left: int = 0
    spent: bool = False
    """The store had nothing left for this window."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TenantRateLimiter:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._local: dict[str, _Local] = {}

    async def check(self, tenant: Tenant) -> None:
        """Count one request of the tenant; `RateLimited` when its window is used up."""
        if tenant.rate_limit is None:
            return
        window = window_of(tenant.rate_limit)
        now = self._clock()
        period = int(now // window.seconds)
        local = self._current(tenant, period)
        if local.left == 0 and not local.spent:
            async with local.lock:
                if local.left == 0 and not local.spent and local is self._local[tenant.id]:
                    granted = await self._store.take_rate(
                        tenant.id, period=period, want=window.chunk, cap=window.requests
                    )
                    local.left += granted
                    local.spent = granted == 0
        if local.left > 0:
            local.left -= 1
            return
        wait = (period + 1) * window.seconds - now
        raise RateLimited(
            f"over the tenant's rate limit of {tenant.rate_limit}",
            retry_after=math.ceil(wait),
        )

    def _current(self, tenant: Tenant, period: int) -> _Local:
        local = self._local.get(tenant.id)
        assert tenant.rate_limit is not None
        if local is None or local.period != period or local.spec != tenant.rate_limit:
            local = _Local(spec=tenant.rate_limit, period=period)
            self._local[tenant.id] = local
        return local
