"""When to try again after every provider failed a round."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter: `initial * multiplier**(n-1)`, capped, ±`jitter`.

    The jitter spreads messages that failed together (a provider outage)
    so they do not all come back in the same instant.
    """

    initial: float
    maximum: float
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, rounds: int, *, rand: float | None = None) -> float:
        """Seconds to wait after the `rounds`-th failed round (1-based).

        `rand` in [0, 1) replaces the random draw (tests); 0.5 means no jitter.
        """
        if rounds < 1:
            raise ValueError("rounds starts at 1")
        exponent = min(rounds - 1, 64)  # beyond this the cap applies anyway
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        r = random.random() if rand is None else rand
        return min(self.maximum, base * (1 + self.jitter * (2 * r - 1)))
