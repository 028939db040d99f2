"""The authorization matrix, generated from the application's route table.

For every route under `/v1`, every kind of key (each scope on its own, no
key, a key of a disabled tenant) and an object of the key's own tenant
versus another tenant's, the expected status follows from one rule per
route below. A route the app serves without a rule here fails the test, so
nothing is ever added unguarded; docs/tenants.md shows the same table and
is checked against it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import update

from mailgate.api import create_app
from mailgate.api.app import declare_scopes
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Scope, Store
from mailgate.store.tables import messages
from tests.helpers import message, new_message, tenant

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {
    "/",  # a redirect to the console
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}


@dataclass
class World:
    """Two tenants: `default` (its key is the admin) and `other`, and a store to fill."""

    store: Store
    tenants: dict[str, str]  # "own"/"other" relative to the caller, filled per caller

    async def queued(self, owner: str) -> str:
        item = new_message(tenant_id=self.tenants[owner])
        await self.store.accept(item)
        return item.id

    async def failed(self, owner: str) -> str:
        message_id = await self.queued(owner)
        await self.store.db.write(
            lambda conn: conn.execute(
                update(messages).where(messages.c.id == message_id).values(status="failed")
            )
        )
        return message_id

    async def key(self, owner: str) -> str:
        key, _ = await self.store.create_key(
            "victim", tenant_id=self.tenants[owner], scopes=[Scope.SEND]
        )
        return key.id

    async def fresh_tenant(self) -> str:
        return (await self.store.create_tenant(tenant())).id

    async def webhook(self, owner: str) -> str:
        endpoint = await self.store.create_webhook(
            self.tenants[owner], "http://127.0.0.1:9/hook", ["*"]
        )
        return endpoint.id

    async def delivery(self, owner: str) -> str:
        webhook_id = await self.webhook(owner)
        delivery_id = await self.store.test_webhook(None, webhook_id)
        return f"{webhook_id}/deliveries/{delivery_id}"

    async def suppressed(self, owner: str) -> str:
        email = f"s-{uuid.uuid4().hex[:12]}@example.org"
        await self.store.add_suppression(self.tenants[owner], email)
        return email


Request = tuple[str, dict[str, Any] | None, dict[str, str] | None]
"""A path, a JSON body and query parameters."""


@dataclass(frozen=True)
class Rule:
    scope: Scope | None
    """What the route needs; None: any valid key."""
    ok: int
    build: Callable[[World, str], Awaitable[Request]]
    """The request for an object of `owner` ("own" or "other")."""
    other: int | None = None
    """What a non-admin key holding the scope gets for another tenant's object; None: the
    route has no other tenant's object to ask for."""


async def _plain(path: str, body: dict[str, Any] | None = None) -> Request:
    return path, body, None


def _fixed(
    path: str, body: dict[str, Any] | None = None
) -> Callable[[World, str], Awaitable[Request]]:
    return lambda _w, _o: _plain(path, body)


def _listing(path: str) -> Callable[[World, str], Awaitable[Request]]:
    async def build(world: World, owner: str) -> Request:
        return path, None, {"tenant": world.tenants[owner]}

    return build


def _on(
    make: Callable[[World, str], Awaitable[str]], path: str, body: dict[str, Any] | None = None
) -> Callable[[World, str], Awaitable[Request]]:
    async def build(world: World, owner: str) -> Request:
        return path.format(await make(world, owner)), body, None

    return build


async def _bulk_retry(world: World, owner: str) -> Request:
    await world.failed(owner)
    return "/v1/messages/retry", {"tenant": world.tenants[owner]}, None


async def _new_key(world: World, owner: str) -> Request:
    return "/v1/keys", {"name": "new", "scopes": ["send"], "tenant_id": world.tenants[owner]}, None


async def _new_tenant(_w: World, _o: str) -> Request:
    return "/v1/tenants", {"name": tenant().name}, None


async def _fresh_tenant(world: World, _o: str) -> str:
    return await world.fresh_tenant()


async def _provider(_w: World, _o: str) -> str:
    return "primary"


def _suppression(path: str) -> Callable[[World, str], Awaitable[Request]]:
    """One suppressed address of `owner`'s, asked for in `owner`'s tenant (`?tenant=`)."""

    async def build(world: World, owner: str) -> Request:
        email = await world.suppressed(owner)
        return path.format(email), None, {"tenant": world.tenants[owner]}

    return build


def _stream(path: str) -> Callable[[World, str], Awaitable[Request]]:
    """The stream, ended at once (`max_seconds=0`) so the in-process client sees it end."""

    async def build(world: World, owner: str) -> Request:
        return path, None, {"tenant": world.tenants[owner], "max_seconds": "0"}

    return build


async def _new_webhook(world: World, owner: str) -> Request:
    body = {"url": "https://hooks.example.com/in", "tenant_id": world.tenants[owner]}
    return "/v1/webhooks", body, None


async def _webhook(world: World, owner: str) -> str:
    return await world.webhook(owner)


async def _delivery(world: World, owner: str) -> str:
    return await world.delivery(owner)


async def _new_suppression(world: World, owner: str) -> Request:
    body = {"email": f"n-{uuid.uuid4().hex[:12]}@example.org"}
    return "/v1/suppressions", body, {"tenant": world.tenants[owner]}


READ, SEND, MANAGE, ADMIN = Scope.READ, Scope.SEND, Scope.MANAGE, Scope.ADMIN

RULES: dict[tuple[str, str], Rule] = {
    ("POST", "/v1/messages"): Rule(SEND, 202, _fixed("/v1/messages", message())),
    ("POST", "/v1/messages/batch"): Rule(
        SEND, 200, _fixed("/v1/messages/batch", {"messages": [message()]})
    ),
    ("GET", "/v1/messages"): Rule(READ, 200, _listing("/v1/messages"), other=403),
    ("GET", "/v1/messages/{message_id}"): Rule(
        READ, 200, _on(World.queued, "/v1/messages/{}"), other=404
    ),
    ("POST", "/v1/messages/{message_id}/cancel"): Rule(
        MANAGE, 200, _on(World.queued, "/v1/messages/{}/cancel"), other=404
    ),
    ("POST", "/v1/messages/retry"): Rule(MANAGE, 200, _bulk_retry, other=403),
    ("POST", "/v1/messages/{message_id}/retry"): Rule(
        MANAGE, 200, _on(World.failed, "/v1/messages/{}/retry"), other=404
    ),
    ("GET", "/v1/providers"): Rule(READ, 200, _fixed("/v1/providers")),
    ("GET", "/v1/providers/{name}"): Rule(READ, 200, _on(_provider, "/v1/providers/{}")),
    ("GET", "/v1/providers/{name}/events"): Rule(
        READ, 200, _on(_provider, "/v1/providers/{}/events")
    ),
    ("POST", "/v1/providers/{name}/disable"): Rule(
        ADMIN, 200, _on(_provider, "/v1/providers/{}/disable")
    ),
    ("POST", "/v1/providers/{name}/enable"): Rule(
        ADMIN, 200, _on(_provider, "/v1/providers/{}/enable")
    ),
    ("POST", "/v1/providers/{name}/simulate-failure"): Rule(
        ADMIN, 200, _on(_provider, "/v1/providers/{}/simulate-failure", {"mode": "off"})
    ),
    ("POST", "/v1/tenants"): Rule(ADMIN, 201, _new_tenant),
    ("GET", "/v1/tenants"): Rule(ADMIN, 200, _fixed("/v1/tenants")),
    ("GET", "/v1/tenants/{tenant_id}"): Rule(ADMIN, 200, _on(_fresh_tenant, "/v1/tenants/{}")),
    ("PATCH", "/v1/tenants/{tenant_id}"): Rule(
        ADMIN, 200, _on(_fresh_tenant, "/v1/tenants/{}", {"rate_limit": None})
    ),
    ("POST", "/v1/tenants/{tenant_id}/disable"): Rule(
        ADMIN, 200, _on(_fresh_tenant, "/v1/tenants/{}/disable")
    ),
    ("POST", "/v1/tenants/{tenant_id}/enable"): Rule(
        ADMIN, 200, _on(_fresh_tenant, "/v1/tenants/{}/enable")
    ),
    ("POST", "/v1/keys"): Rule(MANAGE, 201, _new_key, other=404),
    ("GET", "/v1/keys"): Rule(MANAGE, 200, _listing("/v1/keys"), other=403),
    ("POST", "/v1/keys/{key_id}/revoke"): Rule(
        MANAGE, 200, _on(World.key, "/v1/keys/{}/revoke"), other=404
    ),
    ("GET", "/v1/me"): Rule(None, 200, _fixed("/v1/me")),
    ("GET", "/v1/audit"): Rule(ADMIN, 200, _listing("/v1/audit")),
    ("GET", "/v1/suppressions"): Rule(READ, 200, _listing("/v1/suppressions"), other=403),
    ("GET", "/v1/suppressions/{email}"): Rule(
        READ, 200, _suppression("/v1/suppressions/{}"), other=403
    ),
    ("POST", "/v1/suppressions"): Rule(MANAGE, 201, _new_suppression, other=403),
    ("DELETE", "/v1/suppressions/{email}"): Rule(
        MANAGE, 204, _suppression("/v1/suppressions/{}"), other=403
    ),
    ("POST", "/v1/webhooks"): Rule(MANAGE, 201, _new_webhook, other=404),
    ("GET", "/v1/webhooks"): Rule(READ, 200, _listing("/v1/webhooks"), other=403),
    ("GET", "/v1/webhooks/{webhook_id}"): Rule(
        READ, 200, _on(_webhook, "/v1/webhooks/{}"), other=404
    ),
    ("PATCH", "/v1/webhooks/{webhook_id}"): Rule(
        MANAGE, 200, _on(_webhook, "/v1/webhooks/{}", {"description": "x"}), other=404
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Rule(
        MANAGE, 204, _on(_webhook, "/v1/webhooks/{}"), other=404
    ),
    ("POST", "/v1/webhooks/{webhook_id}/test"): Rule(
        MANAGE, 202, _on(_webhook, "/v1/webhooks/{}/test"), other=404
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Rule(
        READ, 200, _on(_webhook, "/v1/webhooks/{}/deliveries"), other=404
    ),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): Rule(
        MANAGE, 202, _on(_delivery, "/v1/webhooks/{}/retry"), other=404
    ),
    ("GET", "/v1/events"): Rule(READ, 200, _listing("/v1/events"), other=403),
    ("GET", "/v1/events/stream"): Rule(READ, 200, _stream("/v1/events/stream"), other=403),
}
COMPAT = (
    {("POST", path) for prefix in ("", "/compat/sendgrid") for path in (f"{prefix}/v3/mail/send",)}
    | {
        ("POST", path)
        for prefix in ("", "/compat/mailgun")
        for path in (f"{prefix}/v3/{{domain}}/messages", f"{prefix}/v3/{{domain}}/messages.mime")
    }
    | {
        ("POST", path)
        for prefix in ("", "/compat/postmark")
        for path in (f"{prefix}/email", f"{prefix}/email/batch")
    }
)
"""The drop-in provider APIs: a `send` key where the provider's SDK puts its own (tests/compat)."""
SIGNED = {("POST", "/v1/providers/{name}/webhook"), ("HEAD", "/v1/providers/{name}/webhook")}
"""Routes that take the provider's own signature instead of a key (tests/events)."""


def routes_of(settings: Settings, store: Store) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path) of every API route under /v1, and every other path the app serves."""
    app = create_app(settings, store, Metrics())
    guarded: set[tuple[str, str]] = set()
    public: set[str] = set()
    compat: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        route = context.original_route
        if path.startswith("/ui"):
            continue  # the console: sessions, not keys (tests/api/test_console.py)
        if (
            isinstance(route, APIRoute)
            and (route.openapi_extra or {}).get("x-mailgate-scope") == "send"
            and not path.startswith("/v1")
        ):
            assert {(m, path) for m in context.methods or ()} <= COMPAT, path
            compat |= {(m, path) for m in context.methods or ()}
            continue
        if isinstance(route, APIRoute) and path.startswith("/v1"):
            if (route.openapi_extra or {}).get("x-mailgate-scope") == "provider-signature":
                assert {(m, path) for m in context.methods or ()} <= SIGNED, path
                continue
            guarded |= {(method, path) for method in context.methods or ()}
        else:
            public.add(path)
    assert compat == COMPAT, f"drop-in routes: {sorted(compat ^ COMPAT)}"
    return guarded, public


async def test_every_route_has_a_rule(settings: Settings, store: Store) -> None:
    guarded, public = routes_of(settings, store)
    assert guarded == set(RULES), (
        f"routes without a rule: {sorted(guarded - set(RULES))}; "
        f"rules without a route: {sorted(set(RULES) - guarded)}"
    )
    assert public <= PUBLIC, f"served without a key: {sorted(public - PUBLIC)}"


def expected(rule: Rule, scopes: set[Scope], owner: str) -> int:
    if rule.scope is not None and rule.scope not in scopes and Scope.ADMIN not in scopes:
        return 403
    if owner == "other" and Scope.ADMIN not in scopes:
        assert rule.other is not None
        return rule.other
    return rule.ok


async def test_the_matrix(settings: Settings, store: Store, metrics: Metrics) -> None:
    other_tenant = await store.create_tenant(tenant(name="matrix-other"))
    disabled = await store.create_tenant(tenant(name="matrix-disabled"))
    callers: list[tuple[str, str, set[Scope]]] = []  # (label, tenant, scopes)
    for scope in (SEND, READ, MANAGE):
        callers.append((scope.value, other_tenant.id, {scope}))
    callers.append(("admin", "default", {ADMIN}))
    secrets: dict[str, str] = {}
    for label, tenant_id, scopes in callers:
        _, secrets[label] = await store.create_key(label, tenant_id=tenant_id, scopes=scopes)
    _, disabled_secret = await store.create_key("off", tenant_id=disabled.id, scopes=[ADMIN])
    await store.update_tenant(disabled.id, enabled=False)

    app = create_app(settings, store, metrics)
    transport = httpx.ASGITransport(app=app)
    wrong: list[str] = []
    checked = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://mailgate.test") as http:

        async def call(method: str, request: Request, secret: str | None) -> httpx.Response:
            nonlocal checked
            checked += 1
            path, body, params = request
            headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
            return await http.request(method, path, json=body, params=params, headers=headers)

        for (method, path), rule in sorted(RULES.items()):
            for label, tenant_id, scopes in callers:
                mine = tenant_id
                theirs = "default" if tenant_id != "default" else other_tenant.id
                world = World(store, {"own": mine, "other": theirs})
                for owner in ["own", "other"] if rule.other is not None else ["own"]:
                    response = await call(method, await rule.build(world, owner), secrets[label])
                    want = expected(rule, scopes, owner)
                    if response.status_code != want:
                        wrong.append(
                            f"{method} {path} as {label} on {owner}: {response.status_code} "
                            f"(want {want}) {response.text[:160]}"
                        )
            # No key at all, and a key of a disabled tenant.
            world = World(store, {"own": "default", "other": other_tenant.id})
            request = await rule.build(world, "own")
            for secret, want, label in ((None, 401, "no key"), (disabled_secret, 403, "disabled")):
                response = await call(method, request, secret)
                if response.status_code != want:
                    wrong.append(f"{method} {path} with {label}: {response.status_code}")
                elif want == 403 and response.json()["error"]["code"] != "tenant_disabled":
                    wrong.append(f"{method} {path} with {label}: {response.json()}")
    assert not wrong, "\n".join(wrong)
    assert checked == sum(len(callers) * (2 if r.other else 1) + 2 for r in RULES.values())


def test_a_route_without_a_scope_is_refused() -> None:
    router = APIRouter(prefix="/v1/unguarded")

    @router.get("")
    async def unguarded() -> None:
        return None

    with pytest.raises(RuntimeError, match="declares no scope"):
        declare_scopes(router)


def test_the_docs_show_the_matrix() -> None:
    """docs/tenants.md has a row per route naming the scope it needs."""
    text = (ROOT / "docs" / "tenants.md").read_text()
    rows = dict(
        (f"{m.group(1)} {m.group(2)}", m.group(3))
        for m in re.finditer(r"^\| `(GET|POST|PATCH|DELETE) ([^`]+)` \| (\w+) \|", text, re.M)
    )
    for (method, path), rule in RULES.items():
        scope = rule.scope.value if rule.scope is not None else "any"
        assert rows.get(f"{method} {path}") == scope, f"{method} {path}"
    assert len(rows) == len(RULES)
