"""mailgate's benchmark: the real service, fake providers on loopback, baselines in the same run.

    .venv/bin/python -m bench.run                          # SQLite: every measure, 3 repeats
    .venv/bin/python -m bench.run --database postgresql    # the PostgreSQL measures
    .venv/bin/python -m bench.run --repeats 1 --only accept

Every figure is the median of `--repeats` runs and is shown beside a
baseline measured in the same go on the same machine:

- accepts/s against one durable commit per request on the same engine (what
  an accept costs without group commit);
- delivered/s against one aiohttp session pushing SendGrid-shaped requests
  straight at the same fake provider (the ceiling for one process);
- claimed rows/s (PostgreSQL) against the plain `FOR UPDATE SKIP LOCKED`
  claim a hand-written queue would use, on the same database.

mailgate, the fakes and this load generator each run in their own process
and share the machine's cores; the load generator's own CPU is part of the
picture. PostgreSQL runs use `MAILGATE_BENCH_DATABASE_URL` (default
postgresql://postgres@127.0.0.1:5432/test) to create a database per run.
Results are also written to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

from bench import postgres
from bench.harness import KEY, MESSAGE, fake, fake_stats, process, service

ROOT = Path(__file__).resolve().parents[1]
Result = dict[str, float]


# --- baselines ---------------------------------------------------------------------


def baseline_sqlite_commits(n: int = 3000) -> float:
    """Commits/s, one row per transaction, WAL with synchronous=FULL (a durable accept each)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "b.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        started = time.perf_counter()
        for i in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (body) VALUES (?)", (json.dumps(MESSAGE) + str(i),))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
    return n / elapsed


async def baseline_aiohttp_sends(latency: float, n: int, concurrency: int = 200) -> float:
    """Sends/s from one aiohttp session straight to a fake SendGrid (no store, no mailgate)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with fake("sendgrid", latency, Path(tmp)) as url:
            body = {
                "personalizations": [{"to": [{"email": "reader@example.org"}]}],
                "from": {"email": "bench@example.com"},
                "subject": "Benchmark",
                "content": [{"type": "text/plain", "value": MESSAGE["text"]}],
                "custom_args": {"mailgate_id": "x"},
            }
            headers = {"Authorization": f"Bearer {KEY}"}
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                todo = iter(range(n))

                async def sender() -> None:
                    for _ in todo:
                        async with session.post(
                            f"{url}/v3/mail/send", json=body, headers=headers
                        ) as r:
                            await r.read()

                started = time.perf_counter()
                await asyncio.gather(*(sender() for _ in range(concurrency)))
                return n / (time.perf_counter() - started)


# --- mailgate measures -------------------------------------------------------------


async def accept_single(
    n: int, *, engine: str = "sqlite", api_processes: int = 1, concurrency: int = 64
) -> Result:
    """Single-message POSTs over HTTP, worker off: accepts/s and latency percentiles."""
    async with service(engine=engine, worker=False, api_processes=api_processes) as svc:
        headers = {"Authorization": f"Bearer {svc.key}"}
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            todo = iter(range(n))

            async def client() -> None:
                for _ in todo:
                    t0 = time.perf_counter()
                    async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                        await r.read()
                        assert r.status == 202, r.status
                    latencies.append(time.perf_counter() - t0)

            for _ in range(200):  # warm up connections, caches, every process
                async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                    await r.read()
            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "accepts_per_s": n / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def end_to_end(n: int, *, one_process: bool = False, concurrency: int = 64) -> Result:
    """`serve` as it starts by default (API and worker): single POSTs from 64 clients until
    the provider (answering at once) has every message; messages/s from the first POST."""
    extra = ("--one-process",) if one_process else ()
    async with service(latency=0.0, serve_args=extra) as svc:
        headers = {"Authorization": f"Bearer {svc.key}"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            for _ in range(200):  # warm up connections, caches, every process
                async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                    await r.read()
            while (await fake_stats(session, svc.sendgrid))["taken"] < 200:
                await asyncio.sleep(0.05)
            todo = iter(range(n))

            async def client() -> None:
                for _ in todo:
                    async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                        await r.read()
                        assert r.status == 202, r.status

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            accepted = time.perf_counter() - started
            while (await fake_stats(session, svc.sendgrid))["taken"] < n + 200:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            stats = await fake_stats(session, svc.sendgrid)
    return {
        "messages_per_s": n / elapsed,
        "accepted_per_s": n / accepted,
        "doubles": stats["doubles"],
    }


async def accept_batch(
    batches: int, *, engine: str = "sqlite", size: int = 1000, concurrency: int = 4
) -> Result:
    """`POST /v1/messages/batch` of `size` messages, worker off: accepts/s."""
    async with service(engine=engine, worker=False) as svc:
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        payload = json.dumps({"messages": [MESSAGE] * size})
        async with aiohttp.ClientSession(headers=headers) as session:
            todo = iter(range(batches))

            async def client() -> None:
                for _ in todo:
                    async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                        body = await r.json()
                        assert r.status == 200 and all("id" in d for d in body["data"])

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    return {"accepts_per_s": batches * size / elapsed}


async def delivered(latency: float, n: int, *, engine: str = "sqlite", workers: int = 1) -> Result:
    """Messages queued through the batch API, then `workers` worker processes drain them."""
    async with service(
        engine=engine, latency=latency, worker=False, poll_interval_seconds=0.05
    ) as svc:
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        payload = json.dumps({"messages": [MESSAGE] * 1000})
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(n // 1000):
                async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                    assert r.status == 200
            args = ["-m", "mailgate", "worker", "--config", str(svc.config)]
            async with AsyncExitStack() as stack:
                procs = [
                    await stack.enter_async_context(process(*args, cwd=svc.cwd))
                    for _ in range(workers)
                ]
                for p in procs:
                    await p.wait_for("started")
                started = time.perf_counter()
                while (await fake_stats(session, svc.sendgrid))["taken"] < n:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                stats = await fake_stats(session, svc.sendgrid)
    return {"delivered_per_s": n / elapsed, "doubles": stats["doubles"]}


async def failover(mode: str, rate: float = 100.0) -> Result:
    """A steady stream of sends; the primary starts failing; how long until the backup has them.

    `first_backup_s`: from the moment the primary starts failing until the first
    message sent after that moment is delivered by the backup.
    `primary_quiet_s`: until the primary stops getting requests (its breaker opened).
    """
    timeout = 2.0
    async with service(attempt_timeout_seconds=timeout) as svc:
        headers = {"Authorization": f"Bearer {svc.key}"}
        accepted: list[tuple[float, str]] = []
        async with aiohttp.ClientSession(headers=headers) as session:
            stop = asyncio.Event()

            async def stream() -> None:
                while not stop.is_set():
                    async with session.post(f"{svc.url}/v1/messages", json=MESSAGE) as r:
                        accepted.append((time.time(), (await r.json())["id"]))
                    await asyncio.sleep(1 / rate)

            sender = asyncio.create_task(stream())
            await asyncio.sleep(2)
            behaviour = {"status": 503} if mode == "error" else {"hang": True}
            t0 = time.time()
            async with session.post(f"{svc.sendgrid}/_fake/behaviour", json=behaviour) as r:
                assert r.status == 200
            last_requests, last_change = -1, t0
            while time.time() - t0 < timeout * 4 + 4:
                requests = (await fake_stats(session, svc.sendgrid))["requests"]
                if requests != last_requests:
                    last_requests, last_change = requests, time.time()
                await asyncio.sleep(0.01)
            stop.set()
            await sender
            after = [message_id for at, message_id in accepted if at >= t0]
            first_backup = None
            for message_id in after[:200]:
                async with session.get(f"{svc.url}/v1/messages/{message_id}") as r:
                    view = await r.json()
                sent = [e for e in view["events"] if e["type"] == "sent"]
                if view["provider"] == "backup" and sent:
                    at = datetime.fromisoformat(sent[0]["at"].replace("Z", "+00:00")).timestamp()
                    first_backup = at if first_backup is None else min(first_backup, at)
    assert first_backup is not None
    return {"first_backup_s": first_backup - t0, "primary_quiet_s": last_change - t0}


# --- running and reporting ----------------------------------------------------------


@dataclass
class Row:
    measure: str
    unit: str
    runs: list[float]
    baseline: float | None = None
    baseline_name: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


async def repeat(times: int, job: Callable[[], Awaitable[Result]]) -> list[Result]:
    results = []
    for i in range(times):
        result = await job()
        print(
            f"    run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True
        )
        results.append(result)
    return results


def col(results: list[Result], key: str) -> list[float]:
    return [r[key] for r in results]


async def sqlite_rows(r: int, only: set[str], messages: int) -> list[Row]:
    rows: list[Row] = []
    if "accept" in only:
        print("baseline: one SQLite commit per request", flush=True)
        base = statistics.median([baseline_sqlite_commits() for _ in range(r)])
        print(f"    median {base:.0f} commits/s", flush=True)
        print("accept: single POSTs, 64 clients", flush=True)
        single = await repeat(r, lambda: accept_single(5000))
        name = "SQLite commit per request"
        rows.append(
            Row(
                "accepts/s, single POST (64 clients)",
                "/s",
                col(single, "accepts_per_s"),
                base,
                name,
            )
        )
        rows.append(Row("accept latency p50", "ms", col(single, "p50_ms")))
        rows.append(Row("accept latency p99", "ms", col(single, "p99_ms")))
        print("accept: batches of 1000, 4 clients", flush=True)
        batch = await repeat(r, lambda: accept_batch(30))
        rows.append(Row("accepts/s, batch of 1000", "/s", col(batch, "accepts_per_s"), base, name))
    if "endtoend" in only:
        print("baseline: one SQLite commit per request", flush=True)
        base = statistics.median([baseline_sqlite_commits() for _ in range(r)])
        print(f"    median {base:.0f} commits/s", flush=True)
        name = "SQLite commit per request"
        for one_process in (True, False):
            label = "one process (--one-process)" if one_process else "its default"
            print(f"end to end: serve, {label}, single POSTs, 64 clients, provider 0 ms")
            runs = await repeat(
                r,
                lambda one_process=one_process: end_to_end(5000, one_process=one_process),  # type: ignore[misc]
            )
            rows.append(
                Row(f"end to end, serve {label}", "/s", col(runs, "messages_per_s"), base, name)
            )
    if "deliver" in only:
        for latency in (0.0, 0.05):
            rows.append(await _delivery_row(r, latency, messages, "sqlite", 1))
    if "failover" in only:
        for mode in ("error", "timeout"):
            print(
                f"failover: the primary starts answering {'503' if mode == 'error' else 'nothing'}",
                flush=True,
            )
            runs = await repeat(r, lambda mode=mode: failover(mode))  # type: ignore[misc]
            label = "503s" if mode == "error" else "hangs (attempt timeout 2 s)"
            rows.append(
                Row(
                    f"failover: first message via backup, primary {label}",
                    "s",
                    col(runs, "first_backup_s"),
                )
            )
            rows.append(
                Row(
                    f"failover: primary gets no more traffic, primary {label}",
                    "s",
                    col(runs, "primary_quiet_s"),
                )
            )
    return rows


async def _delivery_row(r: int, latency: float, n: int, engine: str, workers: int) -> Row:
    ms = int(latency * 1000)
    print(f"baseline: aiohttp straight to the fake, {ms} ms", flush=True)
    base = statistics.median([await baseline_aiohttp_sends(latency, n) for _ in range(r)])
    print(f"    median {base:.0f} sends/s", flush=True)
    plural = "s" if workers > 1 else ""
    print(f"deliver: {n} queued, {workers} worker{plural}, provider answers in {ms} ms", flush=True)
    runs = await repeat(r, lambda: delivered(latency, n, engine=engine, workers=workers))
    return Row(
        f"delivered/s, {workers} worker{plural}, provider {ms} ms",
        "/s",
        col(runs, "delivered_per_s"),
        base,
        "aiohttp alone, 200 in flight",
    )


async def postgres_rows(r: int, only: set[str], messages: int) -> list[Row]:
    rows: list[Row] = []
    if "accept" in only:
        print("baseline: one PostgreSQL commit per request, 64 clients", flush=True)
        base = statistics.median([await postgres.baseline_commits(5000) for _ in range(r)])
        print(f"    median {base:.0f} commits/s", flush=True)
        name = "PostgreSQL commit per request"
        for processes in (1, 2):
            print(f"accept: single POSTs, 64 clients, {processes} API process(es)", flush=True)
            runs = await repeat(
                r,
                lambda processes=processes: accept_single(  # type: ignore[misc]
                    5000, engine="postgresql", api_processes=processes
                ),
            )
            label = f"{processes} API process{'es' if processes > 1 else ''}"
            rows.append(
                Row(
                    f"accepts/s, single POST, {label}", "/s", col(runs, "accepts_per_s"), base, name
                )
            )
            rows.append(Row(f"accept latency p50, {label}", "ms", col(runs, "p50_ms")))
        print("accept: batches of 1000, 4 clients", flush=True)
        batch = await repeat(r, lambda: accept_batch(30, engine="postgresql"))
        rows.append(Row("accepts/s, batch of 1000", "/s", col(batch, "accepts_per_s"), base, name))
    if "deliver" in only:
        for workers in (1, 2, 4):
            rows.append(await _delivery_row(r, 0.05, messages, "postgresql", workers))
    if "claim" in only:
        for queued in (10_000, 1_000_000):
            print(f"claim: one client, 100 at a time, {queued:,} queued", flush=True)
            runs = await postgres.claim_rates(queued, repeats=r)
            rows.append(
                Row(
                    f"claimed rows/s, mailgate claim, {queued:,} queued",
                    "/s",
                    col(runs, "mailgate_per_s"),
                    statistics.median(col(runs, "plain_per_s")),
                    "plain SKIP LOCKED claim",
                )
            )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["accept", "endtoend", "deliver", "failover", "claim"],
        action="append",
    )
    parser.add_argument("--messages", type=int, default=10_000, help="messages per delivery run")
    args = parser.parse_args()
    only = set(args.only or ["accept", "endtoend", "deliver", "failover", "claim"])
    if args.database == "sqlite":
        rows = await sqlite_rows(args.repeats, only, args.messages)
    else:
        rows = await postgres_rows(args.repeats, only, args.messages)
    print()
    print("| measure | median | runs | baseline | ratio |")
    print("|---|---:|---|---|---:|")
    for row in rows:
        each = " / ".join(_fmt(v, row.unit) for v in row.runs)
        against = f"{_fmt(row.baseline, row.unit)} ({row.baseline_name})" if row.baseline else ""
        ratio = f"{row.median / row.baseline:.2f}x" if row.baseline else ""
        print(f"| {row.measure} | {_fmt(row.median, row.unit)} | {each} | {against} | {ratio} |")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"{stamp}-{args.database}.json").write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "cpus": os.cpu_count(),
                "rows": [row.__dict__ | {"median": row.median} for row in rows],
            },
            indent=2,
        )
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.2f} s"


if __name__ == "__main__":
    asyncio.run(main())
