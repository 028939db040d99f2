"""`create_app`: the HTTP API as one ASGI app, built from explicit parts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailgate import __version__
from mailgate.api.auth import KeyChecker
from mailgate.api.context import ApiContext
from mailgate.api.errors import install_error_handlers
from mailgate.api.messages import messages_router
from mailgate.api.ops import ops_router
from mailgate.api.providers import providers_router
from mailgate.api.schemas import BatchIn, MessageIn
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Store


def create_app(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    *,
    on_provider_change: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API. `settings.providers` must list the providers the worker uses."""
    ctx = ApiContext(settings=settings, store=store, metrics=metrics, keys=KeyChecker(store))
    if on_provider_change is not None:
        ctx.on_provider_change = on_provider_change
    app = FastAPI(
        title="mailgate",
        version=__version__,
        summary="A self-hosted email gateway: accept, queue, deliver with failover.",
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(messages_router(ctx))
    app.include_router(providers_router(ctx))
    app.include_router(ops_router(ctx))
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_request_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bodies the send routes validate themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (MessageIn, BatchIn):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413 before they are read into memory.

    `Content-Length` is checked up front; a chunked body is counted as it
    arrives and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    raise _TooLarge
            return message

        answered = False

        async def guarded_send(message: Message) -> None:
            # Once the body went over the limit, whatever the app answers (FastAPI
            # turns a failed body read into a 400) is replaced by our 413.
            nonlocal answered
            if refused:
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await self._refuse(send)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _TooLarge:
            if not answered:
                answered = True
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = (
            b'{"error":{"code":"payload_too_large","message":"the request body is larger than '
            + str(self.max_bytes).encode()
            + b' bytes","field":"body"}}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
