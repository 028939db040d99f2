"""The two send routes as plain ASGI, in front of the web framework.

`POST /v1/messages` and `POST /v1/messages/batch` carry nearly all of an API
process's traffic. Measured with py-spy (bench/profile.py), FastAPI's and
Starlette's layers around a route (routing, two exit stacks per request, the
exception wrappers, the response object) took 256 of the 720 µs of CPU a
single accept cost, more than validating and storing the message together.
`Api` (the app `create_app` builds) hands those two routes to `SendPath`,
behind the same `RequestLimits` as every other request but in front of the
framework's stack; every other request goes on to FastAPI.

Nothing about the routes differs: the same guard, the same accept path, the
same refusals (`errors.answer`) and the same JSON. FastAPI still declares
both routes, with the same handlers (`send_one`, `send_many`), for the
OpenAPI document and the scope checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from mailgate.api.auth import Caller, bearer_secret
from mailgate.api.context import ApiContext
from mailgate.api.errors import INTERNAL_ERROR, answer, error_body, validation_error
from mailgate.api.render import message_json, new_message_json
from mailgate.api.schemas import BatchIn, MessageIn, ValidBatchIn
from mailgate.errors import InvalidRequest
from mailgate.store import Scope as KeyScope

log = logging.getLogger(__name__)

SEND = "/v1/messages"
SEND_BATCH = "/v1/messages/batch"


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable characters", field="Idempotency-Key"
        )
    return value


async def caller_of(ctx: ApiContext, authorization: str | None) -> Caller:
    """The caller of a send route: a key with the send scope, within its tenant's rate."""
    caller = await ctx.guard.identify(
        bearer_secret(authorization or ""), KeyScope.SEND, field="Authorization"
    )
    await ctx.guard.limit(caller)
    return caller


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], body: bytes) -> M:
    """The request body as `model`; 400 naming the first bad field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def batch_messages(body: bytes) -> Sequence[MessageIn | dict[str, Any]]:
    """A batch's messages: validated at once when all are valid (the usual batch);
    otherwise as parsed, for `Acceptor.accept_batch` to validate one by one, so each
    refusal names its own message. A refusal of the batch itself is a 400 as before."""
    try:
        return ValidBatchIn.model_validate_json(body).messages
    except ValidationError:
        return validated(BatchIn, body).messages


async def send_one(
    ctx: ApiContext, authorization: str | None, idempotency: str | None, body: bytes
) -> tuple[int, dict[str, Any]]:
    """`POST /v1/messages`: 202 and the message once it is committed (200 and the
    original for an idempotent repeat)."""
    caller = await caller_of(ctx, authorization)
    message = validated(MessageIn, body)
    key = idempotency_key(idempotency)
    item, accepted = await ctx.acceptor.accept(message, caller.tenant, idempotency_key=key)
    if not accepted.created:
        view = await ctx.store.get_message(caller.tenant.id, accepted.id)
        return 200, message_json(view)
    return 202, new_message_json(item)


async def send_many(
    ctx: ApiContext, authorization: str | None, idempotency: str | None, body: bytes
) -> tuple[int, dict[str, Any]]:
    """`POST /v1/messages/batch`: each message validated on its own, the valid ones
    stored in one group, an answer per item."""
    caller = await caller_of(ctx, authorization)
    messages = batch_messages(body)
    base_key = idempotency_key(idempotency)
    items = await ctx.acceptor.accept_batch(messages, caller.tenant, idempotency_key=base_key)
    data: list[dict[str, Any]] = []
    for item in items:
        if item.accepted is not None:
            status = item.accepted.status.value
            data.append({"index": item.index, "id": item.accepted.id, "status": status})
        else:
            assert item.error is not None
            data.append({"index": item.index, **error_body(item.error)})
    return 200, {"data": data}


HANDLERS = {SEND: send_one, SEND_BATCH: send_many}


def render(content: dict[str, Any]) -> bytes:
    """JSON as the framework's `JSONResponse` writes it (UTF-8, no spaces), by orjson."""
    return orjson.dumps(content)


class SendPath:
    """The two send routes as one ASGI app (`Api` hands it their requests)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = HANDLERS[scope["path"]]
        authorization = idempotency = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                idempotency = value.decode("latin-1")
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        try:
            status, content = await handler(self.ctx, authorization, idempotency, b"".join(chunks))
        except Exception as exc:
            found = answer(exc, self.ctx.metrics)
            if found is None:
                log.error("unhandled error", exc_info=exc)
                found = 500, INTERNAL_ERROR, {}
            status, content, headers = found
        body = render(content)
        raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class Api(FastAPI):
    """FastAPI, with `POST /v1/messages` and `POST /v1/messages/batch` answered in front
    of its middleware stack by `SendPath`, behind the same `RequestLimits`.

    FastAPI still declares both routes (same handlers) for the OpenAPI document and
    for a request that arrives under a `root_path`, which goes the framework's way.
    """

    send_path: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.send_path is not None
            and scope["type"] == "http"
            and scope["path"] in HANDLERS
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and not self.root_path
        ):
            await self.send_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
