"""The server's writes: a response's head and body leave in one write, nothing held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from mailgate.serving import JoinedWrites, RunningServer, serve_asgi


class Recording(asyncio.Transport):
    """What reached the socket's transport, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_head_leaves_with_the_write_after_it() -> None:
    inner = Recording()
    joined = JoinedWrites(inner, asyncio.get_running_loop())
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    joined.write(head)
    assert inner.writes == []
    assert joined.get_write_buffer_size() == len(head)
    joined.write(memoryview(b"{}"))
    assert inner.writes == [head + b"{}"]  # at once, not a turn later
    joined.write(b"more")  # not a head: straight through
    assert inner.writes[1:] == [b"more"]
    await asyncio.sleep(0)
    assert len(inner.writes) == 2


async def test_a_head_nothing_follows_leaves_at_the_end_of_the_turn() -> None:
    inner = Recording()
    joined = JoinedWrites(inner, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def test_a_close_sends_a_waiting_head_first_and_an_abort_drops_it() -> None:
    inner = Recording()
    joined = JoinedWrites(inner, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    joined.close()
    assert inner.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert inner.closed and joined.is_closing()
    await asyncio.sleep(0)  # the scheduled send finds nothing left
    assert len(inner.writes) == 1

    aborted = Recording()
    aborted.abort = aborted.close  # type: ignore[method-assign]
    joined = JoinedWrites(aborted, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    joined.abort()
    await asyncio.sleep(0)
    assert aborted.writes == [] and aborted.closed


async def test_nothing_is_written_to_a_transport_already_closing() -> None:
    inner = Recording()
    joined = JoinedWrites(inner, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    inner.close()  # the peer went away meanwhile
    await asyncio.sleep(0)
    assert inner.writes == []


release = asyncio.Event()


async def streamed(scope: Scope, receive: Receive, send: Send) -> None:
    """A body in two parts, the second only once the test has read the first."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/small":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["query_string"]})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first;", "more_body": True})
    await release.wait()
    await send({"type": "http.response.body", "body": b"second"})


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    release.clear()
    async with serve_asgi(streamed) as running:
        yield running


async def read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    return await asyncio.wait_for(reader.readuntil(marker), timeout=5)


async def test_a_streamed_body_is_not_held_back(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await read_until(reader, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head
    # The first part arrives while the app still waits to send the second.
    assert await read_until(reader, b"first;\r\n") == b"6\r\nfirst;\r\n"
    release.set()
    assert await read_until(reader, b"0\r\n\r\n") == b"6\r\nsecond\r\n0\r\n\r\n"
    writer.close()
    await writer.wait_closed()


async def test_pipelined_requests_are_answered_whole_and_in_order(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"".join(b"GET /small?%d HTTP/1.1\r\nhost: x\r\n\r\n" % n for n in range(20)))
    for n in range(20):
        head = await read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head
        chunk = await read_until(reader, b"0\r\n\r\n")
        assert chunk == b"%x\r\n%d\r\n0\r\n\r\n" % (len(str(n)), n)
    writer.close()
    await writer.wait_closed()


async def test_an_answer_before_close_arrives_whole(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /small?bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"3\r\nbye\r\n0\r\n\r\n")
    writer.close()
