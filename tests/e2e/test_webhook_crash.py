"""Webhooks survive a receiver that is down and a worker killed with -9: every event arrives."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailgate.config import DatabaseSettings
from mailgate.serving import serve_asgi
from mailgate.store import Store
from tests.e2e.processes import mailgate, write_config
from tests.helpers import Fakes, eventually, new_message

pytestmark = pytest.mark.slow

MESSAGES = 300


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, str]] = []  # (webhook-id, type, message id), in arrival
        self.latency = 0.0

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        await asyncio.sleep(self.latency)
        self.got.append((request.headers["webhook-id"], body["type"], body["data"]["message_id"]))
        return Response(status_code=204)

    def unique(self) -> set[str]:
        return {event_id for event_id, _, _ in self.got}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    found = Store(DatabaseSettings(url=f"sqlite:///{tmp_path}/hooks.db"))
    await found.migrate()
    yield found
    await found.close()


async def test_a_down_receiver_and_killed_workers_lose_no_event(
    tmp_path: Path, fakes: Fakes, store: Store
) -> None:
    port = free_port()  # nobody listens there yet: the receiver is down
    config = write_config(
        tmp_path / "mailgate.toml", str(store.db.settings.url), fakes.providers(),
        concurrency=50, lease_seconds=1.5, poll_interval_seconds=0.05,
    )  # fmt: skip
    with config.open("a") as f:
        f.write(
            "[webhooks]\ntimeout_seconds = 0.5\nretry_initial_seconds = 0.1\n"
            "retry_max_seconds = 0.5\nconcurrency = 20\n"
        )
    await store.create_webhook("default", f"http://127.0.0.1:{port}/hook", ["*"])
    items = [new_message() for _ in range(MESSAGES)]
    await store.accept_many(items)
    ids = {item.id for item in items}

    # The receiver is down: the worker sends the mail and fails every webhook try.
    async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:
        await eventually(lambda: fakes.total() >= MESSAGES, timeout=60)
        worker.kill()
        assert await worker.proc.wait() == -9

    receiver = Receiver()
    receiver.latency = 0.05  # deliveries are in flight when the next kill comes
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    async with serve_asgi(app, host="127.0.0.1", port=port):
        async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:
            await eventually(lambda: len(receiver.got) >= MESSAGES // 2, timeout=60)
            worker.kill()
            assert await worker.proc.wait() == -9
        receiver.latency = 0.0
        async with mailgate("worker", "--config", str(config), cwd=tmp_path) as worker:
            await eventually(lambda: len(receiver.unique()) >= 2 * MESSAGES, timeout=90)
            assert await worker.stop() == 0

    # Every event arrived: accepted and sent, for every message (at least once,
    # with the same webhook-id when twice), and per message in order.
    kinds = {(kind, message_id) for _, kind, message_id in receiver.got}
    assert kinds == {(k, i) for i in ids for k in ("message.accepted", "message.sent")}
    assert len(receiver.unique()) == 2 * MESSAGES
    first: dict[tuple[str, str], int] = {}
    for n, (_, kind, message_id) in enumerate(receiver.got):
        first.setdefault((kind, message_id), n)
    assert all(first[("message.accepted", i)] < first[("message.sent", i)] for i in ids)
