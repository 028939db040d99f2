from __future__ import annotations

from mailgate.delivery import BreakerConfig, BreakerState, CircuitBreaker
from mailgate.delivery.breaker import visible_state

CONFIG = BreakerConfig(window_seconds=60, min_calls=4, failure_ratio=0.5, cooldown_seconds=30)


def test_stays_closed_below_the_minimum_number_of_calls() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(3):
        assert breaker.record_failure(100.0 + t) is None
    assert breaker.state(103) is BreakerState.CLOSED and breaker.allow(103)


def test_opens_at_the_failure_ratio() -> None:
    breaker = CircuitBreaker(CONFIG)
    breaker.record_success(100)
    breaker.record_success(101)
    assert breaker.record_failure(102) is None
    assert breaker.record_failure(103) is BreakerState.OPEN  # 2 of 4 failed
    assert breaker.state(104) is BreakerState.OPEN and not breaker.allow(104)


def test_old_calls_leave_the_window() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(3):
        breaker.record_failure(100.0 + t)
    assert breaker.record_failure(200) is None  # the first three are 100 s old
    assert breaker.counts(200) == (1, 1)


def test_half_open_lets_one_probe_through_and_success_closes() -> None:
    breaker = CircuitBreaker(CONFIG)
    breaker.trip(100)
    assert not breaker.allow(129)
    assert breaker.state(130) is BreakerState.HALF_OPEN
    assert breaker.allow(130)
    assert not breaker.allow(130.5)  # one probe at a time
    assert breaker.record_success(131) is BreakerState.CLOSED
    assert breaker.allow(131)


def test_a_failed_probe_opens_again_for_a_fresh_cooldown() -> None:
    breaker = CircuitBreaker(CONFIG)
    breaker.trip(100)
    assert breaker.allow(130)
    assert breaker.record_failure(131) is BreakerState.OPEN
    assert not breaker.allow(160)
    assert breaker.allow(161)


def test_a_released_probe_frees_the_slot() -> None:
    breaker = CircuitBreaker(CONFIG)
    breaker.trip(100)
    assert breaker.allow(130)
    breaker.release_probe()
    assert breaker.allow(130)


def test_trip_opens_at_once_and_does_not_extend_an_open_breaker() -> None:
    breaker = CircuitBreaker(CONFIG)
    assert breaker.trip(100) is BreakerState.OPEN
    assert breaker.trip(110) is None
    assert breaker.changed_at == 100


def test_adopts_only_newer_states() -> None:
    breaker = CircuitBreaker(CONFIG)
    assert breaker.adopt("open", 100)
    assert not breaker.allow(110)
    assert not breaker.adopt("closed", 90)
    assert not breaker.adopt("open", 100)  # our own write coming back
    assert breaker.adopt("closed", 120)
    assert breaker.allow(121)


def test_visible_state() -> None:
    assert visible_state("closed", None, 30, 0) is BreakerState.CLOSED
    assert visible_state("open", 100, 30, 110) is BreakerState.OPEN
    assert visible_state("open", 100, 30, 131) is BreakerState.HALF_OPEN


def test_several_half_open_calls_must_all_pass_to_close() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(window_seconds=60, min_calls=4, cooldown_seconds=30, half_open_calls=3)
    )
    breaker.trip(100)
    assert [breaker.allow(130) for _ in range(4)] == [True, True, True, False]
    assert breaker.record_success(131) is None
    assert breaker.record_success(131) is None
    assert not breaker.allow(131)  # the third probe is still out
    assert breaker.record_success(132) is BreakerState.CLOSED


def test_one_failed_half_open_call_opens_again() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(window_seconds=60, min_calls=4, cooldown_seconds=30, half_open_calls=3)
    )
    breaker.trip(100)
    assert breaker.allow(130) and breaker.allow(130)
    assert breaker.record_success(131) is None
    assert breaker.record_failure(131) is BreakerState.OPEN
    assert not breaker.allow(160) and breaker.allow(161)


def test_a_call_started_before_the_breaker_opened_does_not_close_it() -> None:
    breaker = CircuitBreaker(CONFIG)
    breaker.trip(100)
    assert breaker.record_success(105) is None  # not a probe: a slow call from before
    assert breaker.state(105) is BreakerState.OPEN


def test_a_run_of_failures_opens_it_despite_a_healthy_window() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(20):
        breaker.record_success(100 + t * 0.1)  # a healthy spell: the ratio stays low
    for t in range(3):
        assert breaker.record_failure(103 + t * 0.1) is None
    assert breaker.record_failure(104) is BreakerState.OPEN  # 4 (min_calls) in a row


def test_a_success_breaks_the_run() -> None:
    breaker = CircuitBreaker(CONFIG)
    for t in range(20):
        breaker.record_success(100 + t * 0.1)
    for t in range(3):
        breaker.record_failure(103 + t * 0.1)
    breaker.record_success(103.5)
    assert breaker.record_failure(104) is None
