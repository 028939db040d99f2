"""mailgate's benchmark: the real service, fake providers on loopback, baselines in the same run.

    .venv/bin/python bench/run.py            # every measure, 3 repeats, medians
    .venv/bin/python bench/run.py --repeats 1 --only accept

Every figure is the median of `--repeats` runs and is shown beside a
baseline measured in the same go on the same machine:

- accepts/s against one SQLite commit per request (WAL, synchronous=FULL:
  what a durable accept costs without group commit);
- delivered/s against one aiohttp session pushing SendGrid-shaped requests
  straight at the same fake provider (the ceiling for one process).

mailgate, the fakes and this load generator each run in their own process
and share the machine's cores; the load generator's own CPU is part of the
picture. Results are also written to bench/results/<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
DOMAIN = "mg.bench.test"
MESSAGE = {
    "from": "Bench <bench@example.com>",
    "to": ["reader@example.org"],
    "subject": "Benchmark",
    "text": "A short plain-text body, about the size of a receipt notification.",
    "tags": ["bench"],
}


# --- processes ------------------------------------------------------------------


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := regex.search(line):
                    return match
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        raise RuntimeError(f"no {pattern!r}:\n" + "\n".join(self.lines[-30:]))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def process(*args: str, cwd: Path) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    p = Proc(proc)
    p.reader = asyncio.create_task(p._read(proc.stdout))
    try:
        yield p
    finally:
        await p.stop()
        await p.reader


@contextlib.asynccontextmanager
async def fake(kind: str, latency: float, cwd: Path) -> AsyncIterator[str]:
    args = ["-m", "mailgate.providers.fakes", kind, "--api-key", KEY, "--domain", DOMAIN]
    async with process(*args, "--latency", str(latency), "--keep", "0", cwd=cwd) as p:
        yield (await p.wait_for(r"(http://\S+)"))[1]


def write_config(path: Path, sendgrid: str, mailgun: str, **delivery: Any) -> Path:
    lines = ["[database]", f'url = "sqlite:///{path.parent}/bench.db"', "[delivery]"]
    lines += [f"{k} = {v}" for k, v in delivery.items()]
    lines += [
        "[[providers]]", 'name = "primary"', 'type = "sendgrid"', f'api_key = "{KEY}"',
        f'base_url = "{sendgrid}"', "priority = 1",
        "[[providers]]", 'name = "backup"', 'type = "mailgun"', f'api_key = "{KEY}"',
        f'domain = "{DOMAIN}"', f'base_url = "{mailgun}"', "priority = 2",
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Service:
    url: str
    key: str
    sendgrid: str
    mailgun: str
    config: Path
    cwd: Path


@contextlib.asynccontextmanager
async def service(
    *, latency: float = 0.0, worker: bool = True, **delivery: Any
) -> AsyncIterator[Service]:
    """Fresh directory and database, two fakes, and `mailgate serve`."""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        cwd = Path(tmp)
        async with fake("sendgrid", latency, cwd) as sg, fake("mailgun", latency, cwd) as mg:
            config = write_config(cwd / "mailgate.toml", sg, mg, **delivery)
            args = ["-m", "mailgate", "serve", "--port", "0", "--config", str(config)]
            if not worker:
                args.append("--no-worker")
            async with process(*args, cwd=cwd) as p:
                url = (await p.wait_for(r"listening on (http://\S+)"))[1]
                key = (await p.wait_for(r"API key: (mg_\S+)"))[1]
                yield Service(url, key, sg, mg, config, cwd)


async def fake_stats(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/_fake/stats") as response:
        return dict(await response.json())


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
                queue = iter(range(n))

                async def one_worker() -> None:
                    for _ in queue:
                        async with session.post(
                            f"{url}/v3/mail/send", json=body, headers=headers
                        ) as r:
                            await r.read()

                started = time.perf_counter()
                await asyncio.gather(*(one_worker() for _ in range(concurrency)))
                return n / (time.perf_counter() - started)


# --- mailgate measures -------------------------------------------------------------


async def accept_single(n: int, concurrency: int = 64) -> dict[str, float]:
    """Single-message POSTs over HTTP, worker off: accepts/s and latency percentiles."""
    async with service(worker=False) as svc:
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

            for _ in range(200):  # warm up connections and caches
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


async def accept_batch(batches: int, size: int = 1000, concurrency: int = 4) -> dict[str, float]:
    """`POST /v1/messages/batch` of `size` messages, worker off: accepts/s."""
    async with service(worker=False) as svc:
        headers = {"Authorization": f"Bearer {svc.key}"}
        payload = json.dumps({"messages": [MESSAGE] * size})
        async with aiohttp.ClientSession(
            headers=headers | {"Content-Type": "application/json"}
        ) as session:
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


async def delivered(latency: float, n: int) -> dict[str, float]:
    """Messages queued through the batch API, then one `mailgate worker` drains them."""
    async with service(latency=latency, worker=False, poll_interval_seconds=0.05) as svc:
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        payload = json.dumps({"messages": [MESSAGE] * 1000})
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(n // 1000):
                async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                    assert r.status == 200
            args = ["-m", "mailgate", "worker", "--config", str(svc.config)]
            async with process(*args, cwd=svc.cwd) as worker:
                await worker.wait_for("started")
                started = time.perf_counter()
                while (await fake_stats(session, svc.sendgrid))["taken"] < n:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                stats = await fake_stats(session, svc.sendgrid)
    return {"delivered_per_s": n / elapsed, "doubles": stats["doubles"]}


async def failover(mode: str, rate: float = 100.0) -> dict[str, float]:
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
                    at = _epoch(sent[0]["at"])
                    first_backup = at if first_backup is None else min(first_backup, at)
    assert first_backup is not None
    return {"first_backup_s": first_backup - t0, "primary_quiet_s": last_change - t0}


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


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


async def repeat(
    times: int, job: Callable[[], Awaitable[dict[str, float]]]
) -> list[dict[str, float]]:
    results = []
    for i in range(times):
        result = await job()
        print(
            f"    run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True
        )
        results.append(result)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["accept", "deliver", "failover"], action="append")
    parser.add_argument("--messages", type=int, default=10_000, help="messages per delivery run")
    args = parser.parse_args()
    only = set(args.only or ["accept", "deliver", "failover"])
    r = args.repeats
    rows: list[Row] = []

    def col(results: list[dict[str, float]], key: str) -> list[float]:
        return [x[key] for x in results]

    if "accept" in only:
        print("baseline: one SQLite commit per request", flush=True)
        sqlite_rate = statistics.median([baseline_sqlite_commits() for _ in range(r)])
        print(f"    median {sqlite_rate:.0f} commits/s", flush=True)
        print("accept: single POSTs, 64 clients", flush=True)
        single = await repeat(r, lambda: accept_single(5000))
        rows.append(
            Row(
                "accepts/s, single POST (64 clients)",
                "/s",
                col(single, "accepts_per_s"),
                sqlite_rate,
                "SQLite commit per request",
            )
        )
        rows.append(Row("accept latency p50", "ms", col(single, "p50_ms")))
        rows.append(Row("accept latency p99", "ms", col(single, "p99_ms")))
        print("accept: batches of 1000, 4 clients", flush=True)
        batch = await repeat(r, lambda: accept_batch(30))
        rows.append(
            Row(
                "accepts/s, batch of 1000",
                "/s",
                col(batch, "accepts_per_s"),
                sqlite_rate,
                "SQLite commit per request",
            )
        )
    if "deliver" in only:
        for latency in (0.0, 0.05):
            ms = int(latency * 1000)
            print(f"baseline: aiohttp straight to the fake, {ms} ms", flush=True)
            base = statistics.median(
                [await baseline_aiohttp_sends(latency, args.messages) for _ in range(r)]
            )
            print(f"    median {base:.0f} sends/s", flush=True)
            print(
                f"deliver: {args.messages} queued messages, provider answers in {ms} ms", flush=True
            )
            runs = await repeat(r, lambda latency=latency: delivered(latency, args.messages))  # type: ignore[misc]
            rows.append(
                Row(
                    f"delivered/s, provider {ms} ms",
                    "/s",
                    col(runs, "delivered_per_s"),
                    base,
                    "aiohttp alone, 200 in flight",
                )
            )
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
    (out / f"{stamp}.json").write_text(
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
