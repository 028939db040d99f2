"""After `kill -9`, the dead worker's in-flight messages go out again within seconds.

Leases are two minutes here, so only the heartbeat watch
(`mailgate.delivery.silence`) can explain a recovery inside the test's
time; the tests also find its log line. Real processes, both engines.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.message import Address, Email, new_id
from mailgate.store import NewMessage, Store, utcnow
from mailgate.store.tables import messages
from tests.e2e.processes import mailgate, write_config
from tests.helpers import Fakes, eventually

pytestmark = pytest.mark.slow

LEASE_SECONDS = 120
STARTED = re.compile(r"worker (\S+): started")
SILENT = re.compile(r"worker (\S+): taking back the leases of silent workers \['(\S+)'\]")


async def statuses(store: Store) -> dict[str, str]:
    query = select(messages.c.id, messages.c.status)
    return await store.db.read(lambda conn: {r.id: r.status for r in conn.execute(query)})


async def queue(store: Store, count: int) -> set[str]:
    email = Email(
        sender=Address("ada@example.com"), to=(Address("bob@example.org"),), subject="s", text="t"
    )
    items = [
        NewMessage(id=new_id("msg"), tenant_id="default", email=email, created_at=utcnow())
        for _ in range(count)
    ]
    await store.accept_many(items)
    return {item.id for item in items}


async def sending(store: Store) -> set[str]:
    return {i for i, status in (await statuses(store)).items() if status == "sending"}


def config_for(tmp_path: Path, database_url: str, fakes: Fakes) -> Path:
    return write_config(
        tmp_path / "mailgate.toml",
        database_url,
        fakes.providers(),
        concurrency=20,
        lease_seconds=LEASE_SECONDS,
        poll_interval_seconds=0.1,
    )


async def all_sent(store: Store, ids: set[str], timeout: float) -> None:
    async def done() -> bool:
        now = await statuses(store)
        return all(now[i] == "sent" for i in ids)

    await eventually(done, timeout=timeout, interval=0.2)


def check_doubles(fakes: Fakes, ids: set[str], in_flight: set[str]) -> None:
    received = fakes.sendgrid.counts + fakes.mailgun.counts
    assert set(received) == ids  # nothing lost
    doubles = {i for i, n in received.items() if n > 1}
    assert doubles <= in_flight, Counter(received.values())  # twice only if in flight


async def test_a_restarted_serve_sends_what_the_killed_one_had_in_flight(
    tmp_path: Path, fakes: Fakes, store: Store, database_url: str
) -> None:
    if store.db.is_sqlite:
        await store.migrate()
    config = config_for(tmp_path, database_url, fakes)
    fakes.sendgrid.behaviour.latency = 30  # every send hangs at the provider
    ids = await queue(store, 40)
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as first:
        await eventually(lambda: _sending_at_least(store, 20), timeout=30)
        first.kill()
        assert await first.proc.wait() == -9
    in_flight = await sending(store)
    assert in_flight
    fakes.sendgrid.behaviour.latency = 0
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as second:
        # Well inside the two-minute lease: the restarted worker saw the old one silent.
        try:
            await all_sent(store, ids, timeout=45)
        except AssertionError:
            raise AssertionError("\n".join([*second.lines, "---", *first.lines])) from None
        line = await second.wait_for(SILENT)
        old = line[2]
        assert await second.stop() == 0
    for message_id in in_flight:
        view = await store.get_message("default", message_id)
        assert [e.detail for e in view.events if e.type == "reclaimed"] == [{"worker": old}]
    check_doubles(fakes, ids, in_flight)


async def _sending_at_least(store: Store, count: int) -> bool:
    return len(await sending(store)) >= count


async def test_a_live_worker_keeps_its_leases_while_a_dead_ones_are_taken(
    tmp_path: Path, fakes: Fakes, store: Store, database_url: str
) -> None:
    if store.db.is_sqlite:
        await store.migrate()
    config = config_for(tmp_path, database_url, fakes)
    # Slow sends: each worker holds leases for seconds at a time, far longer than a
    # heartbeat's silence would have to last to be taken for dead.
    fakes.sendgrid.behaviour.latency = 2
    ids = await queue(store, 120)
    async with (
        mailgate("worker", "--config", str(config), cwd=tmp_path) as alive,
        mailgate("worker", "--config", str(config), cwd=tmp_path) as doomed,
    ):
        alive_id = (await alive.wait_for(STARTED))[1]
        doomed_id = (await doomed.wait_for(STARTED))[1]
        await eventually(lambda: fakes.total() >= 30, timeout=60)
        # Killed while it holds leases: between two claims it may hold none, and
        # then nothing of its would be left to take back.
        await eventually(lambda: _holds_leases(store, doomed_id), timeout=30, interval=0.05)
        doomed.kill()
        assert await doomed.proc.wait() == -9
        in_flight = await sending(store)
        await all_sent(store, ids, timeout=90)
        line = await alive.wait_for(SILENT)
        assert (line[1], line[2]) == (alive_id, doomed_id)
        assert await alive.stop() == 0
    reclaimed_from = await _reclaimed_from(store, ids)
    assert set(reclaimed_from.values()) == {doomed_id}  # never the live worker's
    assert set(reclaimed_from) <= in_flight
    check_doubles(fakes, ids, in_flight)


async def _holds_leases(store: Store, owner: str) -> bool:
    query = select(messages.c.id).where(
        messages.c.status == "sending", messages.c.lease_owner == owner
    )
    return bool(await store.db.read(lambda conn: conn.execute(query).first()))


async def _reclaimed_from(store: Store, ids: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for message_id in ids:
        view = await store.get_message("default", message_id)
        for event in view.events:
            if event.type == "reclaimed":
                found[message_id] = str(event.detail["worker"])
    return found
