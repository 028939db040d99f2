"""Reading a bounded part of a body that arrives in pieces."""

from __future__ import annotations

import asyncio

import aiohttp
from starlette.types import Receive, Scope, Send

from mailgate.serving import serve_asgi
from mailgate.streams import read_at_most


async def in_pieces(scope: Scope, receive: Receive, send: Send) -> None:
    """Ten pieces of 1,000 bytes, each written on its own after a pause."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for n in range(10):
        await asyncio.sleep(0.01)
        piece = bytes([65 + n]) * 1000
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_reads_on_until_the_limit_or_the_end() -> None:
    whole = b"".join(bytes([65 + n]) * 1000 for n in range(10))
    async with serve_asgi(in_pieces) as server, aiohttp.ClientSession() as session:
        for limit, expected in ((2_500, whole[:2_500]), (10_001, whole), (50, whole[:50])):
            async with session.get(server.url) as response:
                assert await read_at_most(response.content, limit) == expected
