"""Tenants: their rules on the accept path, disabling and enabling, quotas and rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailgate.api import create_app
from mailgate.api.ratelimit import TenantRateLimiter, window_of
from mailgate.api.tenant_schemas import TenantList, TenantOut
from mailgate.config import Settings
from mailgate.errors import RateLimited
from mailgate.message import rfc3339
from mailgate.metrics import Metrics
from mailgate.store import Store, utcnow
from mailgate.store.tables import HELD, audit_log, messages
from tests.helpers import message, tenant


@pytest.fixture
async def admin(
    settings: Settings, store: Store, metrics: Metrics, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the default tenant's admin key (the `client` fixture, by another name)."""
    app = create_app(settings, store, metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def key_for(admin: httpx.AsyncClient, tenant_id: str, *scopes: str) -> httpx.AsyncClient:
    """A client holding a new key of `tenant_id` with `scopes`, on the same app."""
    response = await admin.post(
        "/v1/keys", json={"name": "app", "scopes": list(scopes), "tenant_id": tenant_id}
    )
    assert response.status_code == 201, response.text
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=admin.app),  # type: ignore[attr-defined]
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {response.json()['key']}"},
    )


async def new_tenant(admin: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await admin.post("/v1/tenants", json={"name": tenant().name, **fields})
    assert response.status_code == 201, response.text
    TenantOut.model_validate(response.json())
    return dict(response.json())


def error(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


async def test_the_default_tenant_exists_and_owns_what_was_there(admin: httpx.AsyncClient) -> None:
    me = (await admin.get("/v1/me")).json()
    assert me["tenant"]["id"] == "default" and me["tenant"]["enabled"] is True
    assert me["key"]["scopes"] == ["send", "read", "manage", "admin"]
    sent = await admin.post("/v1/messages", json=message())
    assert sent.json()["tenant_id"] == "default"


async def test_create_list_show_and_change(admin: httpx.AsyncClient) -> None:
    made = await new_tenant(
        admin,
        sender_domains=["Example.COM", "example.com", "mail.example.org"],
        default_from="Shop <shop@example.com>",
        providers=["backup"],
        rate_limit="50/s",
        daily_quota=1000,
    )
    assert made["id"].startswith("ten_") and made["enabled"] is True
    assert made["sender_domains"] == ["example.com", "mail.example.org"]
    assert made["default_from"] == "Shop <shop@example.com>"
    assert made["providers"] == ["backup"] and made["used_today"] == 0
    listed = (await admin.get("/v1/tenants")).json()
    TenantList.model_validate(listed)
    assert [t["id"] for t in listed["data"]] == [made["id"], "default"]
    page = (await admin.get("/v1/tenants", params={"limit": 1})).json()
    rest = (await admin.get("/v1/tenants", params={"cursor": page["next_cursor"]})).json()
    assert [t["id"] for t in page["data"] + rest["data"]] == [made["id"], "default"]
    shown = (await admin.get(f"/v1/tenants/{made['id']}")).json()
    assert shown == made
    changed = await admin.patch(
        f"/v1/tenants/{made['id']}", json={"providers": None, "rate_limit": None, "name": "shop"}
    )
    assert changed.status_code == 200
    body = changed.json()
    assert body["providers"] is None and body["rate_limit"] is None and body["name"] == "shop"
    assert body["daily_quota"] == 1000  # untouched


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"providers": ["nowhere"]}, "providers[0]"),
        ({"providers": []}, "providers"),
        ({"sender_domains": ["a@example.com"]}, "sender_domains[0]"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"daily_quota": 0}, "daily_quota"),
        ({"default_from": "x@other.org", "sender_domains": ["example.com"]}, "default_from"),
        ({"default_from": "x@example.com\r\nBcc: y@evil.test"}, "default_from"),
        ({"colour": "red"}, "colour"),
        ({"name": ""}, "name"),
    ],
)
async def test_bad_tenants_are_refused(
    admin: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    response = await admin.post("/v1/tenants", json={"name": "bad", **fields})
    assert response.status_code == 400, response.text
    assert error(response)["field"] == field
    assert [t["id"] for t in (await admin.get("/v1/tenants")).json()["data"]] == ["default"]


async def test_names_are_unique(admin: httpx.AsyncClient) -> None:
    made = await new_tenant(admin, name="shop")
    again = await admin.post("/v1/tenants", json={"name": "shop"})
    assert again.status_code == 409 and error(again)["field"] == "name"
    other = await new_tenant(admin)
    renamed = await admin.patch(f"/v1/tenants/{other['id']}", json={"name": "shop"})
    assert renamed.status_code == 409
    assert (
        await admin.patch(f"/v1/tenants/{made['id']}", json={"name": "shop"})
    ).status_code == 200


async def test_unknown_tenants_are_not_found(admin: httpx.AsyncClient) -> None:
    for response in (
        await admin.get("/v1/tenants/ten_nope"),
        await admin.patch("/v1/tenants/ten_nope", json={}),
        await admin.post("/v1/tenants/ten_nope/disable"),
    ):
        assert response.status_code == 404 and error(response)["code"] == "not_found"
    listed = await admin.get("/v1/messages", params={"tenant": "ten_nope"})
    assert listed.status_code == 404 and error(listed)["field"] == "tenant"


async def test_the_default_tenant_cannot_be_disabled(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/v1/tenants/default/disable")
    assert response.status_code == 409
    assert (await admin.get("/v1/me")).status_code == 200


async def test_sender_domains_and_default_from(admin: httpx.AsyncClient, store: Store) -> None:
    shop = await new_tenant(
        admin, sender_domains=["example.com"], default_from="Shop <shop@example.com>"
    )
    app = await key_for(admin, shop["id"], "send", "read")
    outside = await app.post("/v1/messages", json=message(**{"from": "ada@example.org"}))
    assert outside.status_code == 403
    assert error(outside) == {
        "code": "sender_not_allowed",
        "message": error(outside)["message"],
        "field": "from",
    }
    subdomain = await app.post("/v1/messages", json=message(**{"from": "a@mail.example.com"}))
    assert subdomain.status_code == 403  # exact domains only
    inside = await app.post("/v1/messages", json=message(**{"from": "Ada <ADA@Example.com>"}))
    assert inside.status_code == 202 and inside.json()["tenant_id"] == shop["id"]
    defaulted = await app.post("/v1/messages", json=message(**{"from": None}))
    assert defaulted.status_code == 202
    assert defaulted.json()["from"] == {"email": "shop@example.com", "name": "Shop"}
    batch = await app.post(
        "/v1/messages/batch",
        json={"messages": [message(**{"from": None}), message(**{"from": "x@elsewhere.org"})]},
    )
    items = batch.json()["data"]
    assert "id" in items[0] and items[1]["error"]["code"] == "sender_not_allowed"
    no_default = await new_tenant(admin)
    other = await key_for(admin, no_default["id"], "send")
    missing = await other.post("/v1/messages", json=message(**{"from": None}))
    assert missing.status_code == 400 and error(missing)["field"] == "from"
    count = select(func.count()).select_from(messages).where(messages.c.tenant_id == shop["id"])
    assert await store.db.read(lambda conn: conn.execute(count).scalar_one()) == 3


async def test_a_tenant_uses_only_its_providers(admin: httpx.AsyncClient) -> None:
    shop = await new_tenant(admin, providers=["backup"])
    app = await key_for(admin, shop["id"], "send", "read")
    forced = await app.post("/v1/messages", json=message(provider="primary"))
    assert forced.status_code == 403 and error(forced)["field"] == "provider"
    assert (await app.post("/v1/messages", json=message(provider="backup"))).status_code == 202
    listed = (await app.get("/v1/providers")).json()["data"]
    assert [p["name"] for p in listed] == ["backup"]
    assert (await app.get("/v1/providers/primary")).status_code == 404
    everyone = (await admin.get("/v1/providers")).json()["data"]
    assert {p["name"] for p in everyone} == {"primary", "backup"}


async def test_a_disabled_tenant_is_refused_and_its_mail_waits(
    admin: httpx.AsyncClient, store: Store
) -> None:
    shop = await new_tenant(admin)
    app = await key_for(admin, shop["id"], "send", "read")
    later = rfc3339(utcnow().replace(microsecond=0) + timedelta(days=30))
    queued = (await app.post("/v1/messages", json=message())).json()["id"]
    scheduled = (await app.post("/v1/messages", json=message(send_at=later))).json()["id"]
    mine = (await admin.post("/v1/messages", json=message())).json()["id"]

    off = await admin.post(f"/v1/tenants/{shop['id']}/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False
    refused = await app.get("/v1/me")
    assert refused.status_code == 403 and error(refused)["code"] == "tenant_disabled"
    assert (await app.post("/v1/messages", json=message())).status_code == 403
    held = (await admin.get(f"/v1/messages/{queued}")).json()
    assert held["status"] == "queued" and held["next_attempt_at"] is None
    claimed = await store.claim("w", limit=100, lease_seconds=10)
    assert [c.id for c in claimed] == [mine]  # the disabled tenant's mail is not due

    on = await admin.post(f"/v1/tenants/{shop['id']}/enable")
    assert on.json()["enabled"] is True
    assert (await app.get("/v1/me")).status_code == 200
    claimed = await store.claim("w", limit=100, lease_seconds=10)
    assert [c.id for c in claimed] == [queued]
    waiting = (await admin.get(f"/v1/messages/{scheduled}")).json()
    assert waiting["status"] == "scheduled" and waiting["next_attempt_at"] == later
    rows = await store.db.read(
        lambda conn: conn.execute(select(messages.c.next_attempt_at)).scalars().all()
    )
    assert HELD not in rows


async def test_the_daily_quota_counts_messages(admin: httpx.AsyncClient, store: Store) -> None:
    shop = await new_tenant(admin, daily_quota=3)
    app = await key_for(admin, shop["id"], "send")
    first = await app.post("/v1/messages", json=message(), headers={"Idempotency-Key": "one"})
    assert first.status_code == 202
    repeat = await app.post("/v1/messages", json=message(), headers={"Idempotency-Key": "one"})
    assert repeat.status_code == 200  # a repeat is not a new message: not counted
    batch = await app.post("/v1/messages/batch", json={"messages": [message()] * 3})
    items = batch.json()["data"]
    assert ["id" in i for i in items] == [True, True, False]
    assert items[2]["error"]["code"] == "quota_exceeded"
    over = await app.post("/v1/messages", json=message())
    assert over.status_code == 429 and error(over)["code"] == "quota_exceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 86401
    shown = (await admin.get(f"/v1/tenants/{shop['id']}")).json()
    assert shown["used_today"] == 3
    count = select(func.count()).select_from(messages).where(messages.c.tenant_id == shop["id"])
    assert await store.db.read(lambda conn: conn.execute(count).scalar_one()) == 3
    raised = await admin.patch(f"/v1/tenants/{shop['id']}", json={"daily_quota": 4})
    assert raised.json()["used_today"] == 3
    assert (await app.post("/v1/messages", json=message())).status_code == 202


async def test_the_rate_limit_answers_429_with_retry_after(
    admin: httpx.AsyncClient, metrics: Metrics
) -> None:
    shop = await new_tenant(admin, rate_limit="1/h")  # one request an hour: the window is long
    app = await key_for(admin, shop["id"], "read")
    assert (await app.get("/v1/me")).status_code == 200
    limited = await app.get("/v1/me")
    assert limited.status_code == 429 and error(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert (await admin.get("/v1/me")).status_code == 200  # other tenants are not limited
    refused = metrics.registry.get_sample_value(
        "mailgate_requests_refused_total", {"code": "rate_limited"}
    )
    assert refused == 1


def test_windows() -> None:
    assert window_of("100/s").requests == 10 and window_of("100/s").seconds == pytest.approx(0.1)
    assert window_of("15/s").requests == 2 and window_of("15/s").seconds == pytest.approx(2 / 15)
    assert window_of("30/min").requests == 1 and window_of("30/min").seconds == pytest.approx(2)
    assert window_of("1000/s").chunk == 25 and window_of("3/s").chunk == 1


async def test_processes_share_one_count_per_window(store: Store) -> None:
    """Two limiters (as two API processes) on one store: each window allows its requests once."""
    shop = await store.create_tenant(tenant(rate_limit="100/s"))
    now = [1_000_000.0]
    limiters = [TenantRateLimiter(store, clock=lambda: now[0]) for _ in range(2)]
    for start in (1_000_000.0, 1_000_000.1):  # two windows of 0.1 s, 10 requests each
        now[0] = start + 0.01
        allowed = 0
        for i in range(40):
            try:
                await limiters[i % 2].check(shop)
                allowed += 1
            except RateLimited as exc:
                assert exc.retry_after == 1
        assert allowed == 10


async def test_admin_changes_leave_one_audit_record_each(
    admin: httpx.AsyncClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="mailgate.audit")
    shop = await new_tenant(admin)
    rows = await store.db.read(lambda conn: conn.execute(select(audit_log)).all())
    assert len(rows) == 1
    [row] = rows
    me = (await admin.get("/v1/me")).json()["key"]
    assert (row.key_id, row.action, row.target, row.tenant_id) == (
        me["id"], "tenant.create", shop["id"], shop["id"],
    )  # fmt: skip
    assert [r.getMessage() for r in caplog.records if r.name == "mailgate.audit"] == [
        f"audit: tenant.create {shop['id']} (tenant {shop['id']}) by key {me['id']} "
        f"name={shop['name']}"
    ]
    await admin.post("/v1/providers/primary/disable")
    await admin.post(f"/v1/tenants/{shop['id']}/disable")
    await admin.get("/v1/tenants")  # reads leave nothing
    listed = (await admin.get("/v1/audit")).json()["data"]
    assert [r["action"] for r in listed] == ["tenant.disable", "provider.disable", "tenant.create"]
    assert listed[1]["target"] == "primary" and listed[1]["tenant_id"] == "default"
    only = (await admin.get("/v1/audit", params={"tenant": shop["id"]})).json()["data"]
    assert [r["action"] for r in only] == ["tenant.disable", "tenant.create"]
    page = (await admin.get("/v1/audit", params={"limit": 2})).json()
    rest = (await admin.get("/v1/audit", params={"cursor": page["next_cursor"]})).json()
    assert [r["id"] for r in page["data"] + rest["data"]] == [r["id"] for r in listed]


async def test_refused_changes_leave_no_audit_record(
    admin: httpx.AsyncClient, store: Store
) -> None:
    await admin.post("/v1/tenants", json={"name": "x", "providers": ["nowhere"]})
    await admin.post("/v1/tenants/default/disable")
    await admin.post("/v1/keys/key_00000000000000000000000000/revoke")
    rows = await store.db.read(lambda conn: conn.execute(select(audit_log)).all())
    assert rows == []
