"""`/v1/webhooks`: the tenant's endpoints, what was delivered to them, tests and retries.

Reading needs `read`, changing `manage`; another tenant's endpoint is
`404`, as for one that does not exist. The signing secret is in the answer
that creates the endpoint and nowhere else. Deliveries themselves are the
worker's (`mailgate.delivery.webhooks`).
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, SINGLE_LINE, TenantQuery
from mailgate.delivery.webhooks import check_endpoint
from mailgate.errors import InvalidRequest, NotFound
from mailgate.message import rfc3339
from mailgate.store import Scope
from mailgate.store.outbox import EVENT_TYPES
from mailgate.store.webhooks import Delivery, Endpoint

WEBHOOK_ID = re.compile(r"^wh_[0-9A-HJKMNP-TV-Z]{26}$")
SUBSCRIBABLE = tuple(t for t in EVENT_TYPES if t != "webhook.test")

Url = Annotated[str, Field(min_length=8, max_length=2048, pattern=SINGLE_LINE)]
Events = Annotated[list[str], Field(min_length=1, max_length=len(SUBSCRIBABLE) + 1)]
Description = Annotated[str, Field(max_length=500, pattern=SINGLE_LINE)]


def _events(value: list[str] | None) -> list[str]:
    if value is None:
        raise ValueError("events cannot be null")
    unknown = [e for e in value if e != "*" and e not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(
            f"unknown event type {unknown[0]!r}; one of {', '.join(SUBSCRIBABLE)} or *"
        )
    return list(dict.fromkeys(value))


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Url
    events: Events = ["*"]
    description: Description | None = None
    tenant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None

    _check_events = field_validator("events")(_events)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = None

    _check_events = field_validator("events")(_events)

    @field_validator("url", "enabled")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null")
        return value


class WebhookOut(BaseModel):
    id: str
    tenant_id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    secret: str | None = None


class WebhookList(BaseModel):
    data: list[WebhookOut]
    next_cursor: str | None


class TryOut(BaseModel):
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    event_id: str
    event_type: str
    message_id: str | None
    status: Literal["pending", "delivering", "delivered", "failed"]
    tries: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    attempts: list[TryOut]


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


def webhook_json(w: Endpoint, *, secret: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": w.id,
        "tenant_id": w.tenant_id,
        "url": w.url,
        "events": list(w.events),
        "description": w.description,
        "enabled": w.enabled,
        "disabled_reason": w.disabled_reason,
        "created_at": rfc3339(w.created_at),
        "updated_at": rfc3339(w.updated_at),
    }
    if secret:
        data["secret"] = w.secret
    return data


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "message_id": d.message_id,
        "status": d.status,
        "tries": d.tries,
        "next_attempt_at": rfc3339(d.next_attempt_at),
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "attempts": [
            {
                "at": rfc3339(t.at),
                "status_code": t.status_code,
                "duration_ms": t.duration_ms,
                "error": t.error,
            }
            for t in d.attempts
        ],
    }


def _webhook_id(value: str) -> str:
    if not WEBHOOK_ID.match(value):
        raise InvalidRequest(f"{value!r} is not a webhook id", field="id")
    return value


async def usable_url(ctx: ApiContext, url: str) -> str:
    """The endpoint's URL, if webhooks may be sent there (`block_private_addresses`)."""
    try:
        await check_endpoint(url, block_private=ctx.settings.webhooks.block_private_addresses)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="url") from None
    return url


async def make_webhook(ctx: ApiContext, caller: Caller, body: WebhookIn) -> Endpoint:
    """A new endpoint as `caller` may add it (the API and the console both call this)."""
    tenant_id = body.tenant_id or caller.tenant.id
    if tenant_id != caller.tenant.id:
        if not caller.is_admin:
            raise NotFound(f"no tenant {tenant_id}", field="tenant_id")
        await ctx.store.get_tenant(tenant_id)
    return await ctx.store.create_webhook(
        tenant_id, await usable_url(ctx, body.url), body.events, body.description,
        actor=caller.actor,
    )  # fmt: skip


def webhooks_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["webhooks"])
    Reader = Annotated[Caller, Depends(ctx.guard.require(Scope.READ))]
    Manager = Annotated[Caller, Depends(ctx.guard.require(Scope.MANAGE))]

    async def usable(url: str) -> str:
        return await usable_url(ctx, url)

    @router.post(
        "/v1/webhooks",
        status_code=201,
        summary="Add an endpoint (its signing secret is shown this once)",
        responses={201: {"model": WebhookOut}, **ERRORS},
    )
    async def create_webhook(body: WebhookIn, caller: Manager) -> JSONResponse:
        endpoint = await make_webhook(ctx, caller, body)
        return JSONResponse(webhook_json(endpoint, secret=True), status_code=201)

    @router.get(
        "/v1/webhooks",
        summary="List endpoints, newest first",
        responses={200: {"model": WebhookList}, **ERRORS},
    )
    async def list_webhooks(
        caller: Reader,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if cursor is not None and not WEBHOOK_ID.match(cursor):
            raise InvalidRequest("not a cursor this list gave", field="cursor")
        found = await ctx.store.list_webhooks(
            tenant_id=await ctx.listed_tenant(caller, tenant), limit=limit + 1, before_id=cursor
        )
        page = found[:limit]
        return JSONResponse(
            {
                "data": [webhook_json(w) for w in page],
                "next_cursor": page[-1].id if len(found) > limit else None,
            }
        )

    @router.get(
        "/v1/webhooks/{webhook_id}",
        summary="One endpoint",
        responses={200: {"model": WebhookOut}, **ERRORS},
    )
    async def get_webhook(webhook_id: str, caller: Reader) -> JSONResponse:
        found = await ctx.store.get_webhook(caller.scope_of(), _webhook_id(webhook_id))
        return JSONResponse(webhook_json(found))

    @router.patch(
        "/v1/webhooks/{webhook_id}",
        summary="Change an endpoint (`enabled: true` turns a disabled one back on)",
        responses={200: {"model": WebhookOut}, **ERRORS},
    )
    async def update_webhook(webhook_id: str, body: WebhookPatch, caller: Manager) -> JSONResponse:
        values = body.model_dump(exclude_unset=True)
        if "url" in values:
            await usable(values["url"])
        changed = await ctx.store.update_webhook(
            caller.scope_of(), _webhook_id(webhook_id), actor=caller.actor, **values
        )
        return JSONResponse(webhook_json(changed))

    @router.delete(
        "/v1/webhooks/{webhook_id}",
        status_code=204,
        summary="Remove an endpoint and its delivery log",
        responses=ERRORS,
    )
    async def delete_webhook(webhook_id: str, caller: Manager) -> Response:
        await ctx.store.delete_webhook(
            caller.scope_of(), _webhook_id(webhook_id), actor=caller.actor
        )
        return Response(status_code=204)

    @router.post(
        "/v1/webhooks/{webhook_id}/test",
        status_code=202,
        summary="Send the endpoint a `webhook.test` event",
        responses=ERRORS,
    )
    async def test_webhook(webhook_id: str, caller: Manager) -> JSONResponse:
        delivery_id = await ctx.store.test_webhook(
            caller.scope_of(), _webhook_id(webhook_id), actor=caller.actor
        )
        return JSONResponse({"delivery_id": delivery_id}, status_code=202)

    @router.get(
        "/v1/webhooks/{webhook_id}/deliveries",
        summary="What was delivered to the endpoint, newest first, with every try",
        responses={200: {"model": DeliveryList}, **ERRORS},
    )
    async def list_deliveries(
        webhook_id: str,
        caller: Reader,
        status: Annotated[
            Literal["pending", "delivering", "delivered", "failed"] | None, Query()
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> JSONResponse:
        found = await ctx.store.webhook_deliveries(
            caller.scope_of(),
            _webhook_id(webhook_id),
            limit=limit + 1,
            before_id=cursor,
            status=status,
        )
        page = found[:limit]
        return JSONResponse(
            {
                "data": [delivery_json(d) for d in page],
                "next_cursor": str(page[-1].id) if len(found) > limit else None,
            }
        )

    @router.post(
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        status_code=202,
        summary="Try a failed delivery again now",
        responses=ERRORS,
    )
    async def retry_delivery(
        webhook_id: str, delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)], caller: Manager
    ) -> JSONResponse:
        await ctx.store.retry_webhook_delivery(
            caller.scope_of(), _webhook_id(webhook_id), delivery_id, actor=caller.actor
        )
        return JSONResponse({"delivery_id": delivery_id, "status": "pending"}, status_code=202)

    return router
