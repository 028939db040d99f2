"""Every API call the clients make, as a `Call`: written once for both clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.client.core import Call, body, message_body, patch, query, segment, send_call


def send(message: Mapping[str, Any] | None, idempotency_key: str | None, **fields: Any) -> Call:
    return send_call("/v1/messages", message_body(message, fields), idempotency_key)


def send_batch(messages: Sequence[Mapping[str, Any]], idempotency_key: str | None) -> Call:
    items = [message_body(m, {}) for m in messages]
    return send_call("/v1/messages/batch", {"messages": items}, idempotency_key)


def get(message_id: str) -> Call:
    return Call("GET", f"/v1/messages/{segment(message_id)}", replayable=True)


def list_messages(cursor: str | None, filters: Mapping[str, Any]) -> Call:
    return Call("GET", "/v1/messages", query({**filters, "cursor": cursor}), replayable=True)


def cancel(message_id: str) -> Call:
    return Call("POST", f"/v1/messages/{segment(message_id)}/cancel")


def retry(message_id: str) -> Call:
    return Call("POST", f"/v1/messages/{segment(message_id)}/retry")


def retry_failed(filters: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/messages/retry", json=body(filters))


def providers() -> Call:
    return Call("GET", "/v1/providers", replayable=True)


def provider(name: str) -> Call:
    return Call("GET", f"/v1/providers/{segment(name)}", replayable=True)


def provider_events(name: str, limit: int) -> Call:
    path = f"/v1/providers/{segment(name)}/events"
    return Call("GET", path, query({"limit": limit}), replayable=True)


def switch_provider(name: str, enabled: bool) -> Call:
    action = "enable" if enabled else "disable"
    return Call("POST", f"/v1/providers/{segment(name)}/{action}", replayable=True)


def simulate_failure(name: str, mode: str) -> Call:
    path = f"/v1/providers/{segment(name)}/simulate-failure"
    return Call("POST", path, json={"mode": mode}, replayable=True)


def list_suppressions(cursor: str | None, filters: Mapping[str, Any]) -> Call:
    return Call("GET", "/v1/suppressions", query({**filters, "cursor": cursor}), replayable=True)


def suppression(email: str, tenant: str | None) -> Call:
    path = f"/v1/suppressions/{segment(email)}"
    return Call("GET", path, query({"tenant": tenant}), replayable=True)


def suppress(email: str, reason: str, tenant: str | None) -> Call:
    payload = {"email": email, "reason": reason}
    return Call("POST", "/v1/suppressions", query({"tenant": tenant}), json=payload)


def unsuppress(email: str, tenant: str | None) -> Call:
    path = f"/v1/suppressions/{segment(email)}"
    return Call("DELETE", path, query({"tenant": tenant}), replayable=True)


def list_webhooks(cursor: str | None, filters: Mapping[str, Any]) -> Call:
    return Call("GET", "/v1/webhooks", query({**filters, "cursor": cursor}), replayable=True)


def create_webhook(fields: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/webhooks", json=body(fields))


def webhook(webhook_id: str) -> Call:
    return Call("GET", f"/v1/webhooks/{segment(webhook_id)}", replayable=True)


def update_webhook(webhook_id: str, fields: Mapping[str, Any]) -> Call:
    return Call("PATCH", f"/v1/webhooks/{segment(webhook_id)}", json=patch(fields))


def delete_webhook(webhook_id: str) -> Call:
    return Call("DELETE", f"/v1/webhooks/{segment(webhook_id)}", replayable=True)


def test_webhook(webhook_id: str) -> Call:
    return Call("POST", f"/v1/webhooks/{segment(webhook_id)}/test")


def webhook_deliveries(webhook_id: str, cursor: str | None, filters: Mapping[str, Any]) -> Call:
    path = f"/v1/webhooks/{segment(webhook_id)}/deliveries"
    return Call("GET", path, query({**filters, "cursor": cursor}), replayable=True)


def retry_webhook_delivery(webhook_id: str, delivery_id: int) -> Call:
    path = f"/v1/webhooks/{segment(webhook_id)}/deliveries/{delivery_id}/retry"
    return Call("POST", path)


def list_keys(cursor: str | None, filters: Mapping[str, Any]) -> Call:
    return Call("GET", "/v1/keys", query({**filters, "cursor": cursor}), replayable=True)


def create_key(fields: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/keys", json=body(fields))


def revoke_key(key_id: str) -> Call:
    return Call("POST", f"/v1/keys/{segment(key_id)}/revoke", replayable=True)


def me() -> Call:
    return Call("GET", "/v1/me", replayable=True)


def list_tenants(cursor: str | None) -> Call:
    return Call("GET", "/v1/tenants", query({"cursor": cursor}), replayable=True)


def tenant(tenant_id: str) -> Call:
    return Call("GET", f"/v1/tenants/{segment(tenant_id)}", replayable=True)


def create_tenant(fields: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/tenants", json=body(fields))


def update_tenant(tenant_id: str, fields: Mapping[str, Any]) -> Call:
    return Call("PATCH", f"/v1/tenants/{segment(tenant_id)}", json=patch(fields))


def switch_tenant(tenant_id: str, enabled: bool) -> Call:
    action = "enable" if enabled else "disable"
    return Call("POST", f"/v1/tenants/{segment(tenant_id)}/{action}", replayable=True)
