from __future__ import annotations

import pytest

from mailgate.delivery import BackoffPolicy

POLICY = BackoffPolicy(initial=30, maximum=3600)


@pytest.mark.parametrize(
    ("rounds", "rand", "expected"),
    [
        (1, 0.5, 30),
        (2, 0.5, 60),
        (3, 0.5, 120),
        (7, 0.5, 1920),
        (8, 0.5, 3600),  # 3840 capped
        (50, 0.5, 3600),
        (1000, 0.5, 3600),
        (1, 0.0, 24),  # -20 %
        (1, 0.999999, pytest.approx(36, abs=1e-3)),  # +20 %
        (8, 0.999999, 3600),  # jitter never passes the cap
    ],
)
def test_delay_table(rounds: int, rand: float, expected: float) -> None:
    assert POLICY.delay(rounds, rand=rand) == expected


def test_jitter_spreads_delays_within_bounds() -> None:
    delays = {POLICY.delay(3) for _ in range(200)}
    assert len(delays) > 100
    assert all(96 <= d <= 144 for d in delays)


def test_rounds_start_at_one() -> None:
    with pytest.raises(ValueError):
        POLICY.delay(0)
