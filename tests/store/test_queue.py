"""The queue operations on a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from mailgate.errors import Conflict, IdempotencyMismatch, InvalidRequest, NotFound
from mailgate.message import Address, EventType, Outcome, Status, new_id
from mailgate.store import AttemptRecord, EventRecord, Finish, NewMessage, Scope, Store, utcnow
from mailgate.store.tables import messages
from tests import helpers

email = helpers.email
new = helpers.new_message


async def count(store: Store, **where: Any) -> int:
    query = select(func.count()).select_from(messages)
    for column, value in where.items():
        query = query.where(messages.c[column] == value)
    return int(await store.db.read(lambda conn: conn.execute(query).scalar_one()))


def sent(message_id: str, owner: str, **fields: Any) -> Finish:
    now = utcnow()
    values: dict[str, Any] = {
        "message_id": message_id,
        "lease_owner": owner,
        "status": Status.SENT,
        "rounds": 1,
        "attempts": (AttemptRecord("primary", now, 12, Outcome.SENT),),
        "events": (EventRecord(EventType.SENT, now, {"provider": "primary"}),),
        "provider": "primary",
        "provider_message_id": "pm-1",
    }
    values.update(fields)
    return Finish(**values)


async def test_accept_then_read_back_the_whole_message(store: Store) -> None:
    item = new(
        email=email(
            cc=(Address("carol@example.org", "Carol"),),
            html="<p>Hi</p>",
            headers={"X-Campaign": "autumn"},
            tags=("welcome",),
            metadata={"user": "42"},
        )
    )
    accepted = await store.accept(item)
    assert accepted.created and accepted.id == item.id and accepted.status is Status.QUEUED

    view = await store.get_message("default", item.id)
    assert view.status == "queued"
    assert view.envelope["cc"] == [{"email": "carol@example.org", "name": "Carol"}]
    assert view.envelope["tags"] == ["welcome"] and view.envelope["metadata"] == {"user": "42"}
    assert [e.type for e in view.events] == ["accepted"]

    claimed = await store.claim("w1", limit=10, lease_seconds=30)
    assert [c.email for c in claimed] == [item.email]


async def test_scheduled_messages_wait_until_due(store: Store) -> None:
    later = new(send_at=utcnow() + timedelta(hours=1))
    due = new(send_at=utcnow() - timedelta(seconds=1))
    for item in (later, due):
        await store.accept(item)
    assert (await store.get_message("default", later.id)).status == "scheduled"
    claimed = await store.claim("w1", limit=10, lease_seconds=30)
    assert [c.id for c in claimed] == [due.id]


async def test_claims_never_overlap_and_take_the_oldest_first(store: Store) -> None:
    items = [new() for _ in range(30)]
    await store.accept_many(items)
    first, second = await asyncio.gather(
        store.claim("w1", limit=20, lease_seconds=30), store.claim("w2", limit=20, lease_seconds=30)
    )
    ids = [c.id for c in first] + [c.id for c in second]
    assert len(ids) == len(set(ids)) == 30
    assert await store.claim("w3", limit=20, lease_seconds=30) == []
    assert await count(store, status="sending") == 30


async def test_finish_records_attempts_and_events(store: Store) -> None:
    item = new()
    await store.accept(item)
    [claimed] = await store.claim("w1", limit=1, lease_seconds=30)
    await store.finish(sent(claimed.id, "w1"))
    view = await store.get_message("default", item.id)
    assert view.status == "sent"
    assert (view.provider, view.provider_message_id) == ("primary", "pm-1")
    assert [(a.provider, a.outcome) for a in view.attempts] == [("primary", "sent")]
    assert [e.type for e in view.events] == ["accepted", "sent"]


async def test_finish_keeps_history_but_not_status_without_the_lease(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("w1", limit=1, lease_seconds=30)
    await store.finish(sent(item.id, "someone-else"))
    view = await store.get_message("default", item.id)
    assert view.status == "sending"
    assert len(view.attempts) == 1


async def test_deferred_message_comes_back_when_due(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("w1", limit=1, lease_seconds=30)
    soon = utcnow() + timedelta(milliseconds=200)
    await store.finish(
        Finish(
            message_id=item.id,
            lease_owner="w1",
            status=Status.QUEUED,
            rounds=1,
            next_attempt_at=soon,
        )
    )
    assert await store.claim("w1", limit=1, lease_seconds=30) == []
    await asyncio.sleep(0.25)
    [again] = await store.claim("w1", limit=1, lease_seconds=30)
    assert again.rounds == 1


async def test_expired_leases_are_reclaimed_and_the_lost_try_recorded(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("dead-worker", limit=1, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await store.reclaim_expired() == [item.id]
    view = await store.get_message("default", item.id)
    assert view.status == "queued"
    assert [(a.provider, a.outcome) for a in view.attempts] == [(None, "ambiguous")]
    assert view.events[-1].type == "reclaimed"
    assert view.events[-1].detail == {"worker": "dead-worker"}
    [claimed] = await store.claim("w2", limit=1, lease_seconds=30)
    assert claimed.id == item.id


async def test_a_dead_workers_leases_are_reclaimed_before_they_run_out(store: Store) -> None:
    dead, alive = new(), new()
    await store.accept(dead)
    await store.accept(alive)
    started = utcnow()
    await store.heartbeat("gone", "worker", started)
    await store.heartbeat("busy", "worker", started)
    [claimed] = await store.claim("gone", limit=1, lease_seconds=60)
    assert claimed.id == dead.id
    await store.claim("busy", limit=1, lease_seconds=60)
    assert await store.reclaim_expired(["gone"]) == [dead.id]  # only the dead one's
    view = await store.get_message("default", dead.id)
    assert view.status == "queued" and view.events[-1].detail == {"worker": "gone"}
    assert [a.outcome for a in view.attempts] == ["ambiguous"]
    assert (await store.get_message("default", alive.id)).status == "sending"
    # The dead worker is no longer counted, its last heartbeat kept...
    assert set(await store.worker_beats(within_seconds=60)) == {"busy"}
    # ...until it beats again: then it was alive after all.
    await store.heartbeat("gone", "worker", started)
    assert set(await store.worker_beats(within_seconds=60)) == {"busy", "gone"}


async def test_live_leases_are_extended_not_reclaimed(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("w1", limit=1, lease_seconds=0.2)
    assert await store.extend_leases("w1", [item.id], lease_seconds=30) == 1
    await asyncio.sleep(0.25)
    assert await store.reclaim_expired() == []
    assert await store.extend_leases("w2", [item.id], lease_seconds=30) == 0


async def reclaimed_from(store: Store, owner: str) -> str:
    """A message claimed by `owner` whose lease ran out and was taken back."""
    item = new()
    await store.accept(item)
    [claimed] = await store.claim(owner, limit=1, lease_seconds=0.05)
    assert claimed.id == item.id
    await asyncio.sleep(0.1)
    assert await store.reclaim_expired() == [item.id]
    return item.id


async def test_a_slow_workers_late_finish_wins_while_nobody_claimed_the_message(
    store: Store,
) -> None:
    """A worker that stalled past its lease and then stores its round's end: the
    message is sent once, and its history tells of the reclaim."""
    message_id = await reclaimed_from(store, "slow")
    await store.finish(sent(message_id, "slow"))
    view = await store.get_message("default", message_id)
    assert view.status == "sent"
    assert [e.type for e in view.events] == ["accepted", "reclaimed", "sent"]
    assert sorted(a.outcome for a in view.attempts) == ["ambiguous", "sent"]
    assert await store.claim("w2", limit=10, lease_seconds=30) == []


async def test_a_late_finish_loses_to_a_worker_that_claimed_the_message(store: Store) -> None:
    message_id = await reclaimed_from(store, "slow")
    [claimed] = await store.claim("w2", limit=1, lease_seconds=30)
    await store.finish(sent(message_id, "slow"))
    assert (await store.get_message("default", message_id)).status == "sending"
    assert await store.extend_leases("slow", [message_id], lease_seconds=30) == 0
    await store.finish(sent(claimed.id, "w2"))
    view = await store.get_message("default", message_id)
    assert view.status == "sent"
    assert len([a for a in view.attempts if a.outcome == "sent"]) == 2  # both are on record


async def test_a_slow_worker_keeps_its_lease_while_nobody_claimed_the_message(
    store: Store,
) -> None:
    message_id = await reclaimed_from(store, "slow")
    assert await store.extend_leases("slow", [message_id], lease_seconds=30) == 1
    assert (await store.get_message("default", message_id)).status == "sending"
    assert await store.claim("w2", limit=10, lease_seconds=30) == []
    assert await store.reclaim_expired() == []


async def test_a_late_finish_does_not_undo_a_cancel(store: Store) -> None:
    message_id = await reclaimed_from(store, "slow")
    await store.cancel("default", message_id)
    await store.finish(sent(message_id, "slow"))
    assert await store.extend_leases("slow", [message_id], lease_seconds=30) == 0
    assert (await store.get_message("default", message_id)).status == "cancelled"


async def test_release_hands_back_claimed_messages(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("w1", limit=1, lease_seconds=30)
    await store.release("w1", [item.id])
    assert (await store.get_message("default", item.id)).status == "queued"


async def test_cancel_only_waiting_messages(store: Store) -> None:
    waiting, busy = new(), new()
    await store.accept_many([waiting, busy])
    busy_now = update(messages).where(messages.c.id == busy.id).values(status="sending")
    await store.db.write(lambda conn: conn.execute(busy_now))
    await store.cancel("default", waiting.id)
    view = await store.get_message("default", waiting.id)
    assert view.status == "cancelled" and view.events[-1].type == "cancelled"
    with pytest.raises(Conflict):
        await store.cancel("default", busy.id)
    with pytest.raises(Conflict):
        await store.cancel("default", waiting.id)
    with pytest.raises(NotFound):
        await store.cancel("default", new_id("msg"))
    assert await store.claim("w1", limit=10, lease_seconds=30) == []


async def test_retry_puts_a_failed_message_back_with_a_fresh_window(store: Store) -> None:
    item = new()
    await store.accept(item)
    await store.claim("w1", limit=1, lease_seconds=30)
    await store.finish(
        Finish(message_id=item.id, lease_owner="w1", status=Status.FAILED, rounds=3, last_error="x")
    )
    with pytest.raises(Conflict):
        await store.cancel("default", item.id)
    await store.retry("default", item.id)
    [claimed] = await store.claim("w1", limit=1, lease_seconds=30)
    assert claimed.rounds == 0 and claimed.window_start > item.created_at
    view = await store.get_message("default", item.id)
    assert [e.type for e in view.events][-1] == "retried"
    with pytest.raises(Conflict):
        await store.retry("default", item.id)


async def test_idempotency_key_answers_repeats_and_refuses_changes(store: Store) -> None:
    first = new(idempotency_key="order-1", request_hash="a")
    repeat = new(idempotency_key="order-1", request_hash="a")
    changed = new(idempotency_key="order-1", request_hash="b")
    assert (await store.accept(first)).created
    again = await store.accept(repeat)
    assert (again.id, again.created) == (first.id, False)
    with pytest.raises(IdempotencyMismatch):
        await store.accept(changed)
    assert await count(store) == 1


async def test_idempotency_inside_one_group(store: Store) -> None:
    items = [new(idempotency_key="k", request_hash="h") for _ in range(5)]
    results = await store.accept_many([*items, new(idempotency_key="k", request_hash="other")])
    created = [r for r in results if not isinstance(r, Exception) and r.created]
    repeats = [r for r in results if not isinstance(r, Exception) and not r.created]
    assert len(created) == 1 and len(repeats) == 4
    assert {r.id for r in repeats} == {created[0].id}
    assert isinstance(results[-1], IdempotencyMismatch)
    assert await count(store) == 1


async def test_concurrent_accepts_share_transactions(store: Store) -> None:
    """Group commit: 500 concurrent accepts need far fewer than 500 commits."""
    commits = 0
    write = store.db.write

    def counting_write(*args: Any, **kwargs: Any) -> Any:
        nonlocal commits
        commits += 1
        return write(*args, **kwargs)

    store.db.write = counting_write  # type: ignore[method-assign]
    items = [new() for _ in range(500)]
    results = await asyncio.gather(*(store.accept(item) for item in items))
    assert all(r.created for r in results)
    assert await count(store) == 500
    assert commits < 100


async def test_listing_filters_and_pages_newest_first(store: Store) -> None:
    made: list[NewMessage] = []
    for kind in ["tagged"] * 3 + ["carol"] + ["other"] * 4:
        await asyncio.sleep(0.002)  # distinct milliseconds, so id order is creation order
        if kind == "tagged":
            made.append(new(email=email(tags=("welcome",))))
        elif kind == "carol":
            made.append(new(email=email(to=(Address("Carol@Example.org"),))))
        else:
            made.append(new())
        await store.accept(made[-1])
    tagged, to_carol, others = made[:3], made[3], made[4:]

    everything = await store.list_messages("default", limit=100)
    assert [v.id for v in everything] == [i.id for i in reversed(made)]
    assert {v.id for v in await store.list_messages("default", limit=100, tag="welcome")} == {
        i.id for i in tagged
    }
    assert [
        v.id for v in await store.list_messages("default", limit=100, to="carol@example.org")
    ] == [to_carol.id]
    page = await store.list_messages("default", limit=3)
    rest = await store.list_messages("default", limit=100, before_id=page[-1].id)
    assert [v.id for v in page + rest] == [v.id for v in everything]
    await store.cancel("default", others[0].id)
    assert [v.id for v in await store.list_messages("default", limit=10, status="cancelled")] == [
        others[0].id
    ]
    assert await store.list_messages("other-tenant", limit=10) == []


async def test_queue_depth(store: Store) -> None:
    await store.accept_many([new(), new(), new(send_at=utcnow() + timedelta(hours=1))])
    await store.claim("w1", limit=1, lease_seconds=30)
    assert await store.queue_depth() == {"queued": 1, "scheduled": 1, "sending": 1}


async def test_keys_are_hashed_and_revocable(store: Store) -> None:
    key, secret = await store.create_key("ci", tenant_id="default")
    assert secret.startswith("mg_") and key.prefix == secret[:9]
    found = await store.find_key(secret)
    assert found is not None and found[0].id == key.id and found[1].id == "default"
    assert found[0].scopes == tuple(Scope)
    assert await store.find_key(secret + "x") is None
    await store.revoke_key(key.id)
    assert await store.find_key(secret) is None
    with pytest.raises(NotFound):
        await store.revoke_key(key.id)
    [listed] = await store.list_keys()
    assert listed.revoked_at is not None


async def test_provider_state_upserts(store: Store) -> None:
    assert await store.provider_states() == {}
    await store.update_provider("primary", enabled=False)
    await store.update_provider("primary", simulated_failure="timeout")
    state = (await store.provider_states())["primary"]
    assert (state.enabled, state.simulated_failure, state.breaker_state) == (
        False,
        "timeout",
        "closed",
    )


async def test_a_value_the_store_cannot_keep_sinks_only_its_own_message(store: Store) -> None:
    """PostgreSQL refuses NUL in text: that message is refused, its group-mates are kept."""
    good, bad = new(), new(email=email(tags=("a\x00b",)))
    results = await store.accept_many([good, bad])
    assert not isinstance(results[0], Exception)
    if store.db.is_sqlite:  # SQLite keeps any text
        assert not isinstance(results[1], Exception)
    else:
        assert isinstance(results[1], InvalidRequest)
        assert await count(store) == 1


async def test_messages_accepted_together_are_counted_against_the_quota_whole(
    store: Store,
) -> None:
    def some(count: int, together: str | None = None) -> list[NewMessage]:
        return [helpers.new_message(daily_quota=4, together=together) for _ in range(count)]

    # One group commit: the loose message and the pair fit; the trio would pass the quota.
    outcomes = await store.accept_many([*some(1), *some(2, "pair"), *some(3, "trio")])
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["Accepted"] * 3 + ["QuotaExceeded"] * 3
    assert (await store.used_today(["default"]))["default"] == 3  # the trio took nothing
    # One left: a pair is refused whole, a single message still fits.
    pair = await store.accept_many(some(2, "again"))
    assert [type(o).__name__ for o in pair] == ["QuotaExceeded"] * 2
    [single] = await store.accept_many(some(1))
    assert type(single).__name__ == "Accepted"
