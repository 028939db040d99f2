"""Retries: a cut connection, 429 with Retry-After, 503, and what is never sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from mailgate.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from tests.client.conftest import Running

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)
MESSAGE = {"from": "shop@example.com", "to": ["a@example.org"], "subject": "S", "text": "t"}


@dataclass
class CuttingProxy:
    """Passes HTTP/1.1 requests on to `upstream`; for the first `cuts` requests whose line
    starts with `cut_prefix`, it waits for the gateway's whole answer, then closes the
    client's connection without passing the answer on: the request was served, the
    client cannot know it."""

    upstream: tuple[str, int]
    cut_prefix: bytes
    cuts: int
    seen: list[bytes] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await _read_http(reader):
                self.seen.append(request.split(b"\r\n", 1)[0])
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                up_writer.write(request)
                await up_writer.drain()
                answer = await _read_http(up_reader)
                up_writer.close()
                if self.cuts and request.startswith(self.cut_prefix):
                    self.cuts -= 1
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _read_http(reader: asyncio.StreamReader) -> bytes:
    """One request or answer with a Content-Length body (all mailgate sends); b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


@contextlib.asynccontextmanager
async def proxy(gateway: Running, cut_prefix: bytes, cuts: int) -> AsyncIterator[CuttingProxy]:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    cutter = CuttingProxy((host, int(port)), cut_prefix, cuts)
    server = await asyncio.start_server(cutter.handle, "127.0.0.1", 0)
    cutter.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield cutter


async def test_a_send_cut_after_the_gateway_took_it_is_stored_once(gateway: Running) -> None:
    tag = f"cut-{uuid.uuid4().hex[:8]}"
    async with proxy(gateway, b"POST /v1/messages ", cuts=2) as cutter:
        url = cutter.url
        async with AsyncClient(url, gateway.key, retry=FAST) as mg:
            sent = await mg.send({**MESSAGE, "tags": [tag]})
        # The blocking client, in a thread, through the same kind of cut.
        cutter.cuts = 2

        def blocking() -> dict[str, Any]:
            with Client(url, gateway.key, retry=FAST) as sync:
                return sync.send({**MESSAGE, "tags": [tag, "sync"]})

        sent_sync = await asyncio.to_thread(blocking)
    posts = [line for line in cutter.seen if line.startswith(b"POST /v1/messages ")]
    assert len(posts) == 6  # three tries each: two cut, one answered
    async with AsyncClient(gateway.url, gateway.key) as mg:
        stored = [m["id"] async for m in mg.list(tag=tag)]
    assert sorted(stored) == sorted([sent["id"], sent_sync["id"]])  # one message each


async def test_a_call_that_is_not_safe_to_repeat_is_not_repeated(gateway: Running) -> None:
    async with proxy(gateway, b"POST /v1/keys ", cuts=1) as cutter:
        async with AsyncClient(cutter.url, gateway.key, retry=FAST) as mg:
            with pytest.raises(ConnectionFailed) as failed:
                await mg.create_key("once", ["read"])
            assert failed.value.status == 0
    assert [line for line in cutter.seen if line.startswith(b"POST /v1/keys")] == [
        b"POST /v1/keys HTTP/1.1"
    ]


@dataclass
class Scripted:
    """A stand-in server answering `POST /v1/messages` from a script, noting each try."""

    answers: list[tuple[int, dict[str, str]]]
    tries: list[tuple[float, str | None]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.tries.append((time.monotonic(), request.headers.get("Idempotency-Key")))
        status, headers = self.answers.pop(0) if self.answers else (202, {})
        if status == 202:
            return web.json_response({"id": "msg_1", "status": "queued"}, status=202)
        code = "rate_limited" if status == 429 else "unavailable"
        body = {"error": {"code": code, "message": "later", "field": None}}
        return web.json_response(body, status=status, headers=headers)


@contextlib.asynccontextmanager
async def scripted(*answers: tuple[int, dict[str, str]]) -> AsyncIterator[tuple[str, Scripted]]:
    script = Scripted(list(answers))
    app = web.Application()
    app.router.add_post("/v1/messages", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", script
    finally:
        await runner.cleanup()


async def test_429_waits_for_retry_after_and_503_backs_off_under_one_key() -> None:
    async with scripted((429, {"Retry-After": "1"}), (503, {}), (202, {})) as (url, script):
        async with AsyncClient(url, "mg_x", retry=FAST) as mg:
            assert (await mg.send(MESSAGE))["id"] == "msg_1"
    assert len(script.tries) == 3
    keys = {key for _, key in script.tries}
    assert len(keys) == 1 and None not in keys  # one generated Idempotency-Key
    assert script.tries[1][0] - script.tries[0][0] >= 1.0  # Retry-After was honoured


async def test_the_blocking_client_retries_the_same_way() -> None:
    async with scripted((503, {}), (429, {"Retry-After": "0"}), (202, {})) as (url, script):

        def blocking() -> str:
            with Client(url, "mg_x", retry=FAST) as mg:
                return str(mg.send(MESSAGE, idempotency_key="mine")["id"])

        assert await asyncio.to_thread(blocking) == "msg_1"
    assert [key for _, key in script.tries] == ["mine", "mine", "mine"]


async def test_giving_up_raises_the_last_error() -> None:
    answers: list[tuple[int, dict[str, str]]] = [(503, {})] * 10
    async with scripted(*answers) as (url, script):
        async with AsyncClient(url, "mg_x", retry=RetryPolicy(max_retries=2, backoff=0.01)) as mg:
            with pytest.raises(Unavailable) as unavailable:
                await mg.send(MESSAGE)
    assert unavailable.value.status == 503 and len(script.tries) == 3
    async with scripted((429, {"Retry-After": "3000"})) as (url, script):
        async with AsyncClient(url, "mg_x", retry=FAST) as mg:
            with pytest.raises(RateLimited) as limited:
                await mg.send(MESSAGE)  # too long a wait: raised at once, with it
    assert limited.value.retry_after == 3000 and len(script.tries) == 1


async def test_nobody_listening() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with AsyncClient(f"http://127.0.0.1:{port}", "mg_x", retry=FAST) as mg:
        with pytest.raises(ConnectionFailed) as failed:
            await mg.create_key("k", ["read"])  # never sent: retried, then given up
    assert "cannot connect" in failed.value.message
    with Client(f"http://127.0.0.1:{port}", "mg_x", retry=FAST) as sync:
        with pytest.raises(ConnectionFailed):
            sync.providers()
