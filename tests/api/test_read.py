"""Reading, listing, cancelling and retrying messages; providers; health and metrics."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import httpx
import pytest

from mailgate.api.schemas import MessageList, MessageOut, ProviderList, ProviderOut
from mailgate.config import Settings
from mailgate.message import Status, new_id
from mailgate.store import Finish, Store
from mailgate.store.engine import sqlite_path
from tests.helpers import message


async def send(client: httpx.AsyncClient, **fields: object) -> str:
    response = await client.post("/v1/messages", json=message(**fields))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"/v1/messages/{new_id('msg')}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    malformed = await client.get("/v1/messages/not-an-id")
    assert malformed.status_code == 400 and malformed.json()["error"]["field"] == "id"


async def test_list_filters_and_pages(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        ids.append(
            await send(client, tags=["even" if i % 2 == 0 else "odd"], to=f"user{i}@example.org")
        )
        await asyncio.sleep(0.002)
    page = (await client.get("/v1/messages", params={"limit": 2})).json()
    MessageList.model_validate(page)
    assert [m["id"] for m in page["data"]] == ids[::-1][:2]
    assert "attempts" not in page["data"][0]
    rest = (
        await client.get("/v1/messages", params={"limit": 10, "cursor": page["next_cursor"]})
    ).json()
    assert [m["id"] for m in rest["data"]] == ids[::-1][2:] and rest["next_cursor"] is None
    even = (await client.get("/v1/messages", params={"tag": "even"})).json()
    assert [m["id"] for m in even["data"]] == [ids[4], ids[2], ids[0]]
    to = (await client.get("/v1/messages", params={"to": "USER3@example.org"})).json()
    assert [m["id"] for m in to["data"]] == [ids[3]]
    queued = (await client.get("/v1/messages", params={"status": "queued"})).json()
    assert len(queued["data"]) == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "lost"}, "status"),
        ({"cursor": "x"}, "cursor"),
    ],
)
async def test_list_refuses_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str | int], field: str
) -> None:
    response = await client.get("/v1/messages", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


async def test_cancel(client: httpx.AsyncClient) -> None:
    message_id = await send(client)
    response = await client.post(f"/v1/messages/{message_id}/cancel")
    assert response.status_code == 200
    body = response.json()
    MessageOut.model_validate(body)
    assert body["status"] == "cancelled" and body["events"][-1]["type"] == "cancelled"
    again = await client.post(f"/v1/messages/{message_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "conflict",
        "message": "message is cancelled; only queued or scheduled messages can be cancelled",
        "field": "status",
    }
    assert (await client.post(f"/v1/messages/{new_id('msg')}/cancel")).status_code == 404


async def test_retry_a_failed_message(client: httpx.AsyncClient, store: Store) -> None:
    message_id = await send(client)
    assert (await client.post(f"/v1/messages/{message_id}/retry")).status_code == 409
    await store.claim("w", limit=1, lease_seconds=30)
    await store.finish(
        Finish(
            message_id=message_id,
            lease_owner="w",
            status=Status.FAILED,
            rounds=1,
            last_error="boom",
        )
    )
    failed = (await client.get(f"/v1/messages/{message_id}")).json()
    assert failed["status"] == "failed" and failed["last_error"] == "boom"
    response = await client.post(f"/v1/messages/{message_id}/retry")
    assert response.status_code == 200
    assert (
        response.json()["status"] == "queued" and response.json()["events"][-1]["type"] == "retried"
    )


async def test_providers_list_and_switches(client: httpx.AsyncClient, settings: Settings) -> None:
    listed = (await client.get("/v1/providers")).json()
    ProviderList.model_validate(listed)
    assert [(p["name"], p["type"], p["enabled"]) for p in listed["data"]] == [
        ("primary", "sendgrid", True),
        ("backup", "mailgun", True),
    ]
    first = listed["data"][0]
    assert first["breaker"]["state"] == "closed" and first["success_rate"] is None
    assert first["simulated_failure"] == "off"

    disabled = await client.post("/v1/providers/primary/disable")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    ProviderOut.model_validate(disabled.json())
    enabled = await client.post("/v1/providers/primary/enable")
    assert enabled.json()["enabled"] is True

    drill = await client.post("/v1/providers/backup/simulate-failure", json={"mode": "timeout"})
    assert drill.json()["simulated_failure"] == "timeout"
    bad = await client.post("/v1/providers/backup/simulate-failure", json={"mode": "chaos"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "mode"
    unknown = await client.post("/v1/providers/nope/disable")
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "name"
    assert (await client.get("/v1/providers/backup")).json()["simulated_failure"] == "timeout"


async def test_health_and_metrics_need_no_key(client: httpx.AsyncClient) -> None:
    await send(client)
    client.headers.pop("Authorization")
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    metrics = (await client.get("/metrics")).text
    assert "mailgate_messages_accepted_total 1.0" in metrics
    assert 'mailgate_queue_depth{status="queued"} 1.0' in metrics
    assert "mailgate_accept_duration_seconds_bucket" in metrics
    assert (await client.get("/v1/messages")).status_code == 401


async def test_unknown_routes_answer_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = await client.delete("/v1/messages")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


async def test_a_store_that_cannot_commit_answers_503(
    client: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    path = sqlite_path(settings.database.url)
    if path is None:
        pytest.skip("holding the database lock from outside is a SQLite drill")
    before = await send(client)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = await client.post("/v1/messages", json=message(subject="during the outage"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"] == "1"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    listed = (await client.get("/v1/messages")).json()["data"]
    assert [m["id"] for m in listed] == [before]
    assert (await client.get("/readyz")).status_code == 200


async def test_the_openapi_document_describes_every_body(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    send = doc["paths"]["/v1/messages"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessageIn"
    }
    assert {"name", "in"} <= set(send["parameters"][0]) and send["parameters"][0]["in"] == "header"
    assert {"from", "to", "subject", "attachments"} <= set(schemas["MessageIn"]["properties"])
    refs: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/messages?tag=a%00b", "tag"),
        ("/v1/messages?to=a%00b@example.org", "to"),
        ("/v1/messages?tenant=a%00b", "tenant"),
        ("/v1/tenants/a%00b", "tenant_id"),
        ("/v1/audit?cursor=9223372036854775808", "cursor"),
    ],
)
async def test_values_no_store_could_keep_are_refused_at_the_door(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


async def _fail(store: Store, *ids: str) -> None:
    for message_id in ids:
        [claimed] = await store.claim("w", limit=1, lease_seconds=30)
        assert claimed.id == message_id
        await store.finish(
            Finish(
                message_id=message_id,
                lease_owner="w",
                status=Status.FAILED,
                rounds=1,
                provider="primary" if message_id != ids[-1] else "backup",
                last_error="boom",
            )
        )


async def test_bulk_retry_counts_first_then_retries_in_one_request(
    client: httpx.AsyncClient, store: Store
) -> None:
    ids = [await send(client, tags=["receipts"]) for _ in range(3)]
    other = await send(client, tags=["news"])
    await _fail(store, *ids)
    waiting = await send(client, tags=["receipts"])  # queued, not failed: never retried

    dry = await client.post("/v1/messages/retry", json={"tag": "receipts", "dry_run": True})
    assert dry.status_code == 200 and dry.json() == {"matched": 3, "retried": 0}
    assert (await client.get(f"/v1/messages/{ids[0]}")).json()["status"] == "failed"
    by_provider = await client.post(
        "/v1/messages/retry", json={"provider": "backup", "dry_run": True}
    )
    assert by_provider.json()["matched"] == 1

    done = await client.post("/v1/messages/retry", json={"status": "failed", "tag": "receipts"})
    assert done.json() == {"matched": 3, "retried": 3}
    for message_id in ids:
        view = (await client.get(f"/v1/messages/{message_id}")).json()
        assert view["status"] == "queued" and view["events"][-1]["type"] == "retried"
    assert (await client.get(f"/v1/messages/{other}")).json()["status"] == "queued"
    assert (await client.get(f"/v1/messages/{waiting}")).json()["events"][-1]["type"] != "retried"
    again = await client.post("/v1/messages/retry", json={"tag": "receipts"})
    assert again.json() == {"matched": 0, "retried": 0}

    [record, *_] = (await client.get("/v1/audit")).json()["data"]
    assert record["action"] == "messages.retry" and record["target"] == "bulk"
    assert record["detail"] == {"status": "failed", "tag": "receipts", "matched": 3, "retried": 3}


async def test_bulk_retry_and_list_by_time_range(client: httpx.AsyncClient, store: Store) -> None:
    early = await send(client)
    await asyncio.sleep(0.01)
    middle_from = datetime.now(UTC)
    middle = await send(client)
    await asyncio.sleep(0.01)
    late_from = datetime.now(UTC)
    late = await send(client)
    await _fail(store, early, middle, late)
    window = {"since": middle_from.isoformat(), "until": late_from.isoformat()}
    listed = (await client.get("/v1/messages", params=window)).json()["data"]
    assert [m["id"] for m in listed] == [middle]
    since = (await client.get("/v1/messages", params={"since": middle_from.isoformat()})).json()
    assert [m["id"] for m in since["data"]] == [late, middle]
    by_provider = (await client.get("/v1/messages", params={"provider": "backup"})).json()
    assert [m["id"] for m in by_provider["data"]] == [late]
    done = await client.post("/v1/messages/retry", json=window)
    assert done.json() == {"matched": 1, "retried": 1}
    assert (await client.get(f"/v1/messages/{middle}")).json()["status"] == "queued"
    assert (await client.get(f"/v1/messages/{early}")).json()["status"] == "failed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "sent"}, "status"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"tag": "a\nb"}, "tag"),
        ({"dry_run": "maybe"}, "dry_run"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bulk_retry_refuses_bad_filters(
    client: httpx.AsyncClient, body: dict[str, str], field: str
) -> None:
    response = await client.post("/v1/messages/retry", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
