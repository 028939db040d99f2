"""`/v1/messages`: send (one or a batch), read, list, cancel, retry."""

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.render import message_json
from mailgate.api.schemas import (
    BatchOut,
    ErrorOut,
    MessageList,
    MessageOut,
    RetryIn,
    RetryOut,
)
from mailgate.api.sendpath import send_many, send_one
from mailgate.errors import InvalidRequest
from mailgate.message import Status
from mailgate.store import Scope
from mailgate.store.messages import MessageFilter

MESSAGE_ID = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
"""No control characters: nothing the stores cannot keep (PostgreSQL refuses NUL)."""
TENANT_ID = r"^[A-Za-z0-9_-]{1,64}$"
TenantQuery = Annotated[
    str | None,
    Query(
        pattern=r"^([A-Za-z0-9_-]{1,64}|\*)$",
        description="Admin keys: another tenant's id, or * for every tenant's.",
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 414, 429, 431, 503)
}
"""Every error a route under /v1 may answer, for the OpenAPI document."""


def _check_id(message_id: str) -> str:
    if not MESSAGE_ID.match(message_id):
        raise InvalidRequest(f"{message_id!r} is not a message id", field="id")
    return message_id


def _aware(at: datetime | None, field: str) -> datetime | None:
    if at is not None and at.tzinfo is None:
        raise InvalidRequest(f"{field} needs a time zone (RFC 3339, e.g. ...Z)", field=field)
    return at


async def _parts(request: Request) -> tuple[str | None, str | None, bytes]:
    """What a send route reads from its request: the key's and idempotency headers, the body."""
    headers = request.headers
    return headers.get("authorization"), headers.get("idempotency-key"), await request.body()


def _documented_body(schema: str, scope: Scope) -> dict[str, Any]:
    """A send route's OpenAPI body, header and scope (schemas added in `create_app`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes the request safe to repeat (1-255 printable characters).",
                "schema": {"type": "string", "maxLength": 255},
            }
        ],
        "x-mailgate-scope": scope.value,
    }


def messages_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/messages", tags=["messages"])
    Reader = Annotated[Caller, Depends(ctx.guard.require(Scope.READ))]
    Manager = Annotated[Caller, Depends(ctx.guard.require(Scope.MANAGE))]

    # The two send routes take the raw request, check the key and validate the
    # body with pydantic themselves (`mailgate.api.sendpath`, which also answers
    # them in front of FastAPI: measured, the framework's layers cost more CPU
    # than the accept itself). `openapi_extra` keeps their documented body,
    # header and scope.
    @router.post(
        "",
        status_code=202,
        summary="Send a message",
        responses={202: {"model": MessageOut}, 200: {"model": MessageOut}, **ERRORS},
        openapi_extra=_documented_body("MessageIn", Scope.SEND),
    )
    async def send(request: Request) -> JSONResponse:
        """Store the message and answer 202 once it is committed; a worker delivers it.

        With an `Idempotency-Key`, repeating the same request answers 200 with
        the original message; the same key with another body is 409.
        """
        status, content = await send_one(ctx, *await _parts(request))
        return JSONResponse(content, status_code=status)

    @router.post(
        "/batch",
        summary="Send up to 1000 messages",
        responses={200: {"model": BatchOut}, **ERRORS},
        openapi_extra=_documented_body("BatchIn", Scope.SEND),
    )
    async def send_batch(request: Request) -> JSONResponse:
        """Validate each message on its own; store the valid ones; answer per item.

        An `Idempotency-Key` applies to each item as `<key>:<index>`.
        """
        status, content = await send_many(ctx, *await _parts(request))
        return JSONResponse(content, status_code=status)

    @router.get(
        "",
        summary="List messages, newest first",
        responses={200: {"model": MessageList}, **ERRORS},
    )
    async def list_messages(
        caller: Reader,
        status: Annotated[Status | None, Query()] = None,
        tag: Annotated[str | None, Query(max_length=128, pattern=SINGLE_LINE)] = None,
        to: Annotated[str | None, Query(max_length=320, pattern=SINGLE_LINE)] = None,
        provider: Annotated[str | None, Query(max_length=64, pattern=SINGLE_LINE)] = None,
        since: Annotated[datetime | None, Query(description="Created at or after.")] = None,
        until: Annotated[datetime | None, Query(description="Created before.")] = None,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query()] = None,
    ) -> JSONResponse:
        if cursor is not None and not MESSAGE_ID.match(cursor):
            raise InvalidRequest("cursor is not one this API gave out", field="cursor")
        where = MessageFilter(
            status=status.value if status is not None else None,
            tag=tag,
            to=to,
            provider=provider,
            since=_aware(since, "since"),
            until=_aware(until, "until"),
        )
        views = await ctx.store.list_messages(
            await ctx.listed_tenant(caller, tenant), limit=limit + 1, where=where, before_id=cursor
        )
        page = views[:limit]
        next_cursor = page[-1].id if len(views) > limit else None
        return JSONResponse(
            {"data": [message_json(v, history=False) for v in page], "next_cursor": next_cursor}
        )

    @router.post(
        "/retry",
        summary="Queue every failed message matching a filter again",
        responses={200: {"model": RetryOut}, **ERRORS},
    )
    async def retry_matching(body: RetryIn, caller: Manager) -> JSONResponse:
        """One request, one transaction, one audit record. `dry_run` counts the
        matches first and changes nothing."""
        where = MessageFilter(
            status=body.status,
            provider=body.provider,
            tag=body.tag,
            to=body.to,
            since=_aware(body.since, "since"),
            until=_aware(body.until, "until"),
        )
        matched, retried = await ctx.store.retry_matching(
            await ctx.listed_tenant(caller, body.tenant),
            where,
            dry_run=body.dry_run,
            actor=caller.actor,
        )
        return JSONResponse({"matched": matched, "retried": retried})

    @router.get(
        "/{message_id}",
        summary="A message with its attempts and events",
        responses={200: {"model": MessageOut}, **ERRORS},
    )
    async def get_message(message_id: str, caller: Reader) -> JSONResponse:
        view = await ctx.store.get_message(caller.scope_of(), _check_id(message_id))
        return JSONResponse(message_json(view))

    @router.post(
        "/{message_id}/cancel",
        summary="Cancel a queued or scheduled message",
        responses={200: {"model": MessageOut}, **ERRORS},
    )
    async def cancel(message_id: str, caller: Manager) -> JSONResponse:
        await ctx.store.cancel(caller.scope_of(), _check_id(message_id), actor=caller.actor)
        return JSONResponse(message_json(await ctx.store.get_message(None, message_id)))

    @router.post(
        "/{message_id}/retry",
        summary="Queue a failed message again",
        responses={200: {"model": MessageOut}, **ERRORS},
    )
    async def retry(message_id: str, caller: Manager) -> JSONResponse:
        await ctx.store.retry(caller.scope_of(), _check_id(message_id), actor=caller.actor)
        return JSONResponse(message_json(await ctx.store.get_message(None, message_id)))

    return router
