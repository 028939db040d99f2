"""An API whose PostgreSQL is gone answers 503 promptly, not 500 and not a hang."""

from __future__ import annotations

import socket

import httpx

from mailgate.api import create_app
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Store
from tests.helpers import message


async def test_no_database_means_503() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    settings = Settings(database={"url": f"postgresql://mailgate@127.0.0.1:{port}/mailgate"})
    store = Store(settings.database)
    app = create_app(settings, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        headers={"Authorization": "Bearer mg_whatever"},
    ) as client:
        sent = await client.post("/v1/messages", json=message())
        assert sent.status_code == 503
        assert sent.json()["error"]["code"] == "unavailable"
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    await store.close()
