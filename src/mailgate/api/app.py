"""`create_app`: the HTTP API as one ASGI app, built from explicit parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter

from mailgate import __version__
from mailgate.api.accept import Acceptor
from mailgate.api.audit import audit_router
from mailgate.api.auth import Guard, Requirement
from mailgate.api.context import ApiContext
from mailgate.api.errors import install_error_handlers
from mailgate.api.events import events_router
from mailgate.api.guard import RequestLimits
from mailgate.api.inbound import SIGNATURE_SCOPE, InboundWebhooks, inbound_router
from mailgate.api.keys import keys_router
from mailgate.api.messages import messages_router
from mailgate.api.ops import ops_router
from mailgate.api.providers import providers_router
from mailgate.api.schemas import BatchIn, MessageIn
from mailgate.api.sendpath import Api, SendPath
from mailgate.api.suppressions import suppressions_router
from mailgate.api.tenants import tenants_router
from mailgate.api.webhooks import webhooks_router
from mailgate.compat import compat_routers
from mailgate.config import Settings
from mailgate.console import install_console
from mailgate.metrics import Metrics
from mailgate.store import Store


def create_app(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    *,
    on_state_change: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API. `settings.providers` must list the providers the worker uses."""
    ctx = ApiContext(
        settings=settings,
        store=store,
        metrics=metrics,
        guard=Guard(store),
        acceptor=Acceptor(store, metrics, (p.name for p in settings.providers)),
    )
    if on_state_change is not None:
        ctx.on_state_change = on_state_change
    hooks = InboundWebhooks(list(settings.providers))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await hooks.close()

    app = Api(
        lifespan=lifespan,
        # mailgate's metrics are Prometheus'; FastAPI's OpenTelemetry hooks cost
        # a provider lookup per request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="mailgate",
        version=__version__,
        summary="A self-hosted email gateway: accept, queue, deliver with failover.",
    )
    app.state.ctx = ctx
    install_error_handlers(app, metrics)
    for router in (
        messages_router(ctx),
        providers_router(ctx),
        tenants_router(ctx),
        keys_router(ctx),
        audit_router(ctx),
        inbound_router(ctx, hooks),
        suppressions_router(ctx),
        webhooks_router(ctx),
        events_router(ctx),
    ):
        app.include_router(declare_scopes(router))
    app.include_router(ops_router(ctx))
    for name, router in compat_routers(ctx).items():
        declare_scopes(router)
        app.include_router(router, prefix=f"/compat/{name}", tags=[f"drop-in: {name}"])
        app.include_router(router, include_in_schema=False)  # for SDKs that drop a base path
    if settings.console.enabled:
        install_console(app, ctx)
    app.add_middleware(RequestLimits, settings=settings.server)
    app.send_path = RequestLimits(SendPath(ctx), settings=settings.server)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


SCOPE_EXTENSION = "x-mailgate-scope"
ANY_KEY = "any"


def declare_scopes(router: APIRouter) -> APIRouter:
    """Check that every route of an API router says who may call it, and show it in the docs.

    A route declares its scope with a `Requirement` dependency (or, for the
    send routes that check the key themselves, with `x-mailgate-scope` in
    its `openapi_extra`). A route without either stops the app from being
    built, so nothing is ever added unguarded.
    """
    for route in router.routes:
        assert isinstance(route, APIRoute)
        extra = dict(route.openapi_extra or {})
        found = _requirement(route.dependant)
        if found is not None:
            extra[SCOPE_EXTENSION] = found.scope.value if found.scope is not None else ANY_KEY
        if SCOPE_EXTENSION not in extra:
            raise RuntimeError(f"route {route.methods} {route.path} declares no scope")
        route.openapi_extra = extra
    return router


def _requirement(dependant: Dependant) -> Requirement | None:
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, Requirement):
            return dependency.call
        found = _requirement(dependency)
        if found is not None:
            return found
    return None


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bodies the send routes validate themselves, the bearer
    key, `Retry-After`, and without the 422 answers FastAPI documents but mailgate never
    gives (its validation errors are 400s)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in (MessageIn, BatchIn):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas[model.__name__] = body
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        components["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
        retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                # Validation errors are answered 400 in the error shape, never 422.
                operation["responses"].pop("422", None)
                signed = operation.get(SCOPE_EXTENSION) == SIGNATURE_SCOPE
                if path.startswith("/v1") and not signed:
                    operation["security"] = [{"key": []}]
                for status in ("429", "503"):
                    if status in operation["responses"]:
                        operation["responses"][status]["headers"] = retry_after
        app.openapi_schema = schema
    return app.openapi_schema
