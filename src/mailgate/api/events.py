"""`/v1/events`: the tenant's events across its messages, as a list and as a live stream.

`GET /v1/events` lists them newest first, with a cursor. `GET /v1/events/stream`
serves the same objects as Server-Sent Events, oldest first:

```
id: 42
event: sent
data: {"id": 42, "message_id": "msg_...", "type": "sent", "at": "...", "detail": {...}}

```

It starts after the `Last-Event-ID` header (what a browser's `EventSource` sends
when it reconnects), else after `?after=`, else from now on. Events are sent in
id order, each once; how no event is skipped when PostgreSQL commits ids out of
order is in `mailgate.store.eventlog`. A comment line (`: keepalive`) goes out
whenever nothing else has for `heartbeat` seconds, so proxies keep the
connection open.

The stream reads the store every half second (one small read) and ends when the
client goes away, after `max_seconds`, or when `close_event_streams()` is called
as the server shuts down (the client then reconnects with `Last-Event-ID`).
A failed read does not end it: the next poll tries again.
"""

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, MESSAGE_ID, TenantQuery
from mailgate.errors import InvalidRequest, StoreUnavailable
from mailgate.message import EventType, rfc3339
from mailgate.store import Scope
from mailgate.store.eventlog import EventFilter, EventTail, LoggedEvent

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
"""How often a stream reads the store for new events."""
SOON_SECONDS = 0.1
"""How soon it reads again while a smaller id is still expected (a commit in flight)."""
RETRY_MILLISECONDS = 2000
"""The reconnection delay the stream asks `EventSource` clients to use."""
MAX_EVENT_ID = 2**63 - 1


_closing: set[asyncio.Event] = set()
"""One per open stream: set to end it."""


def close_event_streams() -> None:
    """End every open event stream of this process, at their next step.

    Call it as the server begins to shut down: a stream otherwise lasts until
    the server's graceful timeout cancels it. Clients reconnect (to another
    process, or this one once it is back) with `Last-Event-ID` and miss nothing.
    """
    for event in list(_closing):
        event.set()


def open_event_streams() -> int:
    """How many event streams this process is serving."""
    return len(_closing)


class EventOut(BaseModel):
    id: int
    message_id: str
    type: str
    at: datetime
    detail: dict[str, Any]


class EventList(BaseModel):
    data: list[EventOut]
    next_cursor: str | None


def event_json(event: LoggedEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "message_id": event.message_id,
        "type": event.type,
        "at": rfc3339(event.at),
        "detail": event.detail,
    }


def server_sent(event: LoggedEvent) -> str:
    """One event in the SSE wire format (JSON has no raw newline, so one `data:` line)."""
    data = json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


def _message_id(value: str | None) -> str | None:
    if value is not None and not MESSAGE_ID.match(value):
        raise InvalidRequest(f"{value!r} is not a message id", field="message_id")
    return value


def _last_event_id(value: str | None) -> int | None:
    """The `Last-Event-ID` header: an id this stream gave, or empty (start from now)."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > MAX_EVENT_ID:
        raise InvalidRequest("Last-Event-ID is not an event id", field="Last-Event-ID")
    return int(value)


TypeQuery = Annotated[EventType | None, Query(description="Only events of this type.")]
MessageQuery = Annotated[
    str | None, Query(max_length=30, description="Only this message's events (msg_...).")
]
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events (`text/event-stream`), oldest first",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def events_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/events", tags=["events"])
    Reader = Annotated[Caller, Depends(ctx.guard.require(Scope.READ))]

    async def filters_of(
        caller: Caller, tenant: str | None, type_: EventType | None, message_id: str | None
    ) -> EventFilter:
        return EventFilter(
            tenant_id=await ctx.listed_tenant(caller, tenant),
            type=type_.value if type_ is not None else None,
            message_id=_message_id(message_id),
        )

    @router.get(
        "",
        summary="List the tenant's events, newest first",
        responses={200: {"model": EventList}, **ERRORS},
    )
    async def list_events(
        caller: Reader,
        type: TypeQuery = None,
        message_id: MessageQuery = None,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[int | None, Query(ge=1, le=MAX_EVENT_ID)] = None,
    ) -> JSONResponse:
        """Every event of the tenant's messages (`?tenant=*`, admin keys: of every tenant)."""
        found = await ctx.store.list_events(
            await filters_of(caller, tenant, type, message_id), limit=limit + 1, before_id=cursor
        )
        page = found[:limit]
        return JSONResponse(
            {
                "data": [event_json(e) for e in page],
                "next_cursor": str(page[-1].id) if len(found) > limit else None,
            }
        )

    @router.get(
        "/stream",
        summary="The tenant's events, live, as Server-Sent Events",
        response_class=StreamingResponse,
        responses={**_STREAM, **ERRORS},
    )
    async def stream_events(
        request: Request,
        caller: Reader,
        type: TypeQuery = None,
        message_id: MessageQuery = None,
        tenant: TenantQuery = None,
        after: Annotated[
            int | None,
            Query(ge=0, le=MAX_EVENT_ID, description="Start after this event id."),
        ] = None,
        heartbeat: Annotated[
            float, Query(ge=1, le=300, description="Seconds of silence before a keepalive.")
        ] = 15,
        max_seconds: Annotated[
            float | None,
            Query(ge=0, le=86400, description="End the stream after this long (reconnect)."),
        ] = None,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="Resume after this event id (sent by EventSource); wins over after.",
            ),
        ] = None,
    ) -> StreamingResponse:
        """`id:` is the event id, `event:` its type, `data:` the event as the list shows it."""
        filters = await filters_of(caller, tenant, type, message_id)
        resume = _last_event_id(last_event_id)
        # Started before answering, so a store that is down is a 503, not an empty stream.
        tail = await ctx.store.follow_events(filters, after=resume if resume is not None else after)
        return StreamingResponse(
            serve_stream(request, tail, heartbeat=heartbeat, max_seconds=max_seconds),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def serve_stream(
    request: Request, tail: EventTail, *, heartbeat: float, max_seconds: float | None
) -> AsyncIterator[str]:
    """The stream's body: events as they settle, keepalives in the silences."""
    loop = asyncio.get_running_loop()
    closing = asyncio.Event()
    _closing.add(closing)
    deadline = loop.time() + max_seconds if max_seconds is not None else math.inf
    failing = False
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        last_sent = loop.time()
        while not closing.is_set() and not await request.is_disconnected():
            delay = POLL_SECONDS
            try:
                found = await tail.poll()
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("event stream: %s; trying again", exc)
                failing = True
            else:
                failing = False
                if found:
                    yield "".join(server_sent(e) for e in found)
                    last_sent = loop.time()
                if tail.full:
                    delay = 0
                elif tail.waiting:
                    delay = SOON_SECONDS
            now = loop.time()
            if now - last_sent >= heartbeat:
                yield ": keepalive\n\n"
                last_sent = now
            if now >= deadline:
                return
            delay = min(delay, last_sent + heartbeat - now, deadline - now)
            if delay > 0:
                try:
                    await asyncio.wait_for(closing.wait(), delay)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # a full batch: let others run between reads
    finally:
        _closing.discard(closing)
