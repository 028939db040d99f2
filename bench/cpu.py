"""CPU time per accepted and per delivered message: steadier than rates on a shared machine.

    .venv/bin/python -m bench.cpu                       # SQLite, 5 repeats
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python -m bench.cpu   # other code, same bench

Throughput on this 2-core machine moves 20-30 % between runs with whatever
else runs; the CPU a process spends per message moves much less, so a
change to the accept or delivery path is judged by it beside the rates of
`bench.run`. It reads the process's user + system time from /proc before
and after the work:

- per accept: `serve --no-worker`, 3,000 single POSTs over 64 connections
  (after 200 to warm up); the serve process's CPU.
- per message of a batch (`--only batch`): `serve --no-worker`, 30,000 messages
  in batches of 1,000 from 4 clients (after one batch); the serve process's CPU.
- per delivery: a `mailgate worker` started on an empty queue, then 5,000
  messages queued through the batch API and delivered to a fake SendGrid
  answering at once; the worker's CPU from before the first batch to the
  fake's 5,000th message (its idle polls included, a few ms).

Each figure is the median of `--repeats` runs. The mailgate processes are
started with `python -m mailgate`, so `PYTHONPATH` picks the code measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from bench.harness import MESSAGE, Service, cpu_seconds, fake_stats, process, service


async def per_accept(n: int = 3000, concurrency: int = 64) -> float:
    async with service(worker=False) as svc:
        return await accept_load(svc, n, concurrency)


async def accept_load(
    svc: Service,
    n: int,
    concurrency: int,
    during: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
) -> float:
    """CPU seconds per accept of `svc`'s process: `n` single POSTs over `concurrency`
    connections after 200 to warm up, inside `during()` (bench.profile samples there)."""
    headers = {"Authorization": f"Bearer {svc.key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def post() -> None:
            async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                await r.read()
                assert r.status == 202, r.status

        await asyncio.gather(*(post() for _ in range(200)))
        todo = iter(range(n))

        async def client() -> None:
            for _ in todo:
                await post()

        async with during():
            before = cpu_seconds(svc.pid)
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return (cpu_seconds(svc.pid) - before) / n


async def per_batch_accept(n: int = 30_000) -> float:
    async with service(worker=False) as svc:
        return await batch_load(svc, n)


async def batch_load(
    svc: Service,
    n: int,
    size: int = 1000,
    concurrency: int = 4,
    during: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
) -> float:
    """CPU seconds per message of `svc`'s process taking `n` messages in batches of `size`
    from `concurrency` clients (after one batch to warm up), inside `during()`."""
    headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
    payload = json.dumps({"messages": [MESSAGE] * size})
    async with aiohttp.ClientSession(headers=headers) as session:

        async def post() -> None:
            async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                await r.read()
                assert r.status == 200, r.status

        await post()
        todo = iter(range(n // size))

        async def client() -> None:
            for _ in todo:
                await post()

        async with during():
            before = cpu_seconds(svc.pid)
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return (cpu_seconds(svc.pid) - before) / n


async def per_delivery(n: int = 5000) -> float:
    async with service(worker=False, poll_interval_seconds=0.05) as svc:
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        args = ["-m", "mailgate", "worker", "--config", str(svc.config)]
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            process(*args, cwd=svc.cwd) as worker,
        ):
            await worker.wait_for("started")
            await asyncio.sleep(0.5)  # past its start-up work
            before = cpu_seconds(worker.proc.pid)
            payload = json.dumps({"messages": [MESSAGE] * 1000})
            for _ in range(n // 1000):
                async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                    assert r.status == 200
            while (await fake_stats(session, svc.sendgrid))["taken"] < n:
                await asyncio.sleep(0.02)
            return (cpu_seconds(worker.proc.pid) - before) / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["accept", "batch", "delivery"])
    args = parser.parse_args()
    jobs = (("accept", per_accept), ("batch", per_batch_accept), ("delivery", per_delivery))
    for name, job in jobs:
        if args.only not in (None, name):
            continue
        runs = [await job() * 1e6 for _ in range(args.repeats)]
        each = " / ".join(f"{r:.0f}" for r in runs)
        what = "message accepted in batches of 1,000" if name == "batch" else name
        print(f"CPU µs per {what}: median {statistics.median(runs):.0f} ({each})", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
