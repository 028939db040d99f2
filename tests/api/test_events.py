"""The tenant's event list and its live Server-Sent Events stream (`/v1/events`).

The stream is read through a real uvicorn on loopback with httpx streaming:
an in-process ASGI transport buffers a response until it ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from mailgate.api import create_app
from mailgate.api.app import declare_scopes
from mailgate.api.events import (
    EventList,
    close_event_streams,
    events_router,
    open_event_streams,
)
from mailgate.config import Settings
from mailgate.message import new_id
from mailgate.metrics import Metrics
from mailgate.serving import serve_asgi
from mailgate.store import Scope, Store, eventlog, utcnow
from mailgate.store.engine import driver_url
from mailgate.store.eventlog import EventFilter, LoggedEvent
from mailgate.store.tables import events
from tests.helpers import eventually, new_message, tenant

HANG_GUARD = 10.0
"""Seconds a test waits for what must come before it fails (never a timing assertion)."""


def events_app(settings: Settings, store: Store, metrics: Metrics) -> FastAPI:
    """The API, with the events routes whether or not `create_app` registers them yet."""
    app = create_app(settings, store, metrics)
    if not any(getattr(route, "path", None) == "/v1/events" for route in app.routes):
        app.include_router(declare_scopes(events_router(app.state.ctx)))
    return app


@dataclass
class World:
    store: Store
    app: FastAPI
    admin: str
    """An admin key of `default`."""
    other: str
    """The id of a second tenant."""
    other_reader: str
    """A `read` key of the second tenant."""


@pytest.fixture
async def world(settings: Settings, store: Store, metrics: Metrics, api_key: str) -> World:
    other = await store.create_tenant(tenant())
    _, reader = await store.create_key("reader", tenant_id=other.id, scopes=[Scope.READ])
    return World(store, events_app(settings, store, metrics), api_key, other.id, reader)


@asynccontextmanager
async def api(world: World, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.app),
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {key or world.admin}"},
    ) as client:
        yield client


async def accept(store: Store, tenant_id: str = "default") -> str:
    """A new message of the tenant: one `accepted` event."""
    item = new_message(tenant_id=tenant_id)
    await store.accept(item)
    return item.id


async def event_ids(store: Store, tenant_id: str | None) -> list[int]:
    found = await store.list_events(EventFilter(tenant_id), limit=1000)
    return [e.id for e in found]


# --- the list -------------------------------------------------------------------------


async def test_the_list_is_newest_first_and_filters(world: World) -> None:
    first, second = await accept(world.store), await accept(world.store)
    await world.store.cancel("default", first)
    async with api(world) as client:
        answer = await client.get("/v1/events")
        assert answer.status_code == 200, answer.text
        page = EventList.model_validate(answer.json())
        assert [(e.message_id, e.type) for e in page.data] == [
            (first, "cancelled"),
            (second, "accepted"),
            (first, "accepted"),
        ]
        assert [e.id for e in page.data] == sorted((e.id for e in page.data), reverse=True)
        assert page.next_cursor is None
        assert set(answer.json()["data"][0]) == {"id", "message_id", "type", "at", "detail"}

        by_type = (await client.get("/v1/events", params={"type": "accepted"})).json()
        assert [e["message_id"] for e in by_type["data"]] == [second, first]
        by_message = (await client.get("/v1/events", params={"message_id": first})).json()
        assert [e["type"] for e in by_message["data"]] == ["cancelled", "accepted"]
        both = {"message_id": first, "type": "cancelled"}
        assert len((await client.get("/v1/events", params=both)).json()["data"]) == 1
        unknown = {"message_id": new_id("msg")}
        assert (await client.get("/v1/events", params=unknown)).json()["data"] == []


async def test_the_list_pages_with_its_cursor(world: World) -> None:
    for _ in range(5):
        await accept(world.store)
    expected = await event_ids(world.store, "default")
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    async with api(world) as client:
        for _ in range(5):
            page = (await client.get("/v1/events", params=params)).json()
            seen += [e["id"] for e in page["data"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
    assert seen == expected and len(seen) == 5


async def test_another_tenants_events_never_show(world: World) -> None:
    mine = await accept(world.store)
    theirs = await accept(world.store, world.other)
    async with api(world, world.other_reader) as reader:
        listed = (await reader.get("/v1/events")).json()["data"]
        assert [e["message_id"] for e in listed] == [theirs]
        # Another tenant's message id is not a hint: simply nothing.
        answer = await reader.get("/v1/events", params={"message_id": mine})
        assert answer.status_code == 200 and answer.json()["data"] == []
        refused = await reader.get("/v1/events", params={"tenant": "default"})
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "tenant"
    async with api(world) as admin:
        own = (await admin.get("/v1/events")).json()["data"]
        assert [e["message_id"] for e in own] == [mine]
        other = (await admin.get("/v1/events", params={"tenant": world.other})).json()["data"]
        assert [e["message_id"] for e in other] == [theirs]
        every = (await admin.get("/v1/events", params={"tenant": "*"})).json()["data"]
        assert [e["message_id"] for e in every] == [theirs, mine]


@pytest.mark.parametrize(
    ("path", "params", "headers", "field"),
    [
        ("/v1/events", {"limit": 0}, {}, "limit"),
        ("/v1/events", {"limit": 101}, {}, "limit"),
        ("/v1/events", {"type": "lost"}, {}, "type"),
        ("/v1/events", {"message_id": "msg_nope"}, {}, "message_id"),
        ("/v1/events", {"cursor": "abc"}, {}, "cursor"),
        ("/v1/events", {"cursor": 0}, {}, "cursor"),
        ("/v1/events/stream", {"message_id": "nope"}, {}, "message_id"),
        ("/v1/events/stream", {"heartbeat": 0}, {}, "heartbeat"),
        ("/v1/events/stream", {"after": -1}, {}, "after"),
        ("/v1/events/stream", {}, {"Last-Event-ID": "12x"}, "Last-Event-ID"),
        ("/v1/events/stream", {}, {"Last-Event-ID": "9" * 40}, "Last-Event-ID"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    world: World, path: str, params: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    async with api(world) as client:
        answer = await client.get(path, params=params, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"
    assert answer.json()["error"]["field"] == field


async def test_the_stream_needs_the_read_scope(world: World) -> None:
    _, sender = await world.store.create_key("sender", tenant_id="default", scopes=[Scope.SEND])
    async with api(world, sender) as client:
        answer = await client.get("/v1/events/stream")
    assert answer.status_code == 403


# --- the stream -----------------------------------------------------------------------


@dataclass
class Block:
    """One block of the stream: an event, a comment or a `retry:` line."""

    fields: dict[str, str]
    comment: str | None = None

    @property
    def id(self) -> int:
        return int(self.fields["id"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.fields["data"])
        return data


class Stream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def block(self) -> Block | None:
        """The next block; None when the stream ended."""
        return await asyncio.wait_for(self._block(), HANG_GUARD)

    async def _block(self) -> Block | None:
        fields: dict[str, str] = {}
        comment = None
        async for line in self.lines:
            if line == "":
                if fields or comment is not None:
                    return Block(fields, comment)
                continue
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        return None

    async def event(self) -> Block:
        """The next event, past comments and `retry:`."""
        while True:
            block = await self.block()
            assert block is not None, "the stream ended"
            if "id" in block.fields:
                return block

    async def events(self, n: int) -> list[Block]:
        return [await self.event() for _ in range(n)]


@asynccontextmanager
async def streaming(
    base_url: str, key: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=HANG_GUARD) as client,
        client.stream(
            "GET",
            "/v1/events/stream",
            params={"heartbeat": 1, **params},
            headers={"Authorization": f"Bearer {key}", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        first = await stream.block()
        assert first is not None and first.fields.get("retry") == "2000"
        yield stream


async def test_the_stream_sends_new_events_live(world: World) -> None:
    before = await accept(world.store)
    async with serve_asgi(world.app) as server, streaming(server.url, world.admin) as stream:
        live = await accept(world.store)
        await world.store.cancel("default", live)
        accepted, cancelled = await stream.events(2)
    # Only what happened after it started, oldest first, each as the list shows it.
    assert before not in (accepted.data["message_id"], cancelled.data["message_id"])
    assert (accepted.fields["event"], cancelled.fields["event"]) == ("accepted", "cancelled")
    assert accepted.id < cancelled.id and accepted.data["id"] == accepted.id
    listed = await world.store.list_events(EventFilter("default"), limit=2)
    assert [accepted.id, cancelled.id] == [e.id for e in reversed(listed)]
    assert set(cancelled.data) == {"id", "message_id", "type", "at", "detail"}


async def test_the_stream_filters_and_keeps_to_its_tenant(world: World) -> None:
    async with (
        serve_asgi(world.app) as server,
        streaming(server.url, world.other_reader) as theirs,
        streaming(server.url, world.admin, type="cancelled") as cancels,
    ):
        await accept(world.store)  # default's: not for the other tenant's stream
        message = await accept(world.store, world.other)
        await world.store.cancel("default", await accept(world.store))
        await world.store.cancel(world.other, message)
        seen = await theirs.events(2)
        cancelled = await cancels.event()
    assert [(b.data["message_id"], b.data["type"]) for b in seen] == [
        (message, "accepted"),
        (message, "cancelled"),
    ]
    # The admin's stream is its own tenant's unless it names another.
    assert cancelled.data["type"] == "cancelled" and cancelled.data["message_id"] != message


async def test_a_heartbeat_arrives_when_nothing_happens(world: World) -> None:
    async with serve_asgi(world.app) as server, streaming(server.url, world.admin) as stream:
        block = await stream.block()
    assert block is not None and block.comment == "keepalive" and not block.fields


async def test_resuming_with_last_event_id_has_no_gap_and_no_duplicate(world: World) -> None:
    async with serve_asgi(world.app) as server:
        async with streaming(server.url, world.admin) as stream:
            for _ in range(2):
                await accept(world.store)
            received = await stream.events(2)
            assert open_event_streams() == 1
        # Disconnected: the server's side ends, and these happen while the client is away.
        await eventually(lambda: open_event_streams() == 0, timeout=HANG_GUARD)
        missed = [await accept(world.store) for _ in range(3)]
        last = str(received[-1].id)
        # `after` is what the first connection asked; the header wins, as EventSource sends it.
        async with streaming(
            server.url, world.admin, headers={"Last-Event-ID": last}, after=0
        ) as resumed:
            caught_up = await resumed.events(3)
            live = await accept(world.store)
            then = await resumed.event()
    assert [b.data["message_id"] for b in caught_up] == missed
    assert then.data["message_id"] == live
    ids = [b.id for b in received + caught_up] + [then.id]
    assert ids == sorted(set(ids))
    assert ids == sorted(await event_ids(world.store, "default"))


async def test_after_starts_from_a_given_id(world: World) -> None:
    for _ in range(3):
        await accept(world.store)
    ids = sorted(await event_ids(world.store, "default"))
    async with (
        serve_asgi(world.app) as server,
        streaming(server.url, world.admin, after=ids[0]) as stream,
    ):
        assert [b.id for b in await stream.events(2)] == ids[1:]


async def test_max_seconds_and_close_end_the_stream(world: World) -> None:
    async with serve_asgi(world.app) as server:
        async with streaming(server.url, world.admin, max_seconds=0) as stream:
            assert await stream.block() is None
        async with streaming(server.url, world.admin) as stream:
            close_event_streams()
            while (block := await stream.block()) is not None:
                assert block.comment == "keepalive"


async def test_a_gap_in_the_ids_does_not_hold_the_stream(world: World) -> None:
    """A jump in the ids (set by hand; on PostgreSQL also the sequence moved, as after a
    crash) leaves holes that will never fill."""
    message = await accept(world.store)

    def jump(conn: Connection, to: int) -> None:
        conn.execute(
            insert(events).values(id=to, message_id=message, type="opened", at=utcnow(), detail={})
        )
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('events_id_seq', :to)"), {"to": to})

    async with serve_asgi(world.app) as server, streaming(server.url, world.admin) as stream:
        newest = max(await event_ids(world.store, None))
        await world.store.db.write(jump, newest + 5)
        assert (await stream.event()).id == newest + 5
        await world.store.cancel("default", message)
        assert (await stream.event()).data["type"] == "cancelled"


# --- commits out of id order (PostgreSQL) -----------------------------------------------


@asynccontextmanager
async def open_transaction(store: Store) -> AsyncIterator[AsyncConnection]:
    """A connection of its own, in a transaction the test commits or rolls back."""
    engine = create_async_engine(driver_url(store.settings.url))
    try:
        async with engine.connect() as conn:
            await conn.begin()
            yield conn
    finally:
        await engine.dispose()


async def insert_event(conn: AsyncConnection, message_id: str) -> int:
    result = await conn.execute(
        insert(events)
        .values(message_id=message_id, type="opened", at=utcnow(), detail={"late": True})
        .returning(events.c.id)
    )
    return int(result.scalar_one())


def postgresql_only(store: Store) -> None:
    if store.db.is_sqlite:
        pytest.skip("SQLite has one writer: its ids commit in order")


async def test_a_smaller_id_committed_late_holds_back_the_larger_one(store: Store) -> None:
    postgresql_only(store)
    message = await accept(store)
    tail = await store.follow_events(EventFilter("default"), after=None)
    async with open_transaction(store) as late:
        smaller = await insert_event(late, message)
        await store.cancel("default", message)  # commits the larger id
        assert await tail.poll() == [] and tail.waiting
        assert await tail.poll() == []  # still open: still held
        await late.commit()
    ids = [e.id for e in await tail.poll()]
    assert ids[0] == smaller and len(ids) == 2 and ids[1] > smaller
    assert await tail.poll() == [] and not tail.waiting


async def test_a_rolled_back_id_stops_holding_the_stream(store: Store) -> None:
    postgresql_only(store)
    message = await accept(store)
    tail = await store.follow_events(EventFilter("default"), after=None)
    async with open_transaction(store) as late:
        await insert_event(late, message)
        await store.cancel("default", message)
        assert await tail.poll() == []
        await late.rollback()
    # Once no transaction that could hold the id is running, the stream moves on (a
    # poll or two; the 30 s time-out is not what this waits for).
    found: list[LoggedEvent] = []

    async def moved_on() -> bool:
        found.extend(await tail.poll())
        return bool(found)

    await eventually(moved_on, timeout=HANG_GUARD, interval=0.05)
    assert [e.type for e in found] == ["cancelled"] and not tail.waiting


async def test_a_transaction_open_too_long_is_given_up(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgresql_only(store)
    monkeypatch.setattr(eventlog, "HOLE_TIMEOUT_SECONDS", 0.0)
    message = await accept(store)
    tail = await store.follow_events(EventFilter("default"), after=None)
    async with open_transaction(store) as late:
        await insert_event(late, message)
        await store.cancel("default", message)
        assert await tail.poll() == []  # seen missing
        assert [e.type for e in await tail.poll()] == ["cancelled"]  # waited "too long"
        await late.commit()
    assert await tail.poll() == []  # the documented limit: committed too late to stream


async def test_an_event_committed_while_connecting_is_not_lost(store: Store) -> None:
    """A stream from "now" still sends an event whose id was taken before it started."""
    postgresql_only(store)
    message = await accept(store)
    async with open_transaction(store) as late:
        smaller = await insert_event(late, message)
        await store.cancel("default", message)
        tail = await store.follow_events(EventFilter("default"), after=None)
        assert await tail.poll() == [] and tail.waiting
        await late.commit()
    assert [e.id for e in await tail.poll()] == [smaller]


async def test_the_stream_sends_a_late_commit_exactly_once(world: World) -> None:
    postgresql_only(world.store)
    message = await accept(world.store)
    async with serve_asgi(world.app) as server, streaming(server.url, world.admin) as stream:
        async with open_transaction(world.store) as late:
            smaller = await insert_event(late, message)
            await world.store.cancel("default", message)
            # Let the stream read the larger id while the smaller one is uncommitted.
            await asyncio.sleep(1)
            await late.commit()
        first, second = await stream.events(2)
        follow = await accept(world.store)
        third = await stream.event()
    assert first.id == smaller and first.data["detail"] == {"late": True}
    assert second.data["type"] == "cancelled" and second.id > smaller
    assert third.data["message_id"] == follow and third.id > second.id
