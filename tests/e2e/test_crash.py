"""Kill -9 a real worker mid-flight, twice, and count: nothing lost, doubles only in flight."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.config import DatabaseSettings
from mailgate.message import Address, Email, new_id
from mailgate.store import NewMessage, Store, utcnow
from mailgate.store.tables import messages
from tests.e2e.processes import mailgate, write_config
from tests.helpers import Fakes, eventually

pytestmark = pytest.mark.slow

MESSAGES = 600


async def statuses(store: Store) -> dict[str, str]:
    query = select(messages.c.id, messages.c.status)
    return await store.db.read(lambda conn: {r.id: r.status for r in conn.execute(query)})


async def test_a_killed_worker_loses_nothing(tmp_path: Path, fakes: Fakes) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    config = write_config(
        tmp_path / "mailgate.toml",
        url,
        fakes.providers(),
        concurrency=40,
        lease_seconds=1.5,
        poll_interval_seconds=0.05,
        retry_initial_seconds=0.2,
    )
    fakes.sendgrid.behaviour.latency = 0.1  # so sends are in flight when the kill comes
    store = Store(DatabaseSettings(url=url))
    await store.migrate()
    email = Email(
        sender=Address("ada@example.com"), to=(Address("bob@example.org"),), subject="s", text="t"
    )
    items = [
        NewMessage(id=new_id("msg"), tenant_id="default", email=email, created_at=utcnow())
        for _ in range(MESSAGES)
    ]
    await store.accept_many(items)
    ids = {item.id for item in items}

    in_flight: set[str] = set()
    for kill in (1, 2):
        async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:

            async def progressed(target: int = kill * MESSAGES // 4) -> bool:
                return fakes.total() >= target

            await eventually(progressed, timeout=30)
            worker.kill()
            assert await worker.proc.wait() == -9
        now = await statuses(store)
        in_flight |= {i for i, status in now.items() if status == "sending"}
    assert in_flight, "the kills should have caught messages mid-send"

    async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:

        async def finished() -> bool:
            return all(s in ("sent", "failed") for s in (await statuses(store)).values())

        await eventually(finished, timeout=60)
        assert await worker.stop() == 0

    final = await statuses(store)
    assert set(final.values()) == {"sent"}, Counter(final.values())
    received = fakes.sendgrid.counts + fakes.mailgun.counts
    assert set(received) == ids  # every message reached a provider: nothing lost
    doubles = {i for i, n in received.items() if n > 1}
    assert doubles <= in_flight  # sent twice only if it was in flight at a kill
    for message_id in doubles:
        view = await store.get_message("default", message_id)
        assert any(e.type == "reclaimed" for e in view.events)
        assert any(a.outcome == "ambiguous" and a.provider is None for a in view.attempts)
        assert [e.type for e in view.events].count("sent") == 1
    await store.close()
