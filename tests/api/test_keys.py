"""Scoped keys: made, listed and revoked by `manage` keys of their tenant, or by admins."""

from __future__ import annotations

import httpx
import pytest

from mailgate.api.tenant_schemas import KeyCreated, KeyList, MeOut
from tests.api.test_tenants import admin, error, key_for, new_tenant
from tests.helpers import message

__all__ = ["admin"]  # the fixture, shared


async def test_a_manage_key_runs_its_tenants_keys(admin: httpx.AsyncClient) -> None:
    shop = await new_tenant(admin)
    manager = await key_for(admin, shop["id"], "manage")
    made = await manager.post("/v1/keys", json={"name": "web", "scopes": ["send", "read"]})
    assert made.status_code == 201
    body = made.json()
    KeyCreated.model_validate(body)
    assert body["tenant_id"] == shop["id"] and body["scopes"] == ["send", "read"]
    assert body["key"].startswith("mg_") and body["key"].startswith(body["prefix"])
    listed = (await manager.get("/v1/keys")).json()
    KeyList.model_validate(listed)
    assert listed["data"][0]["id"] == body["id"]
    assert all("key" not in k for k in listed["data"])  # the secret was shown once
    assert {k["tenant_id"] for k in listed["data"]} == {shop["id"]}

    web = httpx.AsyncClient(
        transport=admin._transport,
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {body['key']}"},
    )
    assert (await web.post("/v1/messages", json=message())).status_code == 202
    me = (await web.get("/v1/me")).json()
    MeOut.model_validate(me)
    assert me["key"]["id"] == body["id"] and me["tenant"]["id"] == shop["id"]
    forbidden = await web.get("/v1/keys")
    assert forbidden.status_code == 403 and error(forbidden)["code"] == "forbidden"

    revoked = await manager.post(f"/v1/keys/{body['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await web.get("/v1/me")).status_code == 401  # at once, in this process
    again = await manager.post(f"/v1/keys/{body['id']}/revoke")
    assert again.status_code == 404


async def test_a_manage_key_cannot_reach_further(admin: httpx.AsyncClient) -> None:
    shop = await new_tenant(admin)
    manager = await key_for(admin, shop["id"], "manage")
    escalate = await manager.post("/v1/keys", json={"name": "x", "scopes": ["admin"]})
    assert escalate.status_code == 403 and error(escalate)["field"] == "scopes"
    elsewhere = await manager.post(
        "/v1/keys", json={"name": "x", "scopes": ["send"], "tenant_id": "default"}
    )
    assert elsewhere.status_code == 404 and error(elsewhere)["field"] == "tenant_id"
    mine = (await admin.get("/v1/me")).json()["key"]["id"]
    assert (await manager.post(f"/v1/keys/{mine}/revoke")).status_code == 404
    listing = await manager.get("/v1/keys", params={"tenant": "default"})
    assert listing.status_code == 403 and error(listing)["field"] == "tenant"
    assert (await admin.get("/v1/me")).status_code == 200


async def test_an_admin_key_works_on_every_tenant(admin: httpx.AsyncClient) -> None:
    shop = await new_tenant(admin)
    made = await admin.post(
        "/v1/keys", json={"name": "ops", "scopes": ["admin"], "tenant_id": shop["id"]}
    )
    assert made.status_code == 201 and made.json()["tenant_id"] == shop["id"]
    every = (await admin.get("/v1/keys", params={"tenant": "*"})).json()["data"]
    assert {k["tenant_id"] for k in every} == {"default", shop["id"]}
    theirs = (await admin.get("/v1/keys", params={"tenant": shop["id"]})).json()["data"]
    assert [k["id"] for k in theirs] == [made.json()["id"]]
    mine = (await admin.get("/v1/keys")).json()["data"]
    assert {k["tenant_id"] for k in mine} == {"default"}
    assert (await admin.post(f"/v1/keys/{made.json()['id']}/revoke")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"name": "a\r\nb", "scopes": ["send"]}, "name"),
        ({"name": "x", "scopes": ["send"], "expires": "never"}, "expires"),
        ({"name": "x", "scopes": ["send"], "tenant_id": "ten_missing"}, "tenant_id"),
    ],
)
async def test_bad_keys_are_refused(
    admin: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await admin.post("/v1/keys", json=body)
    assert response.status_code in (400, 404), response.text
    assert error(response)["field"] == field
    assert len((await admin.get("/v1/keys")).json()["data"]) == 1


async def test_the_key_is_taken_from_the_authorization_header_only(
    admin: httpx.AsyncClient, api_key: str
) -> None:
    bare = httpx.AsyncClient(transport=admin._transport, base_url="http://mailgate.test")
    for response in (
        await bare.get("/v1/me", params={"api_key": api_key}),
        await bare.get("/v1/me", params={"key": api_key}),
        await bare.get("/v1/me", headers={"X-Api-Key": api_key}),
        await bare.get("/v1/me", headers={"Cookie": f"mailgate_key={api_key}"}),
        await bare.get("/v1/me", headers={"Authorization": f"Basic {api_key}"}),
        await bare.get("/v1/me", headers={"Authorization": api_key}),
    ):
        assert response.status_code == 401, response.text
        assert error(response)["field"] == "Authorization"
        assert api_key not in response.text
