"""Webhooks to the tenants' endpoints: signed, retried, in order, given up, never lost.

A real receiver on loopback (uvicorn) takes them; its signatures are
checked with the `standardwebhooks` package, an independent verifier.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailgate.message import Address
from mailgate.serving import serve_asgi
from mailgate.store.tables import audit_log
from tests.delivery.conftest import Run
from tests.helpers import eventually, new_message

FAST = {
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "timeout_seconds": 2,
}


@dataclass
class Receiver:
    """An endpoint that records what it got and answers `statuses` in turn (then 200)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        status = self.statuses.pop(0) if self.statuses else 200
        self.answered.append(status)
        if status < 300:
            self.got.append((dict(request.headers), body))
        return Response(status_code=status)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = Starlette(routes=[Route("/hook", found.handle, methods=["POST"])])
    async with serve_asgi(app, host="127.0.0.1", port=0) as server:
        found.url = f"{server.url}/hook"
        yield found


async def test_events_arrive_signed_in_order(run: Run, receiver: Receiver) -> None:
    h = await run(webhooks=FAST)
    endpoint = await h.store.create_webhook("default", receiver.url, ["*"])
    message_id = await h.send()
    await eventually(lambda: len(receiver.got) >= 2, timeout=10)
    verifier = Webhook(endpoint.secret)
    for headers, body in receiver.got:
        verifier.verify(body, headers)  # raises when the signature does not match
    events = receiver.events()
    assert [e["type"] for e in events] == ["message.accepted", "message.sent"]
    assert {e["data"]["message_id"] for e in events} == {message_id}
    assert events[1]["data"]["status"] == "sent"
    assert events[1]["data"]["event"]["provider"] == "primary"
    ids = [headers["webhook-id"] for headers, _ in receiver.got]
    assert len(set(ids)) == 2 and all(i.startswith("evt_") for i in ids)


async def test_only_subscribed_types_and_only_the_tenants_own(run: Run, receiver: Receiver) -> None:
    h = await run(webhooks=FAST)
    await h.store.create_webhook("default", receiver.url, ["message.sent"])
    other = await h.store.create_webhook("someone-else", receiver.url + "?other", ["*"])
    await h.wait(await h.send())
    await eventually(lambda: len(receiver.got) >= 1, timeout=10)
    await h.wait(await h.send())
    await eventually(lambda: len(receiver.got) >= 2, timeout=10)
    assert [e["type"] for e in receiver.events()] == ["message.sent", "message.sent"]
    assert not await h.store.webhook_deliveries(None, other.id, limit=10)


async def test_a_failing_receiver_gets_the_event_once_after_four_tries(
    run: Run, receiver: Receiver
) -> None:
    h = await run(webhooks=FAST)
    endpoint = await h.store.create_webhook("default", receiver.url, ["webhook.test"])
    receiver.statuses = [500, 500, 500]
    delivery_id = await h.store.test_webhook("default", endpoint.id)

    async def delivered() -> bool:
        [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
        return d.status == "delivered"

    await eventually(delivered, timeout=10)
    [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
    assert d.id == delivery_id and d.tries == 4
    assert [t.status_code for t in d.attempts] == [500, 500, 500, 200]
    assert [e["type"] for e in receiver.events()] == ["webhook.test"]  # once, as a success
    assert receiver.answered == [500, 500, 500, 200]


async def test_a_later_event_waits_for_an_earlier_one_of_the_same_message(
    run: Run, receiver: Receiver
) -> None:
    h = await run(webhooks=FAST)
    await h.store.create_webhook("default", receiver.url, ["*"])
    receiver.statuses = [503] * 4  # `accepted` fails four times; `sent` is ready before it lands
    message_id = await h.send()
    await h.wait(message_id)
    await eventually(lambda: len(receiver.got) >= 2, timeout=10)
    assert [e["type"] for e in receiver.events()] == ["message.accepted", "message.sent"]


async def test_given_up_after_max_age_then_retried_by_hand(run: Run, receiver: Receiver) -> None:
    h = await run(webhooks=FAST | {"max_age_seconds": 0.3})
    endpoint = await h.store.create_webhook("default", receiver.url, ["webhook.test"])
    receiver.statuses = [500] * 1000
    delivery_id = await h.store.test_webhook("default", endpoint.id)

    async def given_up() -> bool:
        [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
        return d.status == "failed"

    await eventually(given_up, timeout=10)
    [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
    assert d.tries >= 2 and d.last_status_code == 500 and d.next_attempt_at is None
    assert len(d.attempts) == d.tries
    assert (await h.store.get_webhook("default", endpoint.id)).enabled

    receiver.statuses = []
    await h.store.retry_webhook_delivery("default", endpoint.id, delivery_id)
    await eventually(lambda: len(receiver.got) == 1, timeout=10)


async def test_an_endpoint_failing_too_long_is_disabled_and_keeps_its_events(
    run: Run, receiver: Receiver
) -> None:
    h = await run(webhooks=FAST | {"disable_after_seconds": 0.2})
    endpoint = await h.store.create_webhook("default", receiver.url, ["webhook.test"])
    receiver.statuses = [500] * 1000
    await h.store.test_webhook("default", endpoint.id)

    async def disabled() -> bool:
        return not (await h.store.get_webhook("default", endpoint.id)).enabled

    await eventually(disabled, timeout=10)
    found = await h.store.get_webhook("default", endpoint.id)
    assert found.disabled_reason is not None and "every try failed" in found.disabled_reason
    actions = await h.store.db.read(
        lambda conn: conn.execute(select(audit_log.c.action, audit_log.c.target)).all()
    )
    assert ("webhook.disable", endpoint.id) in [tuple(a) for a in actions]
    assert h.metric("mailgate_webhooks_disabled_total") == 1
    [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
    assert d.status == "pending"  # kept, not tried while the endpoint is off

    # Back on: what waited arrives.
    receiver.statuses = []
    await h.store.update_webhook("default", endpoint.id, enabled=True)
    await eventually(lambda: len(receiver.got) == 1, timeout=10)


async def test_private_addresses_can_be_blocked_at_delivery(run: Run, receiver: Receiver) -> None:
    h = await run(webhooks=FAST | {"block_private_addresses": True, "max_age_seconds": 0.2})
    endpoint = await h.store.create_webhook("default", receiver.url, ["webhook.test"])
    await h.store.test_webhook("default", endpoint.id)

    async def failed() -> bool:
        [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
        return d.status == "failed"

    await eventually(failed, timeout=10)
    [d] = await h.store.webhook_deliveries("default", endpoint.id, limit=10)
    assert d.last_error is not None and "not public" in d.last_error
    assert not receiver.answered


async def test_provider_events_and_suppressions_are_reported(run: Run, receiver: Receiver) -> None:
    from mailgate.events.inbound import EventKind, InboundEvent
    from mailgate.store import utcnow

    h = await run(webhooks=FAST)
    await h.store.create_webhook(
        "default", receiver.url, ["message.bounced", "message.suppressed", "message.failed"]
    )
    message_id = await h.send(to=(Address("gone@example.org"),))
    await h.wait(message_id)
    bounce = InboundEvent(
        EventKind.BOUNCED, "b1", "gone@example.org", utcnow(), message_id=message_id,
        bounce="hard", reason="550 no such user",
    )  # fmt: skip
    await h.store.record_provider_events("primary", [bounce])
    again = await h.send(to=(Address("gone@example.org"),))
    await h.wait(again)
    await eventually(lambda: len(receiver.got) >= 3, timeout=10)
    events = receiver.events()
    assert [e["type"] for e in events] == [
        "message.bounced",
        "message.suppressed",
        "message.failed",
    ]
    assert events[0]["data"]["status"] == "bounced"
    assert events[0]["data"]["recipient"] == "gone@example.org"
    assert events[0]["data"]["event"]["kind"] == "hard"
    assert events[1]["data"]["message_id"] == again


async def test_ten_thousand_events_to_one_endpoint_none_lost(run: Run, receiver: Receiver) -> None:
    h = await run(
        webhooks=FAST | {"concurrency": 100, "timeout_seconds": 10}, delivery={"concurrency": 200}
    )
    if not h.store.db.is_sqlite:
        pytest.skip("the count does not depend on the store; once is enough")
    await h.store.create_webhook("default", receiver.url, ["message.accepted", "message.sent"])
    ids: set[str] = set()
    for _ in range(5):
        batch = [new_message() for _ in range(1000)]
        await h.store.accept_many(batch)
        ids |= {m.id for m in batch}

    def unique() -> set[str]:
        return {headers["webhook-id"] for headers, _ in receiver.got}

    # At least once: a try that timed out after the receiver took it comes
    # again with the same webhook-id, which is what receivers dedupe on.
    await eventually(lambda: len(unique()) >= 10_000, timeout=240, interval=0.2)
    [endpoint] = await h.store.list_webhooks(tenant_id="default")
    deliveries: list[Any] = []

    async def recorded() -> bool:
        # The receiver has the last requests before their answers are written
        # back; compare counts once every delivery's try is on record.
        nonlocal deliveries
        deliveries = await h.store.webhook_deliveries("default", endpoint.id, limit=20_000)
        return len(deliveries) == 10_000 and all(d.status == "delivered" for d in deliveries)

    await eventually(recorded, timeout=60, interval=0.2)
    events = receiver.events()
    assert len(unique()) == 10_000
    retried = sum(d.tries for d in deliveries) - len(deliveries)
    assert len(receiver.got) - 10_000 <= retried  # a second copy only after a failed try
    assert {(e["type"], e["data"]["message_id"]) for e in events} == {
        (kind, i) for i in ids for kind in ("message.accepted", "message.sent")
    }


async def test_the_verification_example_in_the_docs(run: Run, receiver: Receiver) -> None:
    """docs/events.md's Python `verify` accepts our deliveries and refuses a changed one."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    code = re.search(r"```python\n(import base64.*?)```", text, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code[1], namespace)
    h = await run(webhooks=FAST)
    endpoint = await h.store.create_webhook("default", receiver.url, ["webhook.test"])
    await h.store.test_webhook("default", endpoint.id)
    await eventually(lambda: len(receiver.got) == 1, timeout=10)
    [(headers, body)] = receiver.got
    namespace["verify"](endpoint.secret, headers, body)
    with pytest.raises(ValueError, match="bad signature"):
        namespace["verify"](endpoint.secret, headers, body + b" ")
