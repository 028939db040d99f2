"""Instructions per request, counted by callgrind: a figure the machine's load does not move.

    .venv/bin/python -m bench.instructions accept            # the accept path, in process
    .venv/bin/python -m bench.instructions protocol          # the server's HTTP protocol
    .venv/bin/python -m bench.instructions protocol --plain  # the same with plain httptools
    PYTHONPATH=/other/checkout/src .venv/bin/python -m bench.instructions accept

Rates and even CPU seconds on this shared 2-core machine spread by 20 % and
more between runs; valgrind's callgrind counts the instructions a process
runs, which repeat exactly for the same code and inputs. Each measure runs
twice under callgrind, with `n` and `2n` requests, and reports the
difference per request, so start-up work cancels out.

- `accept`: `POST /v1/messages` through the app in process (httpx's ASGI
  transport, a SQLite store, one commit per request), after 50 to warm up
  and with the garbage collector's start-up objects frozen (otherwise a full
  collection falling inside one window and not the other decides the
  figure).
- `protocol`: a uvicorn server (as `mailgate.serving.serve_asgi` builds it)
  answering a trivial app, a client in another process sending requests
  shaped like an accept over one connection; the server is counted.

Needs valgrind (`apt-get install valgrind`); each run takes a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.harness import MESSAGE

_COLLECTED = re.compile(r"Collected : (\d+)")


def callgrind(*args: str, client: list[str] | None = None) -> int:
    """Instructions a `python -m bench.instructions ...` run takes (a client beside it)."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.instructions", *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err)
        if client is not None:
            assert proc.stdout is not None
            proc.stdout.readline()  # the server says it is ready
            subprocess.run([sys.executable, "-m", "bench.instructions", *client], check=True)
        proc.wait()
        err.seek(0)
        found = _COLLECTED.search(err.read().decode())
    assert found is not None, "no count from callgrind"
    return int(found[1])


# --- what runs under callgrind ---------------------------------------------------


async def accept_loop(n: int) -> None:
    import httpx

    from mailgate.api import create_app
    from mailgate.config import Settings
    from mailgate.metrics import Metrics
    from mailgate.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database={"url": f"sqlite:///{tmp}/b.db"})
        store = Store(settings.database)
        await store.migrate()
        _, key = await store.create_key("bench", tenant_id="default")
        app = create_app(settings, store, Metrics())
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://b", headers=headers
        ) as c:
            for _ in range(50):
                await c.post("/v1/messages", json=MESSAGE)
            gc.collect()
            gc.freeze()
            for _ in range(n):
                response = await c.post("/v1/messages", json=MESSAGE)
                assert response.status_code == 202
        await store.close()


async def protocol_server(n: int, plain: bool) -> None:
    import uvicorn

    from mailgate.serving import serve_asgi

    done = asyncio.Event()
    served = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal served
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
        served += 1
        if served >= n:
            done.set()

    if plain:
        original = uvicorn.Config.__init__

        def plain_httptools(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **{**kwargs, "http": "httptools"})

        uvicorn.Config.__init__ = plain_httptools  # type: ignore[method-assign]
    port = int(os.environ["BENCH_PORT"])
    async with serve_asgi(app, port=port):
        print("ready", flush=True)
        await done.wait()
        await asyncio.sleep(0.2)


def protocol_client(n: int) -> None:
    body = b'{"text": "' + b"x" * 280 + b'"}'  # about an accept's size
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer mg_" + "x" * 43
        + "\r\nContent-Type: application/json\r\nAccept: */*\r\nUser-Agent: bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", int(os.environ["BENCH_PORT"]))) as conn:
        for _ in range(n):
            conn.sendall(head.encode() + body)
            answer = b""
            while b'{"ok":true}' not in answer:
                answer += conn.recv(4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("measure", choices=["accept", "protocol"])
    parser.add_argument("--plain", action="store_true", help="protocol: plain httptools")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--inner", choices=["accept", "server", "client"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner == "accept":
        asyncio.run(accept_loop(args.n))
        return
    if args.inner == "server":
        asyncio.run(protocol_server(args.n, args.plain))
        return
    if args.inner == "client":
        protocol_client(args.n)
        return
    counts = []
    for n in (args.n, 2 * args.n):
        if args.measure == "accept":
            counts.append(callgrind("accept", "--inner", "accept", "--n", str(n)))
            continue
        os.environ["BENCH_PORT"] = str(20000 + os.getpid() % 10000 + n)
        plain = ["--plain"] if args.plain else []
        server = ["protocol", *plain, "--inner", "server", "--n", str(n)]
        client = ["protocol", "--inner", "client", "--n", str(n)]
        started = time.monotonic()
        counts.append(callgrind(*server, client=client))
        print(f"  {n} requests: {counts[-1]:,} instructions ({time.monotonic() - started:.0f} s)")
    per_request = (counts[1] - counts[0]) / args.n
    print(f"{args.measure}{' (plain httptools)' if args.plain else ''}: {per_request:,.0f} "
          "instructions per request")  # fmt: skip


if __name__ == "__main__":
    main()
