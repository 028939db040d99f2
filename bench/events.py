"""Events in and out: provider event webhooks, webhooks to tenants, suppression lookups.

    .venv/bin/python -m bench.events                          # SQLite: every measure, 3 repeats
    .venv/bin/python -m bench.events --database postgresql    # the same on PostgreSQL
    .venv/bin/python -m bench.events --only events --repeats 1 --messages 1000

Every figure is the median of `--repeats` runs, shown beside a baseline
measured in the same go on the same machine:

- **events**: `--messages` messages made `sent` through the store, then one
  SendGrid-signed `delivered` event per message (`FakeSendGrid.signed_posts`,
  one request each: a `processed` and a `delivered` event, ECDSA-signed)
  POSTed with aiohttp, `--concurrency` in flight, to
  `/v1/providers/primary/webhook` of `mailgate serve --no-worker` in its own
  process; afterwards every message must be `delivered` in the store, or
  the bench fails. Baselines: single `POST /v1/messages` accepts/s from the
  same server, same client, same concurrency, right after; and one durable
  commit per transaction straight on the engine (as `bench.run` measures
  it), since each event request is one write transaction of its own.
- **webhooks**: an endpoint subscribed to `message.accepted` on a receiver
  (a Starlette app answering 204, in its own process), `--deliveries`
  messages accepted (scheduled a day ahead, so no mail is sent) which puts
  one delivery each in the outbox, then a `mailgate worker` process delivers
  them; the clock runs from the worker's start to the last `delivered` in
  the store; every delivery must be `delivered`, the receiver must have
  each `webhook-id` once. Baseline: one aiohttp session posting the same
  bodies, already signed, to the same receiver with the same concurrency
  (`--webhook-concurrency`, the worker's `[webhooks] concurrency`).
- **suppressions**: `--suppressions` rows (a million) bulk-inserted in SQL
  for one tenant; the median time of `Store.is_suppressed` over `--lookups`
  random addresses (half listed, half not), against the same on a list of
  `--small` rows; the plan of the lookup (EXPLAIN); and the median time of
  one `Store.claim` of 100 messages (each with one listed and one unlisted
  recipient) against the same claim with an empty list (`--claims` claims
  per run, each released again).

mailgate, the receiver and this load generator each run in their own process
and share the machine's cores. PostgreSQL runs use
`MAILGATE_BENCH_DATABASE_URL` (default postgresql://postgres@127.0.0.1:5432/test)
to create a database per run. Results are also written to
bench/results/<time>-events-<database>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import Connection, Engine, bindparam, event, func, select, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench import postgres
from bench.harness import KEY, MESSAGE, Proc, cpu_seconds, database, process
from bench.run import baseline_sqlite_commits
from mailgate.config import DatabaseSettings
from mailgate.delivery.webhooks import sign
from mailgate.message import Address, Email, EventType, Outcome, Status, new_id
from mailgate.providers.fakes.base import Outcome as FakeOutcome
from mailgate.providers.fakes.base import Received, SignedPost
from mailgate.providers.fakes.sendgrid import FakeSendGrid
from mailgate.serving import serve_asgi
from mailgate.store import AttemptRecord, EventRecord, Finish, NewMessage, Store, suppress, utcnow
from mailgate.store.engine import sqlite_path
from mailgate.store.tables import messages, suppressions, webhook_deliveries

ROOT = Path(__file__).resolve().parents[1]
TENANT = "default"
PROVIDER = "primary"
NOWHERE = "http://127.0.0.1:9"
"""The provider's base_url: nothing listens there (no measure here sends mail)."""
CLAIM_SIZE = 100
Result = dict[str, float]


class BenchError(RuntimeError):
    """Something was lost or wrong: the figures of this run mean nothing."""


# --- shared pieces -------------------------------------------------------------------


def write_config(path: Path, database_url: str, *, webhook_secret: str, **webhooks: Any) -> Path:
    """One SendGrid provider pointing nowhere, its event webhook key, `[webhooks]` keys."""
    lines = ["[database]", f'url = "{database_url}"', "[webhooks]"]
    lines += [f"{k} = {v}" for k, v in webhooks.items()]
    lines += [
        "[[providers]]", f'name = "{PROVIDER}"', 'type = "sendgrid"', f'api_key = "{KEY}"',
        f'base_url = "{NOWHERE}"', f'webhook_secret = "{webhook_secret}"',
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def new_message(*to: str, send_at_days: float | None = None) -> NewMessage:
    now = utcnow()
    email = Email(
        sender=Address("bench@example.com", "Bench"),
        to=tuple(Address(a) for a in to),
        subject="Benchmark",
        text=str(MESSAGE["text"]),
        tags=("bench",),
    )
    send_at = now + timedelta(days=send_at_days) if send_at_days is not None else None
    return NewMessage(
        id=new_id("msg"), tenant_id=TENANT, email=email, created_at=now, send_at=send_at
    )


async def accept_all(store: Store, items: Sequence[NewMessage], chunk: int = 1000) -> None:
    for start in range(0, len(items), chunk):
        for result in await store.accept_many(items[start : start + chunk]):
            if isinstance(result, Exception):
                raise BenchError(f"accept refused: {result}")


def count_by_status(conn: Connection, table: Any) -> dict[str, int]:
    rows = conn.execute(select(table.c.status, func.count()).group_by(table.c.status))
    return {str(status): int(n) for status, n in rows}


async def post_all(
    session: aiohttp.ClientSession,
    requests: Sequence[tuple[str, bytes, dict[str, str]]],
    concurrency: int,
    check: Callable[[int, bytes], None],
) -> tuple[float, list[float]]:
    """POST every (url, body, headers) with `concurrency` in flight: elapsed s, latencies."""
    todo = iter(requests)
    latencies: list[float] = []

    async def client() -> None:
        for url, body, headers in todo:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                answer = await r.read()
                check(r.status, answer)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# --- 1. provider events in -----------------------------------------------------------


async def sent_messages(store: Store, n: int) -> list[tuple[str, str, str]]:
    """`n` messages accepted, claimed and finished as sent by `primary`: (id, to, provider id)."""
    items = [new_message(f"reader{i}@example.org") for i in range(n)]
    await accept_all(store, items)
    claimed: list[str] = []
    while len(claimed) < n:
        batch = await store.claim("bench", limit=500, lease_seconds=600)
        if not batch:
            raise BenchError(f"claimed {len(claimed)} of {n} messages")
        claimed += [c.id for c in batch]
    now = utcnow()
    sent = [(item.id, item.email.to[0].email, f"sg{i:08d}") for i, item in enumerate(items)]
    await asyncio.gather(
        *(
            store.finish(
                Finish(
                    message_id=message_id,
                    lease_owner="bench",
                    status=Status.SENT,
                    rounds=1,
                    attempts=(AttemptRecord(PROVIDER, now, 5, Outcome.SENT),),
                    events=(EventRecord(EventType.SENT, now, {"provider": PROVIDER}),),
                    provider=PROVIDER,
                    provider_message_id=provider_id,
                )
            )
            for message_id, _, provider_id in sent
        )
    )
    statuses = await store.db.read(count_by_status, messages)
    if statuses.get("sent") != n:
        raise BenchError(f"expected {n} sent messages, the store has {statuses}")
    return sent


def signed_delivered(fake: FakeSendGrid, message_id: str, to: str, provider_id: str) -> SignedPost:
    """SendGrid's Signed Event Webhook request for one delivered message."""
    received = Received(provider_id, message_id, {"custom_args": {"mailgate_id": message_id}})
    [post] = fake.signed_posts([FakeOutcome("delivered", to, received)])
    return post


async def provider_events(n: int, *, engine: str, concurrency: int, warmup: int = 100) -> Result:
    """Signed `delivered` events over HTTP, then single accepts from the same server."""
    fake = FakeSendGrid(KEY)
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        cwd = Path(tmp)
        async with database(engine, cwd) as url:
            store = Store(DatabaseSettings(url=url))
            try:
                await store.migrate()
                sent = await sent_messages(store, n)
                config = write_config(
                    cwd / "mailgate.toml", url, webhook_secret=fake.webhook_public_key
                )
                args = ["-m", "mailgate", "serve", "--port", "0", "--no-worker"]
                async with process(*args, "--config", str(config), cwd=cwd) as p:
                    api = (await p.wait_for(r"listening on (http://\S+)"))[1]
                    key = (await p.wait_for(r"API key: (mg_\S+)"))[1]
                    result = await _events_against(
                        store, fake, sent, api, key, p.proc.pid, concurrency, warmup
                    )
            finally:
                await store.close()
    # Each event request is one write transaction: what one durable commit each costs here.
    if engine == "sqlite":
        result["commits_per_s"] = baseline_sqlite_commits(n)
    else:
        result["commits_per_s"] = await postgres.baseline_commits(n, clients=concurrency)
    return result


async def _events_against(
    store: Store,
    fake: FakeSendGrid,
    sent: Sequence[tuple[str, str, str]],
    api: str,
    key: str,
    pid: int,
    concurrency: int,
    warmup: int,
) -> Result:
    hook = f"{api}/v1/providers/{PROVIDER}/webhook"
    accept_url = f"{api}/v1/messages"
    accept_body = json.dumps(MESSAGE).encode()
    accept_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    answers: Counter[str] = Counter()

    def event_ok(status: int, body: bytes) -> None:
        if status != 200:
            raise BenchError(f"event webhook answered {status}: {body[:300]!r}")
        for k, v in json.loads(body).items():
            answers[k] += v

    def accepted(status: int, body: bytes) -> None:
        if status != 202:
            raise BenchError(f"POST /v1/messages answered {status}: {body[:300]!r}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up connections and both routes: accepts, and events for unknown messages.
        unknown = [
            signed_delivered(fake, new_id("msg"), "nobody@example.org", f"warm{i}")
            for i in range(warmup)
        ]
        await post_all(session, [(hook, p.body, p.headers) for p in unknown], concurrency, event_ok)
        warm = [(accept_url, accept_body, accept_headers)] * warmup
        await post_all(session, warm, concurrency, accepted)
        answers.clear()

        posts = [signed_delivered(fake, *s) for s in sent]  # signed just before, as a provider
        requests = [(hook, p.body, p.headers) for p in posts]
        cpu = cpu_seconds(pid)
        elapsed, latencies = await post_all(session, requests, concurrency, event_ok)
        cpu = cpu_seconds(pid) - cpu
        n = len(sent)
        if answers["recorded"] != n or answers["unknown"] or answers["duplicates"]:
            raise BenchError(f"{n} delivered events posted; the API answered {dict(answers)}")
        statuses = await store.db.read(count_by_status, messages)
        if statuses.get("delivered") != n:
            raise BenchError(f"{n} delivered events posted; messages by status: {statuses}")

        base_cpu = cpu_seconds(pid)
        base_elapsed, base_latencies = await post_all(
            session, [(accept_url, accept_body, accept_headers)] * n, concurrency, accepted
        )
        base_cpu = cpu_seconds(pid) - base_cpu
    return {
        "events_per_s": n / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "accepts_per_s": n / base_elapsed,
        "accept_p50_ms": percentile(base_latencies, 0.5) * 1000,
        "accept_p99_ms": percentile(base_latencies, 0.99) * 1000,
        "cpu_event_us": cpu / n * 1e6,
        "cpu_accept_us": base_cpu / n * 1e6,
    }


# --- 2. webhooks out -----------------------------------------------------------------


def receiver_app() -> Starlette:
    """Answers every POST with 204; counts requests and distinct `webhook-id`s per path."""
    requests: Counter[str] = Counter()
    ids: defaultdict[str, set[str]] = defaultdict(set)

    async def take(request: Request) -> Response:
        path = request.path_params["name"]
        await request.body()
        requests[path] += 1
        if webhook_id := request.headers.get("webhook-id"):
            ids[path].add(webhook_id)
        return Response(status_code=204)

    async def stats(_: Request) -> Response:
        return JSONResponse(
            {k: {"requests": v, "unique": len(ids[k])} for k, v in requests.items()}
        )

    return Starlette(
        routes=[
            Route("/_stats", stats, methods=["GET"]),
            Route("/{name}", take, methods=["POST"]),
        ]
    )


async def run_receiver() -> None:
    """The receiver process (`--receiver`): serve until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve_asgi(receiver_app()) as server:
        print(f"receiver listening on {server.url}", flush=True)
        await stop.wait()


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[str]:
    async with process("-m", "bench.events", "--receiver", cwd=ROOT) as p:
        yield (await p.wait_for(r"receiver listening on (http://\S+)"))[1]


def pending_bodies(conn: Connection) -> list[tuple[str, dict[str, Any]]]:
    d = webhook_deliveries
    rows = conn.execute(select(d.c.event_id, d.c.payload).order_by(d.c.id))
    return [(r.event_id, r.payload) for r in rows]


async def webhooks_out(m: int, *, engine: str, concurrency: int) -> Result:
    """`m` queued deliveries: aiohttp alone posting them, then a `mailgate worker` doing it."""
    fake = FakeSendGrid(KEY)
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        cwd = Path(tmp)
        async with database(engine, cwd) as url, receiver() as sink:
            store = Store(DatabaseSettings(url=url))
            try:
                await store.migrate()
                endpoint = await store.create_webhook(TENANT, f"{sink}/hook", ["message.accepted"])
                items = [new_message(f"reader{i}@example.org", send_at_days=1) for i in range(m)]
                await accept_all(store, items)
                queued = await store.db.read(count_by_status, webhook_deliveries)
                if queued != {"pending": m}:
                    raise BenchError(f"expected {m} pending deliveries, the outbox has {queued}")

                # Baseline: the same bodies, signed the same way, from one aiohttp session.
                stamp = int(time.time())
                requests = []
                for event_id, payload in await store.db.read(pending_bodies):
                    body = json.dumps(payload, separators=(",", ":")).encode()
                    headers = {
                        "Content-Type": "application/json",
                        "webhook-id": event_id,
                        "webhook-timestamp": str(stamp),
                        "webhook-signature": sign(endpoint.secret, event_id, stamp, body),
                    }
                    requests.append((f"{sink}/baseline", body, headers))

                def no_content(status: int, body: bytes) -> None:
                    if status != 204:
                        raise BenchError(f"receiver answered {status}: {body[:300]!r}")

                connector = aiohttp.TCPConnector(limit=concurrency)
                async with aiohttp.ClientSession(connector=connector) as session:
                    await post_all(session, requests[:200], concurrency, no_content)  # warm up
                    base_cpu = time.process_time()
                    base_elapsed, _ = await post_all(session, requests, concurrency, no_content)
                    base_cpu = time.process_time() - base_cpu

                    config = write_config(
                        cwd / "mailgate.toml",
                        url,
                        webhook_secret=fake.webhook_public_key,
                        concurrency=concurrency,
                    )
                    args = ["-m", "mailgate", "worker", "--config", str(config)]
                    async with process(*args, cwd=cwd) as worker:
                        await worker.wait_for("started")
                        started = time.perf_counter()
                        cpu = cpu_seconds(worker.proc.pid)
                        elapsed = await _until_delivered(store, m, worker, started)
                        cpu = cpu_seconds(worker.proc.pid) - cpu
                    statuses = await store.db.read(count_by_status, webhook_deliveries)
                    async with session.get(f"{sink}/_stats") as r:
                        seen = (await r.json()).get("hook", {"requests": 0, "unique": 0})
            finally:
                await store.close()
    if statuses != {"delivered": m}:
        raise BenchError(f"{m} deliveries queued; the outbox has {statuses}")
    if seen["unique"] != m:
        raise BenchError(f"{m} deliveries queued; the receiver got {seen}")
    return {
        "delivered_per_s": m / elapsed,
        "baseline_per_s": m / base_elapsed,
        "doubles": float(seen["requests"] - seen["unique"]),
        "cpu_delivery_us": cpu / m * 1e6,
        "cpu_baseline_us": base_cpu / m * 1e6,
    }


async def _until_delivered(store: Store, m: int, worker: Proc, started: float) -> float:
    deadline = started + max(120.0, m / 20)
    while True:
        statuses = await store.db.read(count_by_status, webhook_deliveries)
        if statuses.get("delivered", 0) >= m:
            return time.perf_counter() - started
        if time.perf_counter() > deadline or worker.proc.returncode is not None:
            tail = "\n".join(worker.lines[-20:])
            raise BenchError(f"deliveries not all delivered: {statuses}\n{tail}")
        await asyncio.sleep(0.02)


# --- 3. suppressions -----------------------------------------------------------------

_BULK_SQLITE = """
INSERT INTO suppressions (tenant_id, email, reason, message_id, detail, created_at)
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :rows)
SELECT :tenant, 'user' || n || '@example.org', 'manual', NULL, NULL, :created_at FROM g
"""
_BULK_POSTGRES = """
INSERT INTO suppressions (tenant_id, email, reason, message_id, detail, created_at)
SELECT :tenant, 'user' || n || '@example.org', 'manual', NULL, NULL, :created_at
FROM generate_series(1, CAST(:rows AS integer)) AS n
"""


def listed(n: int) -> str:
    return f"user{n}@example.org"


async def bulk_suppress(store: Store, rows: int) -> float:
    """`rows` addresses on the tenant's list, straight in SQL: seconds taken."""
    sql = _BULK_SQLITE if store.db.is_sqlite else _BULK_POSTGRES
    statement = text(sql).bindparams(bindparam("created_at", type_=suppressions.c.created_at.type))
    params = {"rows": rows, "tenant": TENANT, "created_at": utcnow()}
    started = time.perf_counter()
    if rows:
        await store.db.write(lambda conn: conn.execute(statement, params))
        if not store.db.is_sqlite:
            await store.db.write(lambda conn: conn.exec_driver_sql("ANALYZE suppressions"))
    elapsed = time.perf_counter() - started
    path = sqlite_path(store.settings.url)
    if path is not None:
        # Into the database file, as a list built up over months would be, not in the WAL.
        db = sqlite3.connect(path)
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.close()
        if busy:
            raise BenchError("could not checkpoint the SQLite WAL after the bulk insert")
    return elapsed


@dataclass
class Captured:
    """The statements (and parameters) an engine ran while `capture` was open."""

    statements: list[tuple[str, Any]] = field(default_factory=list)

    def find(self, word: str) -> tuple[str, Any]:
        for sql, params in self.statements:
            if word in sql:
                return sql, params
        raise BenchError(f"no statement with {word!r} among {len(self.statements)} captured")


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    captured = Captured()

    def before(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        captured.statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield captured
    finally:
        event.remove(Engine, "before_cursor_execute", before)


async def explain(store: Store, sql: str, params: Any) -> list[str]:
    """The plan of one statement exactly as the store ran it."""
    prefix = "EXPLAIN QUERY PLAN " if store.db.is_sqlite else "EXPLAIN "

    def run(conn: Connection) -> list[str]:
        rows = conn.exec_driver_sql(prefix + sql, params).all()
        if store.db.is_sqlite:
            return [str(r[-1]) for r in rows]
        return [str(r[0]) for r in rows]

    return await store.db.read(run)


def uses_primary_key(plan: Sequence[str]) -> bool:
    marks = ("sqlite_autoindex_suppressions", "PRIMARY KEY", "pk_suppressions", "suppressions_pkey")
    return any("suppressions" in line and any(m in line for m in marks) for line in plan)


@dataclass
class SuppressionDb:
    """A store with `rows` listed addresses and CLAIM_SIZE queued messages."""

    store: Store
    rows: int
    expected: dict[str, frozenset[str]]
    """Each queued message's recipients that are listed."""
    insert_s: float


async def suppression_db(url: str, rows: int, *, recipients: Sequence[int] = ()) -> SuppressionDb:
    """A fresh store listing user1..user`rows`; a message to each `user<n>` (and one other)."""
    store = Store(DatabaseSettings(url=url))
    await store.migrate()
    insert_s = await bulk_suppress(store, rows)
    expected: dict[str, frozenset[str]] = {}
    items = []
    for i, n in enumerate(recipients):
        items.append(new_message(listed(n), f"reader{i}@example.net"))
        expected[items[-1].id] = frozenset({listed(n)}) if n <= rows else frozenset()
    await accept_all(store, items)
    return SuppressionDb(store, rows, expected, insert_s)


def asks(db: SuppressionDb, n: int, rng: random.Random) -> list[tuple[str, bool]]:
    """`n` random addresses, half of them on the list, with the answer each should get."""
    hits = [(listed(rng.randint(1, db.rows)), True) for _ in range(n // 2)]
    misses = [(listed(db.rows + rng.randint(1, db.rows)), False) for _ in range(n - n // 2)]
    both = hits + misses
    rng.shuffle(both)
    return both


async def lookup_medians(dbs: Sequence[SuppressionDb], n: int, rng: random.Random) -> list[float]:
    """Median seconds of `Store.is_suppressed` per store, the stores' lookups interleaved
    (so a burst of other load on the machine hits them alike)."""
    questions = [asks(db, n, rng) for db in dbs]
    times: list[list[float]] = [[] for _ in dbs]
    for i in range(n):
        for db, qs, ts in zip(dbs, questions, times, strict=True):
            email, want = qs[i]
            t0 = time.perf_counter()
            got = await db.store.is_suppressed(TENANT, email)
            ts.append(time.perf_counter() - t0)
            if got is not want:
                raise BenchError(f"is_suppressed({email!r}) = {got}, expected {want}")
    return [statistics.median(ts) for ts in times]


async def query_median(db: SuppressionDb, n: int, rng: random.Random) -> float:
    """Median seconds of the lookup's query alone: `suppress.is_suppressed` on one open
    read transaction (no thread hop, no transaction per call)."""
    questions = asks(db, n, rng)

    def run(conn: Connection) -> list[float]:
        times = []
        for email, want in questions:
            t0 = time.perf_counter()
            got = suppress.is_suppressed(conn, TENANT, email)
            times.append(time.perf_counter() - t0)
            if got is not want:
                raise BenchError(f"is_suppressed({email!r}) = {got}, expected {want}")
        return times

    return statistics.median(await db.store.db.read(run))


async def claim_medians(dbs: Sequence[SuppressionDb], claims: int) -> list[float]:
    """Median seconds of one claim of all CLAIM_SIZE messages per store, interleaved;
    each claim is checked (the right recipients suppressed) and released."""
    times: list[list[float]] = [[] for _ in dbs]
    for _ in range(claims):
        for db, ts in zip(dbs, times, strict=True):
            t0 = time.perf_counter()
            got = await db.store.claim("bench", limit=CLAIM_SIZE, lease_seconds=60)
            ts.append(time.perf_counter() - t0)
            found = {c.id: c.suppressed for c in got}
            if found != db.expected:
                wrong = sum(1 for k, v in db.expected.items() if found.get(k) != v)
                raise BenchError(f"claim: {len(got)} claimed, {wrong} with the wrong suppressed")
            await db.store.release("bench", list(found))
    return [statistics.median(ts) for ts in times]


async def suppression_rows(
    repeats: int, *, engine: str, big: int, small: int, lookups: int, claims: int
) -> list[Row]:
    rng = random.Random(20261204)
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        cwd = Path(tmp)
        dirs = [cwd / name for name in ("big", "small", "empty")]
        for d in dirs:
            d.mkdir()
        async with (
            database(engine, dirs[0]) as big_url,
            database(engine, dirs[1]) as small_url,
            database(engine, dirs[2]) as empty_url,
        ):
            print(f"suppressions: inserting {big:,} rows", flush=True)
            recipients = [rng.randint(1, big) for _ in range(CLAIM_SIZE)]
            dbs = [
                await suppression_db(big_url, big, recipients=recipients),
                await suppression_db(small_url, small),
                await suppression_db(empty_url, 0, recipients=recipients),
            ]
            many, few, empty = dbs
            print(f"    {big:,} rows in {many.insert_s:.1f} s", flush=True)
            try:
                await _print_plans(many, few)
                await lookup_medians([many, few], 200, rng)  # warm the readers' connections
                runs: list[Result] = []
                for i in range(repeats):
                    big_s, small_s = await lookup_medians([many, few], lookups, rng)
                    claim_big_s, claim_empty_s = await claim_medians([many, empty], claims)
                    result = {
                        "big_us": big_s * 1e6,
                        "small_us": small_s * 1e6,
                        "query_big_us": await query_median(many, lookups, rng) * 1e6,
                        "query_small_us": await query_median(few, lookups, rng) * 1e6,
                        "claim_big_ms": claim_big_s * 1e3,
                        "claim_empty_ms": claim_empty_s * 1e3,
                    }
                    show(i, result)
                    runs.append(result)
            finally:
                for db in dbs:
                    await db.store.close()
    return [
        Row(
            f"is_suppressed, {big:,} listed (median of {lookups:,} lookups, half listed)",
            "µs",
            col(runs, "big_us"),
            col(runs, "small_us"),
            f"{small:,} listed",
        ),
        Row(
            f"its query alone, {big:,} listed (all in one open read transaction)",
            "µs",
            col(runs, "query_big_us"),
            col(runs, "query_small_us"),
            f"{small:,} listed",
        ),
        Row(
            f"claim of {CLAIM_SIZE} (200 recipients, {CLAIM_SIZE} listed) against {big:,} "
            f"(median of {claims})",
            "ms",
            col(runs, "claim_big_ms"),
            col(runs, "claim_empty_ms"),
            "same claim, empty list",
        ),
    ]


async def _print_plans(many: SuppressionDb, few: SuppressionDb) -> None:
    with capture() as lookup:
        await many.store.is_suppressed(TENANT, listed(1))
    with capture() as claim:
        got = await many.store.claim("bench", limit=CLAIM_SIZE, lease_seconds=60)
    await many.store.release("bench", [c.id for c in got])
    for title, (sql, params), db in (
        (f"is_suppressed, {many.rows:,} listed", lookup.find("suppressions"), many),
        (f"is_suppressed, {few.rows:,} listed", lookup.find("suppressions"), few),
        ("the claim's suppression join", claim.find("suppressions"), many),
    ):
        plan = await explain(db.store, sql, params)
        print(f"plan: {title}\n    " + " ".join(sql.split()), flush=True)
        for line in plan:
            print(f"    | {line}", flush=True)
        verdict = "yes" if uses_primary_key(plan) else "NO (a scan: see the plan)"
        print(f"    uses the suppressions primary key: {verdict}", flush=True)


# --- running and reporting -----------------------------------------------------------


@dataclass
class Row:
    measure: str
    unit: str
    runs: list[float]
    baseline_runs: list[float] | None = None
    baseline_name: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def baseline(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None


def show(i: int, result: Result) -> None:
    print(f"    run {i + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)


async def repeat(times: int, job: Callable[[], Awaitable[Result]]) -> list[Result]:
    results = []
    for i in range(times):
        result = await job()
        show(i, result)
        results.append(result)
    return results


def col(results: list[Result], key: str) -> list[float]:
    return [r[key] for r in results]


def fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "µs":
        return f"{value:,.0f} µs"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"
    return f"{value:.2f} {unit}"


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| measure | median | runs | baseline (median, runs) | ratio |",
        "|---|---:|---|---|---:|",
    ]
    for row in rows:
        runs = " / ".join(fmt(v, row.unit) for v in row.runs)
        against = ratio = ""
        if row.baseline is not None and row.baseline_runs:
            each = " / ".join(fmt(v, row.unit) for v in row.baseline_runs)
            against = f"{fmt(row.baseline, row.unit)} ({row.baseline_name}; {each})"
            ratio = f"{row.median / row.baseline:.2f}x"
        lines.append(
            f"| {row.measure} | {fmt(row.median, row.unit)} | {runs} | {against} | {ratio} |"
        )
    return "\n".join(lines)


def revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["events", "webhooks", "suppressions"], action="append")
    parser.add_argument("--messages", type=int, default=3000, help="events: messages (one each)")
    parser.add_argument("--concurrency", type=int, default=32, help="events: requests in flight")
    parser.add_argument("--deliveries", type=int, default=5000, help="webhooks: deliveries")
    parser.add_argument(
        "--webhook-concurrency", type=int, default=50, help="webhooks: in flight (both sides)"
    )
    parser.add_argument("--suppressions", type=int, default=1_000_000, help="the big list")
    parser.add_argument("--small", type=int, default=1000, help="the small list (baseline)")
    parser.add_argument("--lookups", type=int, default=1000, help="is_suppressed calls per run")
    parser.add_argument("--claims", type=int, default=20, help="claims of 100 per run")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        await run_receiver()
        return
    command = " ".join([".venv/bin/python -m bench.events", *sys.argv[1:]])
    only = set(args.only or ["events", "webhooks", "suppressions"])
    engine, r = args.database, args.repeats
    began = time.time()
    print(f"{command}\n{time.strftime('%Y-%m-%d %H:%M')}, mailgate at {revision()}", flush=True)
    rows: list[Row] = []
    if "events" in only:
        c = args.concurrency
        print(f"events: {args.messages:,} signed delivered events, {c} in flight", flush=True)
        runs = await repeat(r, lambda: provider_events(args.messages, engine=engine, concurrency=c))
        accepts = f"single POST /v1/messages, same server, {c} in flight"
        rows += [
            Row(
                f"provider events recorded/s, SendGrid-signed, over HTTP ({c} in flight)",
                "/s", col(runs, "events_per_s"), col(runs, "accepts_per_s"), accepts,
            ),
            Row(
                "provider events recorded/s (the same runs)", "/s", col(runs, "events_per_s"),
                col(runs, "commits_per_s"),
                f"one durable {'SQLite' if engine == 'sqlite' else 'PostgreSQL'} commit per "
                "request, same go",
            ),
            Row("event webhook latency p50", "ms", col(runs, "p50_ms"),
                col(runs, "accept_p50_ms"), "single POST p50"),
            Row("event webhook latency p99", "ms", col(runs, "p99_ms"),
                col(runs, "accept_p99_ms"), "single POST p99"),
            Row("API process CPU per event request", "µs", col(runs, "cpu_event_us"),
                col(runs, "cpu_accept_us"), "per single POST"),
        ]  # fmt: skip
    if "webhooks" in only:
        c = args.webhook_concurrency
        print(f"webhooks: {args.deliveries:,} deliveries, {c} in flight", flush=True)
        runs = await repeat(r, lambda: webhooks_out(args.deliveries, engine=engine, concurrency=c))
        rows.append(
            Row(
                f"webhooks delivered/s, one `mailgate worker` ({c} in flight)",
                "/s",
                col(runs, "delivered_per_s"),
                col(runs, "baseline_per_s"),
                f"aiohttp alone, {c} in flight, pre-signed",
            )
        )
        rows.append(
            Row(
                "worker CPU per webhook delivered",
                "µs",
                col(runs, "cpu_delivery_us"),
                col(runs, "cpu_baseline_us"),
                "aiohttp client per POST",
            )
        )
        doubles = sum(col(runs, "doubles"))
        print(f"    webhooks received twice: {doubles:.0f}", flush=True)
    if "suppressions" in only:
        rows += await suppression_rows(
            r,
            engine=engine,
            big=args.suppressions,
            small=args.small,
            lookups=args.lookups,
            claims=args.claims,
        )
    print()
    print(f"{command}   # {time.strftime('%Y-%m-%d')}, {engine}, {r} repeats, "
          f"{(time.time() - began) / 60:.1f} min, {os.cpu_count()} CPUs")  # fmt: skip
    print()
    print(table(rows))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"{stamp}-events-{engine}.json").write_text(
        json.dumps(
            {
                "command": command,
                "revision": revision(),
                "cpus": os.cpu_count(),
                "rows": [
                    row.__dict__ | {"median": row.median, "baseline": row.baseline} for row in rows
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
