"""The send routes answered in front of FastAPI (`mailgate.api.sendpath`) answer exactly as
the framework's routes for them do: same statuses, same JSON, same refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mailgate.api.app import create_app
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Store
from tests.helpers import message

BOTH = ("/v1/messages", "/v1/messages/batch")


@pytest.fixture
async def framework(
    settings: Settings, store: Store, metrics: Metrics, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The same API, reached under a root path: the send routes go FastAPI's way."""
    app = create_app(settings, store, metrics)
    transport = httpx.ASGITransport(app=app, root_path="/mail")
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://mailgate.test/mail",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        yield client


def _comparable(body: Any) -> Any:
    """An answer without what differs between two stores of the same message."""
    if isinstance(body, dict):
        kept = {k: v for k, v in body.items() if k not in {"id", "at"} and not k.endswith("_at")}
        return {k: _comparable(v) for k, v in kept.items()}
    if isinstance(body, list):
        return [_comparable(v) for v in body]
    return body


CASES: list[tuple[str, dict[str, str], Any]] = [
    ("/v1/messages", {}, message(tags=["t"])),
    ("/v1/messages", {}, {"from": "ada@example.com"}),
    ("/v1/messages", {}, message(subject="a\r\nBcc: eve@example.com")),
    ("/v1/messages", {"Authorization": "Bearer nope"}, message()),
    ("/v1/messages", {"Authorization": "Basic x"}, message()),
    ("/v1/messages", {"Idempotency-Key": "k\x01"}, message()),
    ("/v1/messages/batch", {}, {"messages": [message(), {"to": []}]}),
    ("/v1/messages/batch", {}, {"messages": []}),
    ("/v1/messages/batch", {}, [1, 2]),
]


@pytest.mark.parametrize(("path", "headers", "body"), CASES)
async def test_both_ways_answer_alike(
    client: httpx.AsyncClient,
    framework: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    body: Any,
) -> None:
    fast = await client.post(path, json=body, headers=headers)
    slow = await framework.post(path, json=body, headers=headers)
    assert fast.status_code == slow.status_code
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert _comparable(fast.json()) == _comparable(slow.json())


async def test_an_idempotent_repeat_answers_the_original_both_ways(
    client: httpx.AsyncClient, framework: httpx.AsyncClient
) -> None:
    first = await client.post("/v1/messages", json=message(), headers={"Idempotency-Key": "a"})
    again = await framework.post("/v1/messages", json=message(), headers={"Idempotency-Key": "a"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("path", BOTH)
async def test_a_bug_answers_500_in_the_error_shape(
    client: httpx.AsyncClient, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    app = client._transport.app  # type: ignore[attr-defined]
    acceptor = app.state.ctx.acceptor
    monkeypatch.setattr(acceptor, "accept", broken)
    monkeypatch.setattr(acceptor, "accept_batch", broken)
    body = message() if path == "/v1/messages" else {"messages": [message()]}
    answer = await client.post(path, json=body)
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {"code": "internal_error", "message": "internal error", "field": None}
    }


async def test_other_methods_and_paths_go_to_the_framework(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/messages")).status_code == 200
    assert (await client.put("/v1/messages", json=message())).status_code == 405
    assert (await client.post("/v1/messages/", json=message())).status_code in (307, 404)
