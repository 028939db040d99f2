"""The Python client against a running gateway: every call, its errors and its retries."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mailgate.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    RetryPolicy,
    Unauthorized,
)
from tests.client.conftest import Running

SHOP = "Shop <shop@example.com>"


def _messages(client: Client, n: int, tag: str) -> list[str]:
    batch = [{"from": SHOP, "to": [f"r{i}@example.org"], "subject": f"#{i}", "text": "t",
              "tags": [tag]} for i in range(n)]  # fmt: skip
    return [item["id"] for item in client.send_batch(batch)]


def test_messages(gateway: Running) -> None:
    with Client(gateway.url, gateway.key) as mg:
        sent = mg.send(from_=SHOP, to="ada@example.org", subject="Receipt", text="Thanks",
                       tags=["receipts"], metadata={"order": "42"})  # fmt: skip
        assert sent["status"] == "queued" and sent["to"] == [{"email": "ada@example.org"}]
        done = mg.wait(sent["id"], until="delivered", timeout=20)
        assert done["recipients"][0]["status"] == "delivered"
        assert mg.get(sent["id"])["metadata"] == {"order": "42"}
        again = mg.send({"from": SHOP, "to": ["b@example.org"], "subject": "S", "text": "t"},
                        idempotency_key="order-42")  # fmt: skip
        assert mg.send({"from": SHOP, "to": ["b@example.org"], "subject": "S", "text": "t"},
                       idempotency_key="order-42")["id"] == again["id"]  # fmt: skip

        tag = f"paging-{uuid.uuid4().hex[:8]}"
        ids = _messages(mg, 45, tag)
        listed = [m["id"] for m in mg.list(tag=tag)]
        assert listed == sorted(ids, reverse=True)  # every page (three), newest first
        assert [m["id"] for m in mg.list(tag=tag, to="r3@example.org")] == [ids[3]]

        later = datetime.now(UTC) + timedelta(days=1)
        scheduled = mg.send(from_=SHOP, to="c@example.org", subject="S", text="t",
                            send_at=later)  # fmt: skip
        assert scheduled["status"] == "scheduled"
        assert mg.cancel(scheduled["id"])["status"] == "cancelled"
        with pytest.raises(Conflict) as refused:
            mg.retry(scheduled["id"])
        assert refused.value.status == 409 and refused.value.field == "status"

        mg.suppress("gone@example.org")
        failed = mg.send(from_=SHOP, to="gone@example.org", subject="S", text="t")
        assert mg.wait(failed["id"], until="failed")["last_error"].startswith("suppressed")
        assert mg.retry_failed(dry_run=True) == {"matched": 1, "retried": 0}
        mg.unsuppress("gone@example.org")
        # The answer is the message as read after the retry: the gateway's worker, woken
        # by it, may have claimed or even sent it by then.
        assert mg.retry(failed["id"])["status"] in ("queued", "sending", "sent", "delivered")
        mg.wait(failed["id"], until=("sent", "delivered"))
        assert mg.retry_failed() == {"matched": 0, "retried": 0}


def test_providers_suppressions_webhooks_keys_tenants(gateway: Running) -> None:
    with Client(gateway.url, gateway.key) as mg:
        names = [p["name"] for p in mg.providers()]
        assert names == ["sendgrid", "mailgun"]
        assert mg.disable_provider("mailgun")["enabled"] is False
        assert mg.enable_provider("mailgun")["enabled"] is True
        assert mg.simulate_failure("mailgun", "error")["simulated_failure"] == "error"
        assert mg.simulate_failure("mailgun", "off")["simulated_failure"] == "off"
        assert mg.provider("sendgrid")["type"] == "sendgrid"
        assert {e["type"] for e in mg.provider_events("mailgun")} >= {"disabled", "drill"}

        for i in range(25):
            mg.suppress(f"s{i}@example.org", reason="unsubscribe")
        assert len(list(mg.suppressions())) == 25  # two pages
        assert mg.suppression("S3@example.org")["reason"] == "unsubscribe"
        mg.unsuppress("s3@example.org")
        with pytest.raises(NotFound) as missing:
            mg.suppression("s3@example.org")
        assert missing.value.field == "email"

        hook = mg.create_webhook("https://hooks.example.com/in", events=["message.bounced"])
        assert hook["secret"].startswith("whsec_")
        assert [w["id"] for w in mg.webhooks()] == [hook["id"]]
        assert mg.update_webhook(hook["id"], description="prod")["description"] == "prod"
        assert mg.update_webhook(hook["id"], description=None)["description"] is None
        mg.test_webhook(hook["id"])
        [delivery] = list(mg.webhook_deliveries(hook["id"]))
        assert delivery["event_type"] == "webhook.test"
        # The gateway's sender tries it at once: a delivery in flight cannot be retried
        # (404), so wait for its first try to end (the next waits 5 s) and retry then.
        deadline = time.monotonic() + 30
        while delivery["status"] == "delivering" or not delivery["attempts"]:
            assert time.monotonic() < deadline, delivery
            time.sleep(0.05)
            [delivery] = list(mg.webhook_deliveries(hook["id"]))
        mg.retry_webhook_delivery(hook["id"], delivery["id"])
        assert mg.webhook(hook["id"])["events"] == ["message.bounced"]
        mg.delete_webhook(hook["id"])
        assert list(mg.webhooks()) == []

        tenant = mg.create_tenant(f"acme-{uuid.uuid4().hex[:6]}", sender_domains=["acme.example"])
        assert mg.tenant(tenant["id"])["sender_domains"] == ["acme.example"]
        assert mg.update_tenant(tenant["id"], daily_quota=10)["daily_quota"] == 10
        cleared = mg.update_tenant(tenant["id"], daily_quota=None)  # None clears a field
        assert cleared["daily_quota"] is None and cleared["sender_domains"] == ["acme.example"]
        assert tenant["id"] in {t["id"] for t in mg.tenants()}
        made = mg.create_key("acme-sender", ["send"], tenant_id=tenant["id"])
        assert made["key"].startswith("mg_")
        with Client(gateway.url, made["key"]) as acme:
            assert acme.me()["tenant"]["id"] == tenant["id"]
            with pytest.raises(Forbidden) as forbidden:
                acme.send(from_="x@elsewhere.example", to="a@example.org", subject="S", text="t")
            assert forbidden.value.code == "sender_not_allowed"
            assert forbidden.value.field == "from"
        assert mg.disable_tenant(tenant["id"])["enabled"] is False
        assert mg.enable_tenant(tenant["id"])["enabled"] is True
        assert made["id"] in {k["id"] for k in mg.keys(tenant=tenant["id"])}
        assert mg.revoke_key(made["id"])["revoked_at"] is not None


def test_errors_carry_the_apis_code_message_field_and_status(gateway: Running) -> None:
    with Client(gateway.url, gateway.key) as mg:
        with pytest.raises(BadRequest) as bad:
            mg.send(from_=SHOP, to="not an address", subject="S", text="t")
        assert (bad.value.status, bad.value.code, bad.value.field) == (
            400,
            "invalid_request",
            "to[0]",
        )
        assert "to" in str(bad.value)
        with pytest.raises(NotFound):
            mg.get("msg_00000000000000000000000000")
    with Client(gateway.url, "mg_not-a-key") as stranger, pytest.raises(Unauthorized) as who:
        stranger.providers()
    assert who.value.status == 401 and who.value.code == "unauthorized"


async def test_the_async_client(gateway: Running) -> None:
    async with AsyncClient(gateway.url, gateway.key, retry=RetryPolicy(backoff=0.01)) as mg:
        tag = f"async-{uuid.uuid4().hex[:8]}"
        sent = await asyncio.gather(
            *(mg.send(from_=SHOP, to=f"a{i}@example.org", subject="S", text="t", tags=[tag])
              for i in range(200))  # 200 in flight on one client
        )  # fmt: skip
        assert len({m["id"] for m in sent}) == 200
        listed = [m["id"] async for m in mg.list(tag=tag)]
        assert sorted(listed) == sorted(m["id"] for m in sent)
        done = await mg.wait(sent[0]["id"], until="delivered", timeout=20)
        assert done["status"] == "delivered"
        assert [p["name"] for p in await mg.providers()] == ["sendgrid", "mailgun"]
        await mg.suppress("x@example.org")
        assert [s["email"] async for s in mg.suppressions()] == ["x@example.org"]
        with pytest.raises(BadRequest) as bad:
            await mg.send(from_=SHOP, to=[], subject="S", text="t")
        assert bad.value.field == "to"
        assert (await mg.me())["key"]["scopes"] == ["admin"]
