"""The console's rules, route by route, in process (the browser tests drive the pages).

Every `/ui` route is found in the application's route table: without a
session each one sends the browser to the login form (or refuses a POST),
and each one needs the scope its table entry names, so a console route
added without a rule fails here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from mailgate.api import create_app
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Scope, Store, utcnow

SCOPES: dict[tuple[str, str], Scope | None] = {
    ("POST", "/ui/logout"): None,
    ("GET", "/ui"): Scope.READ,
    ("GET", "/ui/messages"): Scope.READ,
    ("GET", "/ui/messages/{id}"): Scope.READ,
    ("GET", "/ui/messages/{id}/live"): Scope.READ,
    ("GET", "/ui/messages/{id}/stream"): Scope.READ,
    ("POST", "/ui/messages/{id}/{action}"): Scope.MANAGE,
    ("GET", "/ui/send"): Scope.SEND,
    ("POST", "/ui/send"): Scope.SEND,
    ("GET", "/ui/failed"): Scope.MANAGE,
    ("POST", "/ui/failed"): Scope.MANAGE,
    ("GET", "/ui/providers"): Scope.READ,
    ("POST", "/ui/providers/{name}/{action}"): Scope.ADMIN,
    ("GET", "/ui/suppressions"): Scope.READ,
    ("POST", "/ui/suppressions"): Scope.MANAGE,
    ("POST", "/ui/suppressions/remove"): Scope.MANAGE,
    ("GET", "/ui/webhooks"): Scope.READ,
    ("POST", "/ui/webhooks"): Scope.MANAGE,
    ("GET", "/ui/webhooks/{id}"): Scope.READ,
    ("POST", "/ui/webhooks/{id}/{action}"): Scope.MANAGE,
    ("GET", "/ui/keys"): Scope.MANAGE,
    ("POST", "/ui/keys"): Scope.MANAGE,
    ("POST", "/ui/keys/{id}/revoke"): Scope.MANAGE,
    ("GET", "/ui/tenants"): Scope.ADMIN,
    ("POST", "/ui/tenants"): Scope.ADMIN,
    ("POST", "/ui/tenants/{id}/{action}"): Scope.ADMIN,
}
PUBLIC = {("GET", "/ui/login"), ("POST", "/ui/login")}
SAMPLE = {"id": "msg_00000000000000000000000000", "name": "primary", "action": "enable"}


@pytest.fixture
async def app_client(settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test"
    ) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def log_in(client: httpx.AsyncClient, key: str) -> str:
    """Log in with `key`; the session's CSRF token."""
    form = await client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    answer = await client.post("/ui/login", data={"csrf": token[1], "key": key})
    assert answer.status_code == 303, answer.text
    page = await client.get("/ui/messages")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found[1]


def console_routes(client: httpx.AsyncClient) -> set[tuple[str, str]]:
    routes = set()
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        path = context.path or ""
        if isinstance(context.original_route, APIRoute) and path.startswith("/ui"):
            routes |= {(method, path) for method in context.methods or ()}
    return routes


async def test_every_console_route_has_a_rule(app_client: httpx.AsyncClient) -> None:
    assert console_routes(app_client) == set(SCOPES) | PUBLIC


@pytest.mark.parametrize(("method", "path"), sorted(SCOPES))
async def test_without_a_session_nothing_is_shown_or_done(
    app_client: httpx.AsyncClient, method: str, path: str
) -> None:
    answer = await app_client.request(method, path.format(**SAMPLE), data={"csrf": "x"})
    if method == "GET":
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/login?next=/ui")
    else:
        assert answer.status_code == 401 and 'name="key"' in answer.text


async def test_each_route_needs_its_scope(app_client: httpx.AsyncClient, store: Store) -> None:
    """A key holding every scope but the one a route needs is refused there (403)."""
    for scope in Scope:
        if scope is Scope.ADMIN:
            continue  # an admin key may do everything
        others = [s for s in Scope if s is not scope and s is not Scope.ADMIN]
        _, key = await store.create_key(f"no-{scope}", tenant_id="default", scopes=others)
        app_client.cookies.clear()
        csrf = await log_in(app_client, key) if Scope.READ in others else None
        if csrf is None:
            continue  # a key without read is checked below
        for (method, path), needed in SCOPES.items():
            if needed is not scope:
                continue
            answer = await app_client.request(method, path.format(**SAMPLE), data={"csrf": csrf})
            assert answer.status_code == 403, (scope, method, path, answer.status_code)
    _, send_only = await store.create_key("send-only", tenant_id="default", scopes=["send"])
    app_client.cookies.clear()
    form = await app_client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    await app_client.post("/ui/login", data={"csrf": token[1], "key": send_only})
    assert (await app_client.get("/ui")).status_code == 403
    assert (await app_client.get("/ui/send")).status_code == 200
    _, manage = await store.create_key("manage", tenant_id="default", scopes=["read", "manage"])
    app_client.cookies.clear()
    csrf = await log_in(app_client, manage)
    for method, path in (("GET", "/ui/tenants"), ("POST", "/ui/providers/primary/disable")):
        answer = await app_client.request(method, path, data={"csrf": csrf})
        assert answer.status_code == 403, path


async def test_sessions_end_on_logout_revocation_and_expiry(
    app_client: httpx.AsyncClient, store: Store
) -> None:
    key, secret = await store.create_key("ops", tenant_id="default")
    csrf = await log_in(app_client, secret)
    cookie = app_client.cookies["mailgate_session"]
    assert (await app_client.get("/ui")).status_code == 200
    # A forged cookie (token changed, signature kept) is not a session.
    token, _, signature = cookie.partition(".")
    forged = token[:-1] + ("B" if token.endswith("A") else "A")  # always a different token
    app_client.cookies.set("mailgate_session", f"{forged}.{signature}", path="/ui")
    assert (await app_client.get("/ui")).status_code == 303
    app_client.cookies.set("mailgate_session", cookie, path="/ui")
    assert (await app_client.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    app_client.cookies.set("mailgate_session", cookie, path="/ui")
    assert (await app_client.get("/ui")).status_code == 303  # ended on the server

    app_client.cookies.clear()
    await log_in(app_client, secret)
    await store.revoke_key(key.id)
    assert (await app_client.get("/ui")).status_code == 303

    other, other_secret = await store.create_key("later", tenant_id="default")
    token_value = "t" * 43
    await store.open_session(other.id, token_value, expires_at=utcnow() - timedelta(seconds=1))
    assert await store.find_session(token_value) is None
    await store.open_session(other.id, token_value + "x", expires_at=utcnow() + timedelta(hours=1))
    assert await store.find_session(token_value + "x") is not None
    assert other_secret


async def test_the_cookie_is_secure_behind_https(settings: Settings, store: Store) -> None:
    _, secret = await store.create_key("ops", tenant_id="default")
    app = create_app(settings, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://mailgate.test"
    ) as client:
        form = await client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        answer = await client.post("/ui/login", data={"csrf": token[1], "key": secret})
    cookie = next(v for v in answer.headers.get_list("set-cookie") if "mailgate_session" in v)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert answer.headers["location"] == "/ui"


async def test_login_keeps_its_destination_but_only_inside_the_console(
    app_client: httpx.AsyncClient, store: Store
) -> None:
    _, secret = await store.create_key("ops", tenant_id="default")
    for asked, landed in (("/ui/messages?status=failed", "/ui/messages?status=failed"),
                          ("https://evil.example/", "/ui"), ("//evil.example", "/ui")):  # fmt: skip
        app_client.cookies.clear()
        form = await app_client.get("/ui/login", params={"next": asked})
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        answer = await app_client.post(
            "/ui/login", data={"csrf": token[1], "key": secret, "next": asked}
        )
        assert answer.headers["location"] == landed


async def test_the_console_can_be_turned_off(settings: Settings, store: Store) -> None:
    off = settings.model_copy(
        update={"console": settings.console.model_copy(update={"enabled": False})}
    )
    app = create_app(off, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test"
    ) as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/ui")).status_code == 404


async def test_cancel_and_retry_from_a_message_page(
    app_client: httpx.AsyncClient, store: Store
) -> None:
    _, secret = await store.create_key("ops", tenant_id="default")
    csrf = await log_in(app_client, secret)
    sent = await app_client.post(
        "/ui/send",
        data={
            "csrf": csrf,
            "from": "a@example.com",
            "to": "b@example.org",
            "subject": "S",
            "text": "t",
            "tags": "one, two",
        },
        files={"attachments": ("a.csv", b"x,y\n", "text/csv")},
    )
    assert sent.status_code == 303
    page = sent.headers["location"]
    view = await store.get_message("default", page.rsplit("/", 1)[1])
    assert view.envelope["tags"] == ["one", "two"]
    assert (await app_client.get(page)).text.count('action="' + page + '/cancel"') == 1
    assert (await app_client.post(f"{page}/cancel", data={"csrf": csrf})).status_code == 303
    assert (await store.get_message("default", view.id)).status == "cancelled"
    refused = await app_client.post(f"{page}/retry", data={"csrf": csrf})
    assert refused.status_code == 409 and "only failed messages" in refused.text
    unknown = await app_client.post(f"{page}/explode", data={"csrf": csrf})
    assert unknown.status_code == 404
