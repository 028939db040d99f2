"""`/v1/messages`: send (one or a batch), read, list, cancel, retry."""

import hashlib
import json
import re
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from mailgate.api.context import ApiContext
from mailgate.api.errors import error_body, validation_error
from mailgate.api.render import message_json, new_message_json
from mailgate.api.schemas import (
    BatchIn,
    BatchOut,
    ErrorOut,
    MessageIn,
    MessageList,
    MessageOut,
)
from mailgate.errors import InvalidRequest, RequestError
from mailgate.message import Status, new_id
from mailgate.store import ApiKey, NewMessage, utcnow

_ID = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    413: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


def _check_id(message_id: str) -> str:
    if not _ID.match(message_id):
        raise InvalidRequest(f"{message_id!r} is not a message id", field="id")
    return message_id


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable characters", field="Idempotency-Key"
        )
    return value


def _request_hash(message: MessageIn) -> str:
    canonical = json.dumps(
        message.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


def _documented_body(schema: str) -> dict[str, Any]:
    """The OpenAPI request body and header of a send route (schemas added in `create_app`)."""
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
    }


def messages_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/messages", tags=["messages"])
    Key = Annotated[ApiKey, Depends(ctx.keys)]

    def prepare(message: MessageIn, tenant_id: str, idempotency_key: str | None) -> NewMessage:
        """Everything about a message that can be refused before it is stored."""
        email = message.to_email()
        now = utcnow()
        send_at = message.schedule(now)
        if message.provider is not None and message.provider not in ctx.provider_names:
            known = ", ".join(sorted(ctx.provider_names)) or "none"
            raise InvalidRequest(
                f"no provider {message.provider!r} is configured (configured: {known})",
                field="provider",
            )
        return NewMessage(
            id=new_id("msg"),
            tenant_id=tenant_id,
            email=email,
            created_at=now,
            send_at=send_at,
            forced_provider=message.provider,
            idempotency_key=idempotency_key,
            request_hash=_request_hash(message) if idempotency_key is not None else None,
        )

    # The two send routes take the raw request and validate the body with
    # pydantic themselves: measured, FastAPI's parameter solving cost about
    # as much CPU as everything else on the accept path. `openapi_extra`
    # keeps their documented body and header.
    @router.post(
        "",
        status_code=202,
        summary="Send a message",
        responses={202: {"model": MessageOut}, 200: {"model": MessageOut}, **_ERRORS},
        openapi_extra=_documented_body("MessageIn"),
    )
    async def send(request: Request) -> JSONResponse:
        """Store the message and answer 202 once it is committed; a worker delivers it.

        With an `Idempotency-Key`, repeating the same request answers 200 with
        the original message; the same key with another body is 409.
        """
        started = time.perf_counter()
        key = await ctx.keys(request)
        message = await _body(request, MessageIn)
        idempotency_key = _idempotency_key(request.headers.get("idempotency-key"))
        item = prepare(message, key.tenant_id, idempotency_key)
        accepted = await ctx.store.accept(item)
        if not accepted.created:
            view = await ctx.store.get_message(key.tenant_id, accepted.id)
            return JSONResponse(message_json(view), status_code=200)
        ctx.metrics.accepted.inc()
        ctx.metrics.accept_seconds.observe(time.perf_counter() - started)
        return JSONResponse(new_message_json(item), status_code=202)

    @router.post(
        "/batch",
        summary="Send up to 1000 messages",
        responses={200: {"model": BatchOut}, **_ERRORS},
        openapi_extra=_documented_body("BatchIn"),
    )
    async def send_batch(request: Request) -> JSONResponse:
        """Validate each message on its own; store the valid ones; answer per item.

        An `Idempotency-Key` applies to each item as `<key>:<index>`.
        """
        key = await ctx.keys(request)
        batch = await _body(request, BatchIn)
        base_key = _idempotency_key(request.headers.get("idempotency-key"))
        results: list[dict[str, Any]] = [{} for _ in batch.messages]
        ready: list[tuple[int, NewMessage]] = []
        for index, raw in enumerate(batch.messages):
            try:
                item_key = f"{base_key}:{index}" if base_key is not None else None
                item = prepare(MessageIn.model_validate(raw), key.tenant_id, item_key)
            except ValidationError as exc:
                results[index] = {"index": index, **error_body(validation_error(exc))}
            except RequestError as exc:
                results[index] = {"index": index, **error_body(exc)}
            else:
                ready.append((index, item))
        outcomes = await ctx.store.accept_many([item for _, item in ready])
        for (index, _), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, RequestError):
                results[index] = {"index": index, **error_body(outcome)}
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                if outcome.created:
                    ctx.metrics.accepted.inc()
                results[index] = {"index": index, "id": outcome.id, "status": outcome.status.value}
        return JSONResponse({"data": results})

    @router.get(
        "",
        summary="List messages, newest first",
        responses={200: {"model": MessageList}, **_ERRORS},
    )
    async def list_messages(
        key: Key,
        status: Annotated[Status | None, Query()] = None,
        tag: Annotated[str | None, Query(max_length=128)] = None,
        to: Annotated[str | None, Query(max_length=320)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query()] = None,
    ) -> JSONResponse:
        if cursor is not None and not _ID.match(cursor):
            raise InvalidRequest("cursor is not one this API gave out", field="cursor")
        views = await ctx.store.list_messages(
            key.tenant_id,
            limit=limit + 1,
            status=status.value if status is not None else None,
            tag=tag,
            to=to,
            before_id=cursor,
        )
        page = views[:limit]
        next_cursor = page[-1].id if len(views) > limit else None
        return JSONResponse(
            {"data": [message_json(v, history=False) for v in page], "next_cursor": next_cursor}
        )

    @router.get(
        "/{message_id}",
        summary="A message with its attempts and events",
        responses={200: {"model": MessageOut}, **_ERRORS},
    )
    async def get_message(message_id: str, key: Key) -> JSONResponse:
        view = await ctx.store.get_message(key.tenant_id, _check_id(message_id))
        return JSONResponse(message_json(view))

    @router.post(
        "/{message_id}/cancel",
        summary="Cancel a queued or scheduled message",
        responses={200: {"model": MessageOut}, **_ERRORS},
    )
    async def cancel(message_id: str, key: Key) -> JSONResponse:
        await ctx.store.cancel(key.tenant_id, _check_id(message_id))
        return JSONResponse(message_json(await ctx.store.get_message(key.tenant_id, message_id)))

    @router.post(
        "/{message_id}/retry",
        summary="Queue a failed message again",
        responses={200: {"model": MessageOut}, **_ERRORS},
    )
    async def retry(message_id: str, key: Key) -> JSONResponse:
        await ctx.store.retry(key.tenant_id, _check_id(message_id))
        return JSONResponse(message_json(await ctx.store.get_message(key.tenant_id, message_id)))

    return router
