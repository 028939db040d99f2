"""Telling dead workers from live ones by their heartbeats (`mailgate.delivery.silence`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailgate.delivery.silence import Silence

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def beats(**seen: float) -> dict[str, datetime]:
    return {node: T0 + timedelta(seconds=at) for node, at in seen.items()}


def test_a_worker_whose_heartbeat_stops_is_dead_after_the_silence() -> None:
    silence = Silence(dead_after=4)
    for second in range(10):
        silence.beat(second)
        # `a` beats every second; `b` beat last at 2 (its value stops changing).
        dead = silence.observe(beats(a=second, b=min(second, 2), me=second), second, me="me")
        assert dead == (["b"] if second >= 6 else []), second


def test_nothing_is_dead_until_our_own_heartbeats_were_steady_that_long() -> None:
    silence = Silence(dead_after=4)
    # A worker that just started sees an old heartbeat: it is not judged at once...
    silence.beat(100)
    assert silence.observe(beats(old=-50), 100, me="me") == []
    silence.beat(101)
    assert silence.observe(beats(old=-50), 101, me="me") == []
    # ...but after four steady seconds of its own.
    for second in (102, 103, 104):
        silence.beat(second)
    assert silence.observe(beats(old=-50), 104, me="me") == ["old"]


def test_after_our_own_stall_the_others_get_the_same_time_to_beat_again() -> None:
    silence = Silence(dead_after=4)
    for second in range(5):
        silence.beat(second)
        assert silence.observe(beats(a=second), second, me="me") == []
    # The store was unreachable for 20 s: nobody's heartbeat went through.
    silence.beat(25)
    assert silence.observe(beats(a=4), 25, me="me") == []
    silence.beat(26)
    assert silence.observe(beats(a=26), 26, me="me") == []  # `a` beats again: alive
    for second in range(27, 40):
        silence.beat(second)
        assert silence.observe(beats(a=second), second, me="me") == []


def test_clocks_do_not_matter_only_whether_the_heartbeat_changes() -> None:
    silence = Silence(dead_after=4)
    for second in range(12):
        silence.beat(second)
        # `skewed` writes times an hour behind; `ahead` a day ahead: both alive.
        seen = beats(skewed=second - 3600, ahead=second + 86400)
        assert silence.observe(seen, second, me="me") == []


def test_a_worker_that_stopped_or_is_gone_is_forgotten() -> None:
    silence = Silence(dead_after=4)
    for second in range(6):
        silence.beat(second)
        silence.observe(beats(a=0), second, me="me")
    assert silence.observe(beats(a=0), 6, me="me") == ["a"]
    assert silence.observe({}, 7, me="me") == []  # marked stopped: no longer listed
    silence.beat(8)
    assert silence.observe(beats(a=0), 8, me="me") == []  # back (it beat again): a new watch
