"""`POST /v1/messages` and `/batch`: accepted means stored; refused means nothing stored."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailgate.api.schemas import BatchOut, MessageOut
from mailgate.store import Store
from mailgate.store.tables import messages
from tests.helpers import message


async def stored(store: Store) -> int:
    query = select(func.count()).select_from(messages)
    return int(await store.db.read(lambda conn: conn.execute(query).scalar_one()))


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    return dict(body["error"])


async def test_accepted_means_committed(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.post(
        "/v1/messages", json=message(tags=["welcome"], metadata={"u": "1"})
    )
    assert response.status_code == 202
    body = response.json()
    MessageOut.model_validate(body)
    assert body["status"] == "queued" and body["id"].startswith("msg_")
    assert body["from"] == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert body["to"] == [{"email": "bob@example.org"}]
    assert body["tags"] == ["welcome"] and body["metadata"] == {"u": "1"}
    assert [e["type"] for e in body["events"]] == ["accepted"]
    assert body["created_at"].endswith("Z")
    view = await store.get_message("default", body["id"])
    assert view.status == "queued"
    again = await client.get(f"/v1/messages/{body['id']}")
    assert again.json()["subject"] == "Hello"


async def test_scheduled(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json=message(send_at="2099-01-01T00:00:00Z"))
    assert response.status_code == 400  # more than 366 days ahead
    response = await client.post("/v1/messages", json=message(send_at="2030-01-01T00:00:00+01:00"))
    assert response.status_code == 400
    assert error_of(response)["field"] == "send_at"


async def test_scheduled_soon(client: httpx.AsyncClient) -> None:
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    response = await client.post("/v1/messages", json=message(send_at=when))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "scheduled" and body["send_at"] is not None
    assert body["events"][0]["type"] == "scheduled"


async def test_an_idempotent_repeat_returns_the_original(
    client: httpx.AsyncClient, store: Store
) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await client.post("/v1/messages", json=message(), headers=headers)
    # The same body, keys in another order and other whitespace, is the same request.
    same = json.dumps(dict(reversed(list(message().items()))), indent=4)
    repeat = await client.post(
        "/v1/messages", content=same, headers=headers | {"Content-Type": "application/json"}
    )
    assert (first.status_code, repeat.status_code) == (202, 200)
    assert repeat.json()["id"] == first.json()["id"]
    changed = await client.post("/v1/messages", json=message(subject="Other"), headers=headers)
    assert changed.status_code == 409
    assert error_of(changed) | {"message": ""} == {
        "code": "idempotency_mismatch",
        "message": "",
        "field": "Idempotency-Key",
    }
    assert await stored(store) == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{not json", 400, "invalid_request", "body"),
        (b"[1, 2]", 400, "invalid_request", "body"),
        (b"", 400, "invalid_request", "body"),
        (json.dumps(message(to=None)).encode(), 400, "invalid_request", "to"),
        (json.dumps(message(subject=None)).encode(), 400, "invalid_request", "subject"),
        (json.dumps(message(text=None)).encode(), 400, "invalid_request", "text"),
        (json.dumps(message(to="nobody")).encode(), 400, "invalid_request", "to[0]"),
        (
            json.dumps(message(subject="Hi\r\nBcc: x@example.org")).encode(),
            400,
            "invalid_request",
            "subject",
        ),
        (
            json.dumps(message(headers={"X-A": "b\nc"})).encode(),
            400,
            "invalid_request",
            "headers.X-A",
        ),
        (
            json.dumps(message(cc=[f"c{i}@example.org" for i in range(51)])).encode(),
            400,
            "invalid_request",
            "cc",
        ),
        (json.dumps(message(provider="nope")).encode(), 400, "invalid_request", "provider"),
        (json.dumps(message(unknown=1)).encode(), 400, "invalid_request", "unknown"),
        (
            json.dumps(message(text="x" * (10 * 1024 * 1024 + 1))).encode(),
            413,
            "payload_too_large",
            "text",
        ),
    ],
)
async def test_bad_input_is_refused_and_nothing_stored(
    client: httpx.AsyncClient, store: Store, body: bytes, status: int, code: str, field: str
) -> None:
    await client.post("/v1/messages", json=message())  # something accepted before
    response = await client.post(
        "/v1/messages", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
    assert await stored(store) == 1


async def test_attachments_over_25_mb_are_refused(client: httpx.AsyncClient, store: Store) -> None:
    content = base64.b64encode(b"\0" * (13 * 1024 * 1024)).decode()
    files = [{"filename": f"f{i}.bin", "content": content} for i in range(2)]
    response = await client.post("/v1/messages", json=message(attachments=files))
    assert response.status_code == 413
    assert error_of(response)["field"] == "attachments"
    assert await stored(store) == 0


async def test_a_body_over_the_request_limit_is_refused_unread(client: httpx.AsyncClient) -> None:
    huge = b"x" * (64 * 1024 * 1024 + 1)
    response = await client.post(
        "/v1/messages", content=huge, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response) == {
        "code": "payload_too_large",
        "message": "the request body is larger than 67108864 bytes",
        "field": "body",
    }


async def test_a_chunked_body_over_the_limit_is_cut_off(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(70):
            yield b"x" * (1024 * 1024)

    response = await client.post(
        "/v1/messages", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
async def test_unknown_keys_are_refused(
    client: httpx.AsyncClient, store: Store, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    client.headers.pop("Authorization")
    response = await client.post("/v1/messages", json=message(), headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    assert error_of(response)["field"] == "Authorization"
    assert await stored(store) == 0


async def test_a_revoked_key_stops_working(client: httpx.AsyncClient, store: Store) -> None:
    key, secret = await store.create_key("temp", tenant_id="default")
    await store.revoke_key(key.id)
    response = await client.post(
        "/v1/messages", json=message(), headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 401


async def test_batch_accepts_the_valid_ones(client: httpx.AsyncClient, store: Store) -> None:
    batch = {
        "messages": [message(), message(to="bad"), message(subject="two"), {"to": "x@example.org"}]
    }
    response = await client.post("/v1/messages/batch", json=batch)
    assert response.status_code == 200
    body = response.json()
    BatchOut.model_validate(body)
    data = body["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert data[0]["id"].startswith("msg_") and data[0]["status"] == "queued"
    assert data[1]["error"]["field"] == "to[0]"
    assert data[2]["id"].startswith("msg_")
    assert data[3]["error"]["field"] in ("from", "subject")
    assert await stored(store) == 2


async def test_batch_limits(client: httpx.AsyncClient) -> None:
    too_many = {"messages": [message()] * 1001}
    response = await client.post("/v1/messages/batch", json=too_many)
    assert response.status_code == 400 and error_of(response)["field"] == "messages"
    empty = await client.post("/v1/messages/batch", json={"messages": []})
    assert empty.status_code == 400


async def test_a_full_batch(client: httpx.AsyncClient, store: Store) -> None:
    batch = {"messages": [message(subject=f"n{i}") for i in range(1000)]}
    response = await client.post("/v1/messages/batch", json=batch)
    assert response.status_code == 200
    assert all("id" in d for d in response.json()["data"])
    assert await stored(store) == 1000


async def test_batch_idempotency_applies_per_item(client: httpx.AsyncClient, store: Store) -> None:
    headers = {"Idempotency-Key": "import-9"}
    batch = {"messages": [message(subject="a"), message(subject="b")]}
    first = (await client.post("/v1/messages/batch", json=batch, headers=headers)).json()["data"]
    again = (await client.post("/v1/messages/batch", json=batch, headers=headers)).json()["data"]
    assert [d["id"] for d in first] == [d["id"] for d in again]
    changed = {"messages": [message(subject="a"), message(subject="changed")]}
    third = (await client.post("/v1/messages/batch", json=changed, headers=headers)).json()["data"]
    assert third[0]["id"] == first[0]["id"]
    assert third[1]["error"]["code"] == "idempotency_mismatch"
    assert await stored(store) == 2
