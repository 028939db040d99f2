"""DESIGN.md's outcome table, end to end: store -> worker -> fake providers over HTTP."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from mailgate.message import Address
from mailgate.store import Finish, utcnow
from tests.delivery.conftest import Run
from tests.helpers import eventually


async def test_sent_through_the_first_provider(run: Run) -> None:
    h = await run()
    message_id = await h.send(cc=(Address("carol@example.org"),), tags=("welcome",))
    view = await h.wait(message_id)
    assert view.status == "sent" and view.provider == "primary"
    [received] = h.fakes.sendgrid.received
    assert received.mailgate_id == message_id
    assert view.provider_message_id == received.provider_message_id
    assert [(a.provider, a.outcome) for a in view.attempts] == [("primary", "sent")]
    assert [e.type for e in view.events] == ["accepted", "sent"]
    assert len(h.fakes.mailgun.received) == 0
    assert h.metric("mailgate_messages_sent_total", provider="primary") == 1
    assert h.metric("mailgate_provider_attempts_total", provider="primary", outcome="sent") == 1


async def test_a_5xx_fails_over_in_the_same_round(run: Run) -> None:
    h = await run()
    h.fakes.sendgrid.behaviour.status = 503
    view = await h.wait(await h.send())
    assert view.status == "sent" and view.provider == "backup"
    assert [(a.provider, a.outcome, a.status_code) for a in view.attempts] == [
        ("primary", "transient", 503),
        ("backup", "sent", None),
    ]
    assert [e.type for e in view.events] == ["accepted", "attempt", "failover", "sent"]
    failover = view.events[2].detail
    assert (failover["from"], failover["to"]) == ("primary", "backup")
    assert "503" in failover["reason"]
    assert h.metric("mailgate_failovers_total", provider="primary") == 1


async def test_a_timeout_fails_over_and_is_recorded_as_ambiguous(run: Run) -> None:
    h = await run(delivery={"attempt_timeout_seconds": 0.3})
    h.fakes.sendgrid.behaviour.hang = True
    view = await h.wait(await h.send())
    assert view.status == "sent" and view.provider == "backup"
    assert [(a.provider, a.outcome) for a in view.attempts] == [
        ("primary", "ambiguous"),
        ("backup", "sent"),
    ]


async def test_a_refused_connection_fails_over(run: Run) -> None:
    h = await run()
    providers = h.fakes.providers()
    providers[0]["base_url"] = "http://127.0.0.1:9"  # discard port: nothing listens
    h2 = await run(providers=providers)
    await h.stop()
    view = await h2.wait(await h2.send())
    assert view.provider == "backup"
    assert view.attempts[0].outcome == "transient" and "cannot connect" in (
        view.attempts[0].error or ""
    )


async def test_a_rejected_message_fails_at_once_and_tries_nobody_else(run: Run) -> None:
    h = await run()
    h.fakes.sendgrid.behaviour.status = 400
    view = await h.wait(await h.send())
    assert view.status == "failed"
    assert [(a.provider, a.outcome) for a in view.attempts] == [("primary", "permanent")]
    assert [e.type for e in view.events] == ["accepted", "attempt", "failed"]
    assert h.fakes.mailgun.requests == 0
    assert "Bad Request" in (view.last_error or "")
    assert h.metric("mailgate_messages_failed_total", outcome="permanent") == 1


async def test_bad_credentials_open_the_breaker_at_once(run: Run) -> None:
    providers = []
    h0 = await run(start=False)
    for p in h0.fakes.providers():
        providers.append(p | ({"api_key": "revoked"} if p["name"] == "primary" else {}))
    h = await run(providers=providers)
    first = await h.wait(await h.send())
    assert first.provider == "backup" and first.attempts[0].outcome == "auth"
    second = await h.wait(await h.send())
    assert [a.provider for a in second.attempts] == ["backup"]  # primary skipped
    assert h.fakes.sendgrid.requests == 1
    state = (await h.store.provider_states())["primary"]
    assert state.breaker_state == "open"
    assert h.metric("mailgate_breaker_transitions_total", provider="primary", state="open") == 1


async def test_a_429_pauses_the_provider_for_retry_after(run: Run) -> None:
    h = await run()
    h.fakes.sendgrid.behaviour.status = 429
    h.fakes.sendgrid.behaviour.retry_after = "30"
    first = await h.wait(await h.send())
    assert [(a.provider, a.outcome) for a in first.attempts] == [
        ("primary", "throttled"),
        ("backup", "sent"),
    ]
    h.fakes.sendgrid.behaviour.status = None
    ids = [await h.send() for _ in range(5)]
    for message_id in ids:
        assert (await h.wait(message_id)).provider == "backup"
    assert h.fakes.sendgrid.requests == 1  # nothing more during the pause
    assert (await h.store.provider_states())["primary"].paused_until is not None


async def test_when_every_provider_fails_the_message_waits_and_retries(run: Run) -> None:
    h = await run()
    for fake in (h.fakes.sendgrid, h.fakes.mailgun):
        fake.behaviour.status = 503
    message_id = await h.send()

    async def deferred() -> bool:
        view = await h.message(message_id)
        return any(e.type == "deferred" for e in view.events)

    await eventually(deferred)
    view = await h.message(message_id)
    assert view.status in ("queued", "sending")
    deferred_event = next(e for e in view.events if e.type == "deferred")
    assert deferred_event.detail["next_attempt_at"] and "503" in deferred_event.detail["reason"]
    for fake in (h.fakes.sendgrid, h.fakes.mailgun):
        fake.behaviour.status = None
    view = await h.wait(message_id)
    assert view.status == "sent"
    assert [a.outcome for a in view.attempts][-1] == "sent"
    assert h.metric("mailgate_messages_deferred_total") >= 1


async def test_gives_up_after_max_age(run: Run) -> None:
    h = await run(delivery={"max_age_seconds": 0.5, "retry_initial_seconds": 0.1})
    for fake in (h.fakes.sendgrid, h.fakes.mailgun):
        fake.behaviour.status = 500
    view = await h.wait(await h.send())
    assert view.status == "failed"
    assert view.events[-1].type == "expired"
    assert (view.last_error or "").startswith("expired:")
    assert len(view.attempts) >= 2
    assert h.metric("mailgate_messages_failed_total", outcome="expired") == 1


async def test_a_named_provider_is_the_only_one_tried(run: Run) -> None:
    h = await run()
    view = await h.wait(await h.send(provider="backup"))
    assert view.provider == "backup" and h.fakes.sendgrid.requests == 0
    h.fakes.mailgun.behaviour.status = 503
    message_id = await h.send(provider="backup")

    async def deferred() -> bool:
        return any(e.type == "deferred" for e in (await h.message(message_id)).events)

    await eventually(deferred)
    assert h.fakes.sendgrid.requests == 0  # no failover for a named provider
    h.fakes.mailgun.behaviour.status = None
    assert (await h.wait(message_id)).provider == "backup"


async def test_a_named_provider_that_is_gone_fails_the_message(run: Run) -> None:
    h = await run()
    view = await h.wait(await h.send(provider="retired"))
    assert view.status == "failed" and "not configured" in (view.last_error or "")


async def test_disabled_providers_are_skipped(run: Run) -> None:
    h = await run()
    await h.store.update_provider("primary", enabled=False)
    await h.pool.refresh()
    view = await h.wait(await h.send())
    assert [a.provider for a in view.attempts] == ["backup"]
    await h.store.update_provider("primary", enabled=True)
    await h.pool.refresh()
    assert (await h.wait(await h.send())).provider == "primary"


async def test_nothing_enabled_means_waiting_with_a_reason(run: Run) -> None:
    h = await run()
    for name in ("primary", "backup"):
        await h.store.update_provider(name, enabled=False)
    await h.pool.refresh()
    message_id = await h.send()

    async def deferred() -> bool:
        return any(e.type == "deferred" for e in (await h.message(message_id)).events)

    await eventually(deferred)
    reason = next(e for e in (await h.message(message_id)).events if e.type == "deferred").detail[
        "reason"
    ]
    assert reason == "no provider available: primary: disabled; backup: disabled"
    assert (await h.message(message_id)).attempts == ()


async def test_a_simulated_failure_takes_the_real_path(run: Run) -> None:
    h = await run()
    await h.store.update_provider("primary", simulated_failure="error")
    await h.pool.refresh()
    view = await h.wait(await h.send())
    assert view.provider == "backup"
    assert (view.attempts[0].outcome, view.attempts[0].status_code) == ("transient", 503)
    assert h.fakes.sendgrid.requests == 0
    assert [e.type for e in view.events] == ["accepted", "attempt", "failover", "sent"]


async def test_the_breaker_opens_persists_and_closes_after_a_probe(run: Run) -> None:
    overrides = {
        "breaker_min_calls": 3,
        "breaker_failure_ratio": 0.5,
        "breaker_cooldown_seconds": 0.5,
    }
    h = await run(provider_overrides=overrides)
    h.fakes.sendgrid.behaviour.status = 500
    for _ in range(3):
        await h.wait(await h.send())
    assert (await h.store.provider_states())["primary"].breaker_state == "open"
    requests = h.fakes.sendgrid.requests
    assert (await h.wait(await h.send())).provider == "backup"
    assert h.fakes.sendgrid.requests == requests  # skipped while open

    # A restarted worker starts from the stored state.
    await h.stop()
    h2 = await run(provider_overrides=overrides)
    await h2.pool.refresh()
    assert (
        h2.pool.slots["primary"].breaker.state(h2.pool.slots["primary"].breaker.changed_at + 0.1)
        == "open"
    )

    h2.fakes.sendgrid.behaviour.status = None
    await asyncio.sleep(0.6)  # past the cool-down: the next message is the probe
    view = await h2.wait(await h2.send())
    assert view.provider == "primary"
    assert (await h2.store.provider_states())["primary"].breaker_state == "closed"


async def test_scheduled_messages_go_out_when_due(run: Run) -> None:
    h = await run()
    # Read at once: on a loaded machine a short sleep here can outlast the wait.
    message_id = await h.send(send_at=utcnow() + timedelta(seconds=1.5))
    assert (await h.message(message_id)).status == "scheduled"
    view = await h.wait(message_id)
    assert view.status == "sent"
    assert [e.type for e in view.events] == ["scheduled", "sent"]


async def test_a_slow_round_keeps_its_lease(run: Run) -> None:
    """A send slower than the lease must not be reclaimed while its worker lives."""
    h = await run(delivery={"lease_seconds": 0.6, "attempt_timeout_seconds": 5})
    h.fakes.sendgrid.behaviour.latency = 1.5
    view = await h.wait(await h.send())
    assert view.status == "sent"
    assert [a.outcome for a in view.attempts] == ["sent"]
    assert not any(e.type == "reclaimed" for e in view.events)
    assert len(h.fakes.sendgrid.received) == 1


async def test_stopping_lets_in_flight_sends_finish(run: Run) -> None:
    h = await run()
    h.fakes.sendgrid.behaviour.latency = 0.3
    ids = [await h.send() for _ in range(20)]
    await eventually(lambda: h.fakes.sendgrid.requests > 0)
    await h.stop()
    views = [await h.message(i) for i in ids]
    assert all(v.status in ("sent", "queued") for v in views)
    sent = [v for v in views if v.status == "sent"]
    assert len(sent) == len(h.fakes.sendgrid.received)


async def test_many_messages_each_sent_exactly_once(run: Run) -> None:
    h = await run(delivery={"concurrency": 50})
    h.fakes.sendgrid.behaviour.latency = 0.01
    ids = await asyncio.gather(*(h.send() for _ in range(300)))

    async def drained() -> bool:
        depth = await h.store.queue_depth()
        return depth["queued"] == depth["sending"] == 0

    await eventually(drained)
    assert {(await h.message(i)).status for i in ids} == {"sent"}
    counts = h.fakes.sendgrid.counts
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}


async def test_a_slot_frees_when_the_provider_answers_and_leases_are_capped(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a round's end waits for the store, the next message already sends; at
    most twice `concurrency` and a claim batch are leased so, their leases kept;
    none is lost."""
    h = await run(start=False, delivery={"concurrency": 2, "lease_seconds": 0.9})
    gate = asyncio.Event()
    real_finish = h.store.finish

    async def slow_finish(finish: Finish) -> None:
        await gate.wait()
        await real_finish(finish)

    monkeypatch.setattr(h.store, "finish", slow_finish)
    ids = [await h.send() for _ in range(10)]
    h.start()
    leased = 2 * 2 + 2  # twice the concurrency, and a batch (the claim batch, at most 2)
    await eventually(lambda: h.fakes.sendgrid.requests == leased)
    await asyncio.sleep(1.5)  # longer than a lease: the waiting rounds keep theirs
    assert h.fakes.sendgrid.requests == leased and h.worker.inflight == leased
    assert (await h.store.queue_depth())["sending"] == leased
    gate.set()

    async def all_sent() -> bool:
        return {(await h.message(i)).status for i in ids} == {"sent"}

    await eventually(all_sent)
    assert sorted(h.fakes.sendgrid.counts) == sorted(ids)
    assert set(h.fakes.sendgrid.counts.values()) == {1}
    for message_id in ids:
        assert not any(e.type == "reclaimed" for e in (await h.message(message_id)).events)


async def test_messages_claimed_ahead_are_handed_back_when_the_worker_stops(run: Run) -> None:
    h = await run(start=False, delivery={"concurrency": 2})
    h.fakes.sendgrid.behaviour.latency = 0.5
    ids = [await h.send() for _ in range(10)]
    h.start()
    await eventually(lambda: h.worker.inflight == 4)  # two sending, two claimed ahead
    assert (await h.store.queue_depth())["sending"] == 4
    await h.stop()
    views = [await h.message(i) for i in ids]
    sent = [v for v in views if v.status == "sent"]
    assert len(sent) == 2 == len(h.fakes.sendgrid.received)
    assert {v.status for v in views if v not in sent} == {"queued"}
    assert (await h.store.queue_depth())["sending"] == 0
    for view in views:
        if view not in sent:
            assert not view.attempts and not any(e.type == "reclaimed" for e in view.events)
    h.fakes.sendgrid.behaviour.latency = 0
    after = await run()  # the handed-back messages go out with the next worker at once
    for message_id in ids:
        assert (await after.wait(message_id)).status == "sent"
    assert sorted(h.fakes.sendgrid.counts) == sorted(ids)
