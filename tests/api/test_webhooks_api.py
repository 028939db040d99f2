"""`/v1/webhooks` and `/v1/suppressions` over HTTP: shapes, validation, the secret shown once."""

from __future__ import annotations

import httpx
import pytest

from mailgate.api import create_app
from mailgate.api.suppressions import SuppressionList
from mailgate.api.webhooks import DeliveryList, WebhookList, WebhookOut
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Store


def field_of(response: httpx.Response) -> str | None:
    assert 400 <= response.status_code < 500, response.text
    field: str | None = response.json()["error"]["field"]
    return field


async def test_an_endpoint_is_made_listed_changed_and_removed(client: httpx.AsyncClient) -> None:
    made = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/mailgate", "events": ["message.bounced"]},
    )
    assert made.status_code == 201, made.text
    body = made.json()
    WebhookOut.model_validate(body)
    assert body["secret"].startswith("whsec_") and body["enabled"] is True
    listed = (await client.get("/v1/webhooks")).json()
    WebhookList.model_validate(listed)
    assert [w["id"] for w in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0]  # shown once
    one = (await client.get(f"/v1/webhooks/{body['id']}")).json()
    assert "secret" not in one and one["events"] == ["message.bounced"]

    changed = await client.patch(
        f"/v1/webhooks/{body['id']}", json={"events": ["*"], "enabled": False}
    )
    assert changed.status_code == 200 and changed.json()["events"] == ["*"]
    assert changed.json()["enabled"] is False

    test = await client.post(f"/v1/webhooks/{body['id']}/test")
    assert test.status_code == 202
    deliveries = (await client.get(f"/v1/webhooks/{body['id']}/deliveries")).json()
    DeliveryList.model_validate(deliveries)
    [d] = deliveries["data"]
    assert (d["id"], d["event_type"], d["status"]) == (
        test.json()["delivery_id"],
        "webhook.test",
        "pending",
    )
    retried = await client.post(f"/v1/webhooks/{body['id']}/deliveries/{d['id']}/retry")
    assert retried.status_code == 202
    assert (await client.delete(f"/v1/webhooks/{body['id']}")).status_code == 204
    assert (await client.get(f"/v1/webhooks/{body['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "url"),
        ({"url": "https://hooks.example.com/\r\nX-Evil: 1"}, "url"),
        ({"url": "https://hooks.example.com/x", "events": ["message.nope"]}, "events"),
        ({"url": "https://hooks.example.com/x", "events": []}, "events"),
        ({"url": "https://hooks.example.com/x", "secret": "mine"}, "secret"),
        ({"events": ["*"]}, "url"),
    ],
)
async def test_bad_endpoints_are_refused_with_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    assert field_of(await client.post("/v1/webhooks", json=body)) == field
    assert (await client.get("/v1/webhooks")).json()["data"] == []


async def test_private_addresses_can_be_refused_at_creation(
    settings: Settings, store: Store, api_key: str
) -> None:
    blocking = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"block_private_addresses": True})}
    )
    app = create_app(blocking, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        for url in (
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost/x",
        ):
            response = await client.post("/v1/webhooks", json={"url": url})
            assert field_of(response) == "url", url
        assert (await client.get("/v1/webhooks")).json()["data"] == []


async def test_suppressions_over_http(client: httpx.AsyncClient) -> None:
    added = await client.post("/v1/suppressions", json={"email": "Someone@Example.org"})
    assert added.status_code == 201 and added.json()["email"] == "someone@example.org"
    again = await client.post("/v1/suppressions", json={"email": "someone@example.org"})
    assert again.status_code == 409
    for i in range(3):
        await client.post(
            "/v1/suppressions", json={"email": f"u{i}@example.org", "reason": "unsubscribe"}
        )
    page = (await client.get("/v1/suppressions", params={"limit": 2})).json()
    SuppressionList.model_validate(page)
    rest = (await client.get("/v1/suppressions", params={"cursor": page["next_cursor"]})).json()
    emails = [s["email"] for s in page["data"] + rest["data"]]
    assert sorted(emails) == sorted(["someone@example.org", "u0@example.org", "u1@example.org",
                                     "u2@example.org"])  # fmt: skip
    only = (await client.get("/v1/suppressions", params={"reason": "manual"})).json()["data"]
    assert [s["email"] for s in only] == ["someone@example.org"]
    one = await client.get("/v1/suppressions/SOMEONE@example.org")
    assert one.status_code == 200 and one.json()["reason"] == "manual"
    assert (await client.delete("/v1/suppressions/someone@example.org")).status_code == 204
    assert (await client.get("/v1/suppressions/someone@example.org")).status_code == 404
    assert field_of(await client.post("/v1/suppressions", json={"email": "a\r\nb@x.org"})) == (
        "email"
    )
    assert field_of(await client.get("/v1/suppressions", params={"cursor": "zz"})) == "cursor"
    bad_reason = await client.post(
        "/v1/suppressions", json={"email": "x@example.org", "reason": "because"}
    )
    assert field_of(bad_reason) == "reason"
