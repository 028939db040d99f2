"""Provider events in the store: once, per recipient, statuses, suppressions (both engines)."""

from __future__ import annotations

import pytest

from mailgate.events.inbound import EventKind, InboundEvent
from mailgate.message import Address, EventType, Outcome, Status
from mailgate.store import AttemptRecord, EventRecord, Finish, Store, utcnow
from mailgate.store.feedback import Replayed, derived_status
from tests import helpers


async def sent_message(store: Store, *to: str, provider_id: str = "pm-1") -> str:
    """A message accepted, claimed and finished as sent by `primary`."""
    item = helpers.new_message(email=helpers.email(to=tuple(Address(a) for a in to)))
    await store.accept(item)
    [claimed] = await store.claim("w", limit=10, lease_seconds=60)
    assert claimed.id == item.id
    await store.finish(finish(item.id, provider_id))
    return item.id


def finish(message_id: str, provider_id: str, **fields: object) -> Finish:
    now = utcnow()
    values: dict[str, object] = {
        "message_id": message_id,
        "lease_owner": "w",
        "status": Status.SENT,
        "rounds": 1,
        "attempts": (AttemptRecord("primary", now, 12, Outcome.SENT),),
        "events": (EventRecord(EventType.SENT, now, {"provider": "primary"}),),
        "provider": "primary",
        "provider_message_id": provider_id,
    }
    values.update(fields)
    return Finish(**values)  # type: ignore[arg-type]


def event(kind: EventKind, recipient: str, key: str, **fields: object) -> InboundEvent:
    values: dict[str, object] = {"kind": kind, "key": key, "recipient": recipient, "at": utcnow()}
    values.update(fields)
    return InboundEvent(**values)  # type: ignore[arg-type]


async def test_a_delivery_is_recorded_once_per_recipient(store: Store) -> None:
    message_id = await sent_message(store, "bob@example.org", "Eve@Example.org")
    d1 = event(EventKind.DELIVERED, "bob@example.org", "e1", message_id=message_id)
    done = await store.record_provider_events("primary", [d1, d1])
    assert (done.recorded, done.duplicates) == (1, 1)
    again = await store.record_provider_events("primary", [d1])  # the provider repeats it
    assert (again.recorded, again.duplicates) == (0, 1)
    view = await store.get_message("default", message_id)
    assert view.status == "sent"  # eve is not final yet
    assert {r.email: r.status for r in view.recipients} == {
        "bob@example.org": "delivered",
        "eve@example.org": "sent",
    }
    await store.record_provider_events(
        "primary", [event(EventKind.DELIVERED, "EVE@example.org", "e2", message_id=message_id)]
    )
    view = await store.get_message("default", message_id)
    assert view.status == "delivered"
    assert [e.type for e in view.events].count("delivered") == 2
    assert view.events[-1].detail["recipient"] == "eve@example.org"


async def test_matched_by_the_providers_id_when_ours_is_missing(store: Store) -> None:
    message_id = await sent_message(store, "bob@example.org", provider_id="pm-77")
    done = await store.record_provider_events(
        "primary",
        [event(EventKind.DELIVERED, "bob@example.org", "e1", provider_message_id="pm-77")],
    )
    assert done.recorded == 1
    assert (await store.get_message("default", message_id)).status == "delivered"
    # Another provider's id of the same value is not ours.
    other = await store.record_provider_events(
        "backup", [event(EventKind.DELIVERED, "bob@example.org", "e1", provider_message_id="pm-77")]
    )
    assert (other.recorded, other.unknown) == (0, 1)


async def test_an_unknown_message_is_counted_not_an_error(store: Store) -> None:
    done = await store.record_provider_events(
        "primary", [event(EventKind.DELIVERED, "x@example.org", "e1", message_id="msg_nope")]
    )
    assert (done.recorded, done.unknown) == (0, 1)


async def test_a_replayed_token_is_refused_and_records_nothing(store: Store) -> None:
    message_id = await sent_message(store, "bob@example.org")
    first = event(EventKind.DELIVERED, "bob@example.org", "e1", message_id=message_id)
    await store.record_provider_events("primary", [first], replay_key="tok-1")
    second = event(EventKind.COMPLAINED, "bob@example.org", "e2", message_id=message_id)
    with pytest.raises(Replayed):
        await store.record_provider_events("primary", [second], replay_key="tok-1")
    view = await store.get_message("default", message_id)
    assert view.status == "delivered" and "complained" not in [e.type for e in view.events]


async def test_a_hard_bounce_suppresses_and_a_soft_one_does_not(store: Store) -> None:
    message_id = await sent_message(store, "hard@example.org", "soft@example.org")
    await store.record_provider_events(
        "primary",
        [
            event(EventKind.BOUNCED, "hard@example.org", "b1", message_id=message_id,
                  bounce="hard", reason="550 5.1.1 no such user"),
            event(EventKind.BOUNCED, "soft@example.org", "b2", message_id=message_id,
                  bounce="soft", reason="452 mailbox full"),
        ],
    )  # fmt: skip
    view = await store.get_message("default", message_id)
    assert view.status == "bounced"
    bounced = [e for e in view.events if e.type == "bounced"]
    assert {e.detail["recipient"]: e.detail["kind"] for e in bounced} == {
        "hard@example.org": "hard",
        "soft@example.org": "soft",
    }
    [entry] = await store.list_suppressions("default", limit=10)
    assert (entry.email, entry.reason, entry.message_id) == (
        "hard@example.org",
        "hard_bounce",
        message_id,
    )
    assert await store.is_suppressed("default", "HARD@example.org")
    assert not await store.list_suppressions("other-tenant", limit=10)


async def test_a_complaint_wins_and_suppresses(store: Store) -> None:
    message_id = await sent_message(store, "a@example.org", "b@example.org")
    await store.record_provider_events(
        "primary",
        [
            event(EventKind.DELIVERED, "a@example.org", "d1", message_id=message_id),
            event(EventKind.DELIVERED, "b@example.org", "d2", message_id=message_id),
            event(EventKind.COMPLAINED, "b@example.org", "c1", message_id=message_id),
            event(EventKind.DEFERRED, "b@example.org", "late", message_id=message_id),
        ],
    )
    view = await store.get_message("default", message_id)
    assert view.status == "complained"
    states = {r.email: r.status for r in view.recipients}
    assert states == {"a@example.org": "delivered", "b@example.org": "complained"}
    assert [s.reason for s in await store.list_suppressions("default", limit=10)] == ["complaint"]


async def test_events_before_the_worker_finished_settle_at_the_finish(store: Store) -> None:
    """A fast provider's event can arrive while the message is still `sending`."""
    item = helpers.new_message()
    await store.accept(item)
    await store.claim("w", limit=10, lease_seconds=60)
    await store.record_provider_events(
        "primary", [event(EventKind.DELIVERED, "bob@example.org", "d1", message_id=item.id)]
    )
    assert (await store.get_message("default", item.id)).status == "sending"
    await store.finish(finish(item.id, "pm-1"))
    assert (await store.get_message("default", item.id)).status == "delivered"


def test_the_status_rules() -> None:
    assert derived_status([None, None]) is Status.SENT
    assert derived_status(["delivered", None]) is Status.SENT
    assert derived_status(["delivered", "bounced"]) is Status.DELIVERED
    assert derived_status(["bounced", "bounced"]) is Status.BOUNCED
    assert derived_status(["bounced", "suppressed"]) is Status.BOUNCED
    assert derived_status(["delivered", "complained"]) is Status.COMPLAINED
    assert derived_status(["deferred", "delivered"]) is Status.SENT
    assert derived_status(["delivered", "suppressed"]) is Status.DELIVERED


async def test_suppressions_are_listed_added_and_removed(store: Store) -> None:
    await store.add_suppression("default", "One@example.org")
    await store.add_suppression("default", "two@example.org", "unsubscribe")
    listed = await store.list_suppressions("default", limit=10)
    assert [s.email for s in listed] == ["two@example.org", "one@example.org"]
    page = await store.list_suppressions("default", limit=1)
    rest = await store.list_suppressions(
        "default", limit=10, after=(page[0].created_at, page[0].email)
    )
    assert [s.email for s in rest] == ["one@example.org"]
    assert [
        s.email for s in await store.list_suppressions("default", limit=9, reason="manual")
    ] == ["one@example.org"]
    await store.remove_suppression("default", "ONE@example.org")
    assert not await store.is_suppressed("default", "one@example.org")
