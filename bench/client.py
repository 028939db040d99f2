"""The async client at 200 requests in flight, beside plain aiohttp and httpx.

    .venv/bin/python -m bench.client            # 3 repeats

A stand-in server in another process (aiohttp, one process) answers
`GET /v1/messages/{id}` with a stored message's JSON at once, so the figure
is the client's own ceiling, not the gateway's. From this process,
one client with 200 requests in flight makes 4,000 requests:
`AsyncClient.get(id)`, the same GET through one bare
`aiohttp.ClientSession` (the baseline: no client library around it), and
through one `httpx.AsyncClient` (for the choice of library). Alternating,
medians of the repeats, requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from aiohttp import web

from mailgate.client import AsyncClient

N = 4000
IN_FLIGHT = 200
MESSAGE_ID = "msg_06H3S7VTHMWY903QYQAX73WJMW"
ANSWER = json.dumps({
    "id": MESSAGE_ID, "tenant_id": "default", "status": "delivered",
    "from": {"email": "shop@example.com", "name": "Shop"}, "to": [{"email": "a@example.org"}],
    "subject": "Receipt", "tags": ["receipts"], "metadata": {}, "attempts": [], "events": [],
}).encode()  # fmt: skip


async def stand_in() -> None:
    """Answer the GET until killed; print the URL first."""

    async def message(_: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/messages/{id}", message)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


async def rate(call: Callable[[], Awaitable[object]], n: int = N) -> float:
    todo = iter(range(n))

    async def lane() -> None:
        for _ in todo:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return n / (time.perf_counter() - started)


async def measure(url: str, repeats: int) -> None:
    path = f"{url}/v1/messages/{MESSAGE_ID}"
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with (
        AsyncClient(url, "mg_bench", connections=IN_FLIGHT) as mg,
        aiohttp.ClientSession(connector=connector) as plain,
        httpx.AsyncClient(limits=limits, timeout=60) as other,
    ):

        async def ours() -> None:
            await mg.get(MESSAGE_ID)

        async def bare() -> None:
            async with plain.get(path) as r:
                await r.json()

        async def with_httpx() -> None:
            (await other.get(path)).json()

        await rate(bare)  # warm up
        await rate(ours)
        runs: dict[str, list[float]] = {"client": [], "aiohttp": [], "httpx": []}
        for _ in range(repeats):
            runs["aiohttp"].append(await rate(bare))
            runs["client"].append(await rate(ours))
            runs["httpx"].append(await rate(with_httpx, n=1000))
    base = statistics.median(runs["aiohttp"])
    for name, label in (("client", "AsyncClient.get"), ("aiohttp", "aiohttp alone"),
                        ("httpx", "httpx.AsyncClient")):  # fmt: skip
        median = statistics.median(runs[name])
        each = " / ".join(f"{r:,.0f}" for r in runs[name])
        print(f"{label}, {IN_FLIGHT} in flight: {median:,.0f}/s ({each}); "
              f"{median / base:.2f}x aiohttp alone")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(stand_in())
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.client", "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        asyncio.run(measure(server.stdout.readline().strip(), args.repeats))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
