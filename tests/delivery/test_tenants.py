"""Delivery follows the tenant: its providers only, and nothing while it is disabled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mailgate.store import Store
from tests.delivery.conftest import Run
from tests.helpers import Fakes, eventually, new_message, tenant


async def test_a_tenants_mail_goes_through_its_providers_only(
    run: Run, fakes: Fakes, store: Store
) -> None:
    backup_only = await store.create_tenant(tenant(providers=("backup",)))
    h = await run()
    await h.pool.refresh()  # the worker reads tenants every second; now, for the test
    theirs = [new_message(tenant_id=backup_only.id) for _ in range(5)]
    ours = [new_message() for _ in range(5)]
    await store.accept_many(theirs + ours)
    for item in theirs + ours:
        await eventually(_is(store, item.id, "sent"))
    assert len(fakes.mailgun.received) == 5 and len(fakes.sendgrid.received) == 5
    for item in theirs:
        view = await store.get_message(backup_only.id, item.id)
        assert view.provider == "backup"


async def test_a_forced_provider_the_tenant_may_not_use_fails(
    run: Run, fakes: Fakes, store: Store
) -> None:
    backup_only = await store.create_tenant(tenant(providers=("backup",)))
    h = await run()
    await h.pool.refresh()
    item = new_message(tenant_id=backup_only.id, forced_provider="primary")
    await store.accept(item)  # accepted before the tenant's rule changed, say
    await eventually(lambda: _status(store, item.id, "failed"))
    view = await store.get_message(None, item.id)
    assert "not one the tenant may use" in (view.last_error or "")
    assert fakes.total() == 0


async def test_no_configured_provider_for_the_tenant_defers(
    run: Run, fakes: Fakes, store: Store
) -> None:
    gone = await store.create_tenant(tenant(providers=("retired",)))
    h = await run()
    await h.pool.refresh()
    item = new_message(tenant_id=gone.id)
    await store.accept(item)
    await eventually(lambda: _has_event(store, item.id, "deferred"))
    view = await store.get_message(None, item.id)
    assert view.status in ("queued", "sending")
    assert "none of the tenant's providers (retired) is configured" in (view.last_error or "")
    assert fakes.total() == 0


async def test_a_disabled_tenants_mail_waits_and_then_goes(
    run: Run, fakes: Fakes, store: Store
) -> None:
    shop = await store.create_tenant(tenant())
    h = await run(start=False)
    queued = [new_message(tenant_id=shop.id) for _ in range(3)]
    await store.accept_many(queued)
    await store.update_tenant(shop.id, enabled=False)
    # A message claimed in the moment before the worker saw the switch is held too.
    racing = new_message(tenant_id=shop.id)
    await store.accept(racing)
    h.start()
    await h.pool.refresh()
    await eventually(lambda: _has_event(store, racing.id, "deferred"))
    await asyncio.sleep(0.3)  # several polls: nothing goes out
    assert fakes.total() == 0
    held = await store.get_message(None, racing.id)
    assert held.status == "queued" and held.last_error == "the tenant is disabled"

    await store.update_tenant(shop.id, enabled=True)
    h.worker.wake()
    for item in [*queued, racing]:  # the racing one at its recheck: not lost either
        await eventually(_is(store, item.id, "sent"))
    assert fakes.total() == 4


def _is(store: Store, message_id: str, status: str) -> Callable[[], Awaitable[bool]]:
    return lambda: _status(store, message_id, status)


async def _status(store: Store, message_id: str, status: str) -> bool:
    return (await store.get_message(None, message_id)).status == status


async def _has_event(store: Store, message_id: str, kind: str) -> bool:
    view = await store.get_message(None, message_id)
    return any(e.type == kind for e in view.events)
