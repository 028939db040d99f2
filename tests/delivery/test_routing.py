"""Routing: weights, rate limits, daily quotas, 429 pauses, the breaker's schedule, probes.

Timing checks here are about behaviour (a pause is respected, a limit holds),
read from when the fake provider saw each request; none is about speed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from mailgate.store import Store
from tests.delivery.conftest import Run
from tests.helpers import Fakes, eventually, new_message


async def drained(store: Store) -> bool:
    depth = await store.queue_depth()
    return depth["queued"] == depth["sending"] == depth["scheduled"] == 0


async def test_weights_split_traffic_within_five_percent(run: Run, fakes: Fakes) -> None:
    providers = fakes.providers(priority=1)  # one priority group: primary weight 3, backup 1
    providers[0]["weight"] = 3
    # A generous attempt timeout: on a loaded machine a 2 s one fails sends
    # over to the other provider, which is failover, not the split under test.
    delivery = {"concurrency": 100, "attempt_timeout_seconds": 30}
    h = await run(providers=providers, delivery=delivery)
    if not h.store.db.is_sqlite:
        pytest.skip("the split does not depend on the store; once is enough")
    n = 10_000
    for _ in range(n // 1000):
        await h.store.accept_many([new_message() for _ in range(1000)])
    await eventually(lambda: drained(h.store), timeout=120, interval=0.2)
    primary, backup = len(h.fakes.sendgrid.received), len(h.fakes.mailgun.received)
    assert primary + backup == n
    # The split is of first choices: a message that failed over counts for
    # the provider it was offered to first (with two, one failover per round).
    moved = {
        name: h.metric("mailgate_failovers_total", provider=name) for name in ("primary", "backup")
    }
    first = primary + moved["primary"] - moved["backup"]
    detail = (primary, backup, moved)
    assert abs(first / n - 0.75) <= 0.75 * 0.05, detail
    assert abs((n - first) / n - 0.25) <= 0.25 * 0.05, detail


async def test_a_rate_limit_paces_sends(run: Run, fakes: Fakes) -> None:
    h = await run(providers=fakes.providers(rate_limit="20/s")[:1])  # the primary alone
    ids = [item.id for item in [new_message() for _ in range(100)]]
    await h.store.accept_many([new_message(id=i) for i in ids])
    await eventually(lambda: drained(h.store), timeout=30, interval=0.1)
    times = sorted(h.fakes.sendgrid.request_times)
    assert len(times) == 100 and len(h.fakes.mailgun.received) == 0
    steady = (len(times) - 10) / (times[-1] - times[9])
    assert 19 <= steady <= 21, steady
    # Held back in the queue, not bounced: no message was deferred for it.
    views = [await h.message(i) for i in ids[:5]]
    assert all(v.status == "sent" for v in views)


async def test_a_rate_limited_primary_sends_the_overflow_to_the_backup(
    run: Run, fakes: Fakes
) -> None:
    providers = fakes.providers()
    providers[0]["rate_limit"] = "10/s"
    h = await run(providers=providers)
    await h.store.accept_many([new_message() for _ in range(60)])
    await eventually(lambda: drained(h.store), timeout=30, interval=0.1)
    assert len(h.fakes.sendgrid.received) + len(h.fakes.mailgun.received) == 60
    assert len(h.fakes.mailgun.received) > 20  # the primary could not take them all in time


async def test_a_429_with_retry_after_pauses_the_provider(run: Run) -> None:
    h = await run(delivery={"concurrency": 10})
    h.fakes.sendgrid.behaviour.update({"status": 429, "fail_count": 1, "retry_after": "2"})
    stop = asyncio.Event()

    async def keep_sending() -> None:
        while not stop.is_set():
            await h.send()
            await asyncio.sleep(0.02)

    async def paused() -> bool:
        return "paused" in [e.type for e in await h.store.provider_events("primary")]

    # One message meets the 429; the stream starts once the pause is in force,
    # so no send was already on its way to the primary when the answer came.
    await h.send()
    await eventually(paused)
    sender = asyncio.create_task(keep_sending())
    await eventually(lambda: len(h.fakes.sendgrid.received) >= 3, timeout=20)
    stop.set()
    await sender
    times = h.fakes.sendgrid.request_times
    throttled_at = times[0]  # the first request got the 429
    after = [t - throttled_at for t in times[1:]]
    assert after and min(after) >= 1.95, after[:3]  # nothing for the 2 s it asked for
    assert len(h.fakes.mailgun.received) > 10  # the backup took the traffic meanwhile
    events = [e.type for e in await h.store.provider_events("primary")]
    assert "paused" in events


async def test_the_breaker_opens_probes_and_closes_on_schedule(run: Run) -> None:
    overrides = {
        "breaker_min_calls": 3,
        "breaker_failure_ratio": 0.5,
        "breaker_cooldown_seconds": 1,
    }
    h = await run(provider_overrides=overrides, delivery={"concurrency": 1})
    h.fakes.sendgrid.behaviour.status = 503
    stop = asyncio.Event()

    async def keep_sending() -> None:
        while not stop.is_set():
            await h.send()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(keep_sending())
    await eventually(lambda: len(h.fakes.sendgrid.request_times) >= 3, timeout=20)
    opened = h.fakes.sendgrid.request_times[2]
    h.fakes.sendgrid.behaviour.status = None  # healthy again: the probe will succeed
    await eventually(lambda: len(h.fakes.sendgrid.received) >= 5, timeout=20)
    stop.set()
    await sender
    times = h.fakes.sendgrid.request_times
    assert times[3] - opened >= 0.95  # no request during the cool-down: the probe came after it
    assert times[3] - opened < 3.0  # and it did come
    events = [e.type for e in reversed(await h.store.provider_events("primary"))]
    assert events[:2] == ["breaker_opened", "breaker_closed"]
    assert (await h.store.provider_states())["primary"].breaker_state == "closed"


async def test_a_daily_quota_moves_traffic_on_and_says_so(run: Run, fakes: Fakes) -> None:
    providers = fakes.providers()
    providers[0]["daily_quota"] = 5
    h = await run(providers=providers, delivery={"concurrency": 1})
    ids = [await h.send() for _ in range(8)]
    for message_id in ids:
        await h.wait(message_id)
    sent_by = Counter([(await h.message(i)).provider for i in ids])
    assert sent_by == {"primary": 5, "backup": 3}
    assert [e.type for e in await h.store.provider_events("primary")] == ["quota_exhausted"]
    labels = {"provider": "primary", "kind": "quota_exhausted"}
    assert h.metric("mailgate_provider_events_total", **labels) == 1
    assert (await h.store.quota_used(day=time.strftime("%Y-%m-%d", time.gmtime())))["primary"] == 5


async def test_nobody_free_means_waiting_with_the_reason_and_time(run: Run, fakes: Fakes) -> None:
    providers = fakes.providers()
    for p in providers:
        p["daily_quota"] = 1
    h = await run(providers=providers, delivery={"concurrency": 1})
    first, second = await h.send(), await h.send()
    await h.wait(first)
    third = await h.send()

    async def deferred() -> bool:
        return any(e.type == "deferred" for e in (await h.message(third)).events)

    await h.wait(second)
    await eventually(deferred)
    view = await h.message(third)
    reason = next(e for e in view.events if e.type == "deferred").detail["reason"]
    assert "daily quota of 1 used up" in reason
    assert view.status == "queued" and view.next_attempt_at is not None
    assert view.attempts == ()


async def test_a_health_probe_finds_bad_credentials_before_mail_does(
    run: Run, fakes: Fakes
) -> None:
    providers = fakes.providers(health_probe_seconds=0.2)
    providers[0]["api_key"] = "SG.revoked"
    h = await run(providers=providers)

    async def breaker_open() -> bool:
        state = (await h.store.provider_states()).get("primary")
        return state is not None and state.breaker_state == "open"

    await eventually(breaker_open, timeout=10)
    assert h.fakes.sendgrid.requests == 0  # no mail was needed: the probe found it
    state = (await h.store.provider_states())["primary"]
    assert state.probe_error is not None and state.probed_at is not None
    events = [e.type for e in await h.store.provider_events("primary")]
    assert "probe_failed" in events and "breaker_opened" in events
    view = await h.wait(await h.send())
    assert view.provider == "backup" and [a.provider for a in view.attempts] == ["backup"]
