"""A soak test: `mailgate serve` as it starts by default, on SQLite, under steady load for long.

    .venv/bin/python -m bench.soak                        # 30 minutes at half the measured max
    .venv/bin/python -m bench.soak --minutes 5 --rate 200 --plot docs/soak.png
    .venv/bin/python -m bench.soak --plot-only bench/results/soak-<time>.json --plot docs/soak.png

mailgate serve runs with its defaults (on a machine with more than one core:
a supervisor, one API process and a worker process) against two fake
providers on loopback (primary: SendGrid, backup: Mailgun, both answering at
once and keeping no message bodies). Without `--rate`, a 20-second burst of
single POSTs from 64 connections first measures the service's maximum rate
end to end (messages/s until the provider has them all, as `bench.run`'s end
to end measure), on the same service, and the soak then runs at half of it.

The load is open-loop: requests are started on a fixed schedule, each as
its own task, whether or not the ones before were answered (at most 256
connections; a request waiting for one waits on the clock). A request's
latency runs from its scheduled time to its answer, so queueing anywhere,
in the service or in the load generator, shows up in it; anything other
than a 202 (an error status, a timeout of 60 s, a broken connection) is an
error. Latency percentiles cover every request scheduled in the minute.

Every 5 s the resident memory (VmRSS) of each mailgate process and of the
load generator is sampled, with their CPU time, the database and WAL file
sizes and how many messages the fakes have taken. Per minute: requests
sent, p50 / p99 / max latency, errors, memory at the end of the minute, and
the messages taken so far against those accepted (the backlog: 202s received
minus messages taken; a few below zero when the provider has a message
before its 202 has reached the load generator). At the end,
once the fakes have taken everything: exactly-once, from the fakes' count
per message id (each accepted message taken once by one of them, none
twice, none missing) and from the database (each accepted message `sent`).

The load generator keeps every accepted id (30 bytes each) and each
request's latency (8 bytes) in compact arrays, so its own memory grows by
about 40 bytes a request by design. Results are written to
bench/results/soak-<UTC time>.json (rewritten after every minute, so a run
cut short keeps what it measured); `--plot` draws memory and latency over
time to a PNG, and `--plot-only` redraws one from a saved JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sqlite3
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.harness import MESSAGE, Service, cpu_seconds, fake_stats, service

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
SAMPLE_SECONDS = 5.0
BURST_SECONDS = 20.0
BURST_CONNECTIONS = 64
CONNECTIONS = 256
REQUEST_TIMEOUT_SECONDS = 60.0
WARMUP = 200
WAITING = ("queued", "scheduled", "sending")
"""Message statuses that are not an outcome yet."""
LOAD_GENERATOR = "load generator"


# --- the processes and what they hold ------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:  # the process is gone, or was never there
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS), or None once it is gone."""
    status = _read(f"/proc/{pid}/status")
    for line in (status or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (_read(f"{task}/children") or "").split()]
    return sorted(set(found))


def command_line(pid: int) -> str:
    return (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (any address)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table) or "").splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def mailgate_processes(serve_pid: int, port: int) -> dict[str, int]:
    """Label -> pid for `serve` and its children (by command line: a multiprocessing
    child holding the listening socket is an API process, one that does not is the
    worker), plus the load generator itself."""
    listening = listening_inodes(port)
    api: list[int] = []
    workers: list[int] = []
    others: dict[str, int] = {}
    for child in children(serve_pid):
        args = command_line(child)
        if "resource_tracker" in args:
            others["resource tracker"] = child
        elif "spawn_main" in args:
            (api if socket_inodes(child) & listening else workers).append(child)
        elif args:
            others[f"child {child}"] = child
    found = {"supervisor" if api or workers else "serve": serve_pid}
    for name, pids in (("api", api), ("worker", workers)):
        for i, pid in enumerate(pids):
            found[name if len(pids) == 1 else f"{name}-{i + 1}"] = pid
    found |= others
    found[LOAD_GENERATOR] = os.getpid()
    return found


class IdLog:
    """Accepted message ids, packed: a 30-character id costs 30 bytes, not ~90."""

    WIDTH = 30

    def __init__(self) -> None:
        self._packed = bytearray()
        self._odd: list[str] = []

    def add(self, message_id: str) -> None:
        raw = message_id.encode()
        if len(raw) == self.WIDTH:
            self._packed += raw
        else:
            self._odd.append(message_id)

    def __len__(self) -> int:
        return len(self._packed) // self.WIDTH + len(self._odd)

    def __iter__(self) -> Iterator[str]:
        view = memoryview(self._packed)
        for at in range(0, len(view), self.WIDTH):
            yield bytes(view[at : at + self.WIDTH]).decode()
        yield from self._odd


@dataclass
class Snapshot:
    at: float
    """time.monotonic() when taken; `t` (from the start of the paced load) is added on output."""
    phase: str
    pids: dict[str, int]
    rss: dict[str, int]
    """Bytes, per process label."""
    cpu: dict[str, float]
    """CPU seconds used so far, per process label."""
    accepted: int
    taken: int
    db_bytes: int
    wal_bytes: int


class Probe:
    """Takes snapshots of the service: its processes, its files, the fakes' counts."""

    def __init__(self, svc: Service, control: aiohttp.ClientSession, ids: IdLog) -> None:
        self.svc = svc
        self.control = control
        self.ids = ids
        self.port = urlsplit(svc.url).port or 80
        self.db = Path(svc.database_url.removeprefix("sqlite:///"))
        self.phase = "start"
        self.samples: list[Snapshot] = []
        self.restarts: list[dict[str, Any]] = []
        self._last_pids: dict[str, int] = {}

    async def taken(self) -> int:
        primary = await fake_stats(self.control, self.svc.sendgrid)
        backup = await fake_stats(self.control, self.svc.mailgun)
        return primary["taken"] + backup["taken"]

    async def snapshot(self) -> Snapshot:
        pids = mailgate_processes(self.svc.pid, self.port)
        rss: dict[str, int] = {}
        cpu: dict[str, float] = {}
        for label, pid in pids.items():
            if (resident := rss_bytes(pid)) is not None:
                rss[label] = resident
                with contextlib.suppress(OSError, IndexError, ValueError):
                    cpu[label] = cpu_seconds(pid)
        for label, pid in pids.items():
            old = self._last_pids.get(label)
            if old is not None and old != pid:
                self.restarts.append(
                    {"at": time.monotonic(), "label": label, "old": old, "new": pid}
                )
        self._last_pids |= pids
        accepted = len(self.ids)
        taken = await self.taken()
        return Snapshot(
            time.monotonic(), self.phase, pids, rss, cpu, accepted, taken,
            _size(self.db), _size(Path(f"{self.db}-wal")),
        )  # fmt: skip

    async def sample_forever(self, every: float = SAMPLE_SECONDS) -> None:
        next_at = time.monotonic()
        while True:
            self.samples.append(await self.snapshot())
            next_at += every
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- load ------------------------------------------------------------------------------


@dataclass
class Minute:
    index: int
    start: float
    end: float
    """Seconds from the start of the paced load."""
    latencies: array[float] = field(default_factory=lambda: array("d"))
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    done: int = 0
    max_lag: float = 0.0
    """Longest a request started after its scheduled time (the load generator falling behind)."""
    closed: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    snapped: asyncio.Event = field(default_factory=asyncio.Event)
    at_end: Snapshot | None = None

    def close(self) -> None:
        self.closed = True
        if self.done == self.sent:
            self.finished.set()


async def post_one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], ids: IdLog
) -> str | None:
    """POST one message; None when accepted, else what went wrong."""
    try:
        async with session.post(f"{url}/v1/messages", json=body) as r:
            payload = await r.read()
            if r.status != 202:
                return f"HTTP {r.status}"
            ids.add(json.loads(payload)["id"])
            return None
    except Exception as exc:  # every failure is an error to count, not to stop on
        return type(exc).__name__


async def paced(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    seconds: float,
    ids: IdLog,
    errors: Counter[str],
    probe: Probe,
    on_minute: Callable[[Minute], None],
) -> list[Minute]:
    """Open-loop load: request n is started at t0 + n / rate, answered or not."""
    minutes = [
        Minute(i, i * 60.0, min((i + 1) * 60.0, seconds)) for i in range(math.ceil(seconds / 60))
    ]
    total = round(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()

    async def one(n: int, scheduled: float, minute: Minute) -> None:
        minute.max_lag = max(minute.max_lag, time.monotonic() - scheduled)
        body = MESSAGE | {"subject": f"Soak {n}"}
        problem = await post_one(session, url, body, ids)
        minute.latencies.append(time.monotonic() - scheduled)
        if problem is None:
            minute.accepted += 1
        else:
            minute.errors += 1
            errors[problem] += 1
        minute.done += 1
        if minute.closed and minute.done == minute.sent:
            minute.finished.set()

    async def boundaries() -> None:
        for minute in minutes:
            await asyncio.sleep(max(0.0, t0 + minute.end - time.monotonic()))
            minute.at_end = await probe.snapshot()
            probe.samples.append(minute.at_end)
            minute.snapped.set()

    async def reports() -> None:
        for minute in minutes:
            await minute.finished.wait()
            await minute.snapped.wait()
            on_minute(minute)

    watchers = [asyncio.create_task(boundaries()), asyncio.create_task(reports())]
    current = 0
    n = 0
    while n < total:
        now = time.monotonic()
        while n < total and t0 + n / rate <= now:
            index = min(int(n / rate // 60), len(minutes) - 1)
            while current < index:
                minutes[current].close()
                current += 1
            minutes[index].sent += 1
            task = asyncio.create_task(one(n, t0 + n / rate, minutes[index]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if n < total:
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    for minute in minutes[current:]:
        minute.close()
    await asyncio.gather(*watchers)
    return minutes


async def warm_up(session: aiohttp.ClientSession, probe: Probe, ids: IdLog) -> None:
    """A few hundred messages one by one: connections, caches, every process."""
    for n in range(WARMUP):
        problem = await post_one(session, probe.svc.url, MESSAGE | {"subject": f"Warm {n}"}, ids)
        assert problem is None, problem
    await wait_taken(probe, len(ids), 60)


async def wait_taken(probe: Probe, target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while await probe.taken() < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def max_rate(svc: Service, probe: Probe, ids: IdLog, seconds: float) -> dict[str, float]:
    """Single POSTs from 64 connections for `seconds`; messages/s until the fakes have them."""
    headers = {"Authorization": f"Bearer {svc.key}"}
    connector = aiohttp.TCPConnector(limit=BURST_CONNECTIONS)
    errors = 0
    before = len(ids)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        taken_before = await probe.taken()
        started = time.monotonic()
        until = started + seconds

        async def client(c: int) -> None:
            nonlocal errors
            n = 0
            while time.monotonic() < until:
                body = MESSAGE | {"subject": f"Burst {c}-{n}"}
                errors += await post_one(session, svc.url, body, ids) is not None
                n += 1

        await asyncio.gather(*(client(c) for c in range(BURST_CONNECTIONS)))
        accepted_in = time.monotonic() - started
        messages = len(ids) - before
        if not await wait_taken(probe, taken_before + messages, 300):
            raise RuntimeError("the burst's messages were not all delivered within 300 s")
        elapsed = time.monotonic() - started
    return {
        "seconds": seconds,
        "messages": messages,
        "errors": errors,
        "messages_per_s": messages / elapsed,
        "accepted_per_s": messages / accepted_in,
    }


# --- the end: exactly once -------------------------------------------------------------


async def exactly_once(probe: Probe, ids: IdLog) -> dict[str, Any]:
    """Each accepted id taken once by one fake, none twice, none missing; each `sent`."""
    counts: list[dict[str, int]] = []
    for url in (probe.svc.sendgrid, probe.svc.mailgun):
        async with probe.control.get(f"{url}/_fake/counts") as r:
            counts.append(dict(await r.json()))
    primary, backup = counts
    db = sqlite3.connect(f"file:{probe.db}?mode=ro", uri=True)
    try:
        statuses = dict(db.execute("SELECT id, status FROM messages").fetchall())
    finally:
        db.close()
    by_status: Counter[str] = Counter()
    once = twice = missing = via_backup = 0
    accepted = 0
    for message_id in ids:
        accepted += 1
        in_backup = backup.pop(message_id, 0)
        via_backup += in_backup > 0
        times = primary.pop(message_id, 0) + in_backup
        once += times == 1
        twice += times >= 2
        missing += times == 0
        by_status[str(statuses.pop(message_id, "not in the database"))] += 1
    result: dict[str, Any] = {
        "accepted": accepted,
        "sent": by_status["sent"],
        "taken_once": once,
        "taken_twice_or_more": twice,
        "missing": missing,
        "via_backup": via_backup,
        "taken_not_accepted": len(primary) + len(backup),
        "rows_not_accepted": len(statuses),
        "statuses": dict(by_status),
    }
    result["ok"] = (
        accepted == once == result["sent"] and twice == missing == result["taken_not_accepted"] == 0
    )
    return result


async def wait_settled(probe: Probe, accepted: int, timeout: float) -> dict[str, Any]:
    """Until the fakes have taken `accepted` messages and none is left waiting in the
    database (the worker records `sent` just after the provider answers)."""
    started = time.monotonic()
    delivered = await wait_taken(probe, accepted, timeout)
    waiting = -1
    while time.monotonic() - started < timeout + 30:
        db = sqlite3.connect(f"file:{probe.db}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(WAITING))
            query = f"SELECT count(*) FROM messages WHERE status IN ({marks})"
            waiting = int(db.execute(query, WAITING).fetchone()[0])
        finally:
            db.close()
        if waiting == 0:
            break
        await asyncio.sleep(0.2)
    return {
        "seconds": time.monotonic() - started,
        "all_taken": delivered,
        "still_waiting_in_db": waiting,
    }


# --- reporting -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else math.nan


def minute_row(minute: Minute, t0: float) -> dict[str, Any]:
    latencies = sorted(minute.latencies)
    snap = minute.at_end
    assert snap is not None
    return {
        "minute": minute.index + 1,
        "start_s": minute.start,
        "end_s": minute.end,
        "sent": minute.sent,
        "accepted": minute.accepted,
        "errors": minute.errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
        "max_lag_ms": minute.max_lag * 1000,
        "accepted_so_far": snap.accepted,
        "taken_so_far": snap.taken,
        "backlog": snap.accepted - snap.taken,
        "rss_mib": {k: v / MIB for k, v in snap.rss.items()},
        "db_mib": snap.db_bytes / MIB,
        "wal_mib": snap.wal_bytes / MIB,
        "snapshot_t": snap.at - t0,
    }


def labels_of(result: dict[str, Any]) -> list[str]:
    """Process labels in a stable order: mailgate's first, the load generator last."""
    seen: dict[str, None] = {}
    for sample in result["samples"]:
        seen |= dict.fromkeys(sample["rss"])
    order = ["serve", "supervisor", "api", "worker", "resource tracker"]
    return sorted(seen, key=lambda k: (k == LOAD_GENERATOR, _rank(order, k), k))


def _rank(order: list[str], label: str) -> int:
    for i, prefix in enumerate(order):
        if label == prefix or label.startswith(prefix + "-"):
            return i
    return len(order)


def table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    head = ["min", "sent", "errors", "p50 ms", "p99 ms", "max ms", "taken", "backlog"]
    head += [f"{label} MiB" for label in labels] + ["WAL MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [
            f"{row['minute']}" + ("" if row["end_s"] - row["start_s"] == 60 else "*"),
            f"{row['sent']:,}", f"{row['errors']:,}", f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}", f"{row['max_ms']:.0f}", f"{row['taken_so_far']:,}",
            f"{row['backlog']:,}",
        ]  # fmt: skip
        cells += [_mib(row["rss_mib"].get(label)) for label in labels]
        cells.append(f"{row['wal_mib']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def memory_summary(result: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    """Per process: RSS at the first sample, when the paced load began, at its end, the
    largest, and the slope over the second half of the paced load."""
    samples = result["samples"]
    duration = result["minutes"] * 60
    out = []
    for label in labels:
        points = [(s["t"], s["rss"][label] / MIB) for s in samples if label in s["rss"]]
        if not points:
            continue
        during = [(t, v) for t, v in points if 0 <= t <= duration]
        second_half = [(t, v) for t, v in during if t >= duration / 2]
        out.append(
            {
                "process": label,
                "first_mib": points[0][1],
                "load_start_mib": during[0][1] if during else math.nan,
                "load_end_mib": during[-1][1] if during else math.nan,
                "max_mib": max(v for _, v in points),
                "second_half_mib_per_h": _slope(second_half) * 3600,
            }
        )
    return out


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per second), or nan with fewer than three points."""
    if len(points) < 3:
        return math.nan
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var else math.nan


def summary(result: dict[str, Any]) -> str:
    labels = labels_of(result)
    rows = result["rows"]
    lines = [table(rows, labels), ""]
    if any(r["end_s"] - r["start_s"] != 60 for r in rows):
        lines += ["(* a minute cut short: the run's length is not a whole number of minutes)", ""]
    how = (
        f"half the measured maximum of {result['burst']['messages_per_s']:.0f} messages/s"
        if result["burst"]
        else "given"
    )
    sent = sum(r["sent"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    lines.append(
        f"Paced load: {result['rate']:g} messages/s ({how}) for {result['minutes']:g} min: "
        f"{sent:,} sent, {errors:,} errors"
        + (f" ({', '.join(f'{k}: {v}' for k, v in result['errors'].items())})" if errors else "")
    )
    lines += ["", "| process | first MiB | load start | load end | max | 2nd half MiB/h |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for m in result["memory"]:
        lines.append(
            f"| {m['process']} | {m['first_mib']:.1f} | {m['load_start_mib']:.1f} | "
            f"{m['load_end_mib']:.1f} | {m['max_mib']:.1f} | {m['second_half_mib_per_h']:+.1f} |"
        )
    lines.append("")
    if rows:
        worst = max(rows, key=lambda r: r["p99_ms"])
        lines.append(
            f"p99 worst minute: minute {worst['minute']}, {worst['p99_ms']:.1f} ms "
            f"(max {worst['max_ms']:.0f} ms); worst max latency overall "
            f"{max(r['max_ms'] for r in rows):.0f} ms; worst start lag of the load generator "
            f"{max(r['max_lag_ms'] for r in rows):.1f} ms"
        )
    for restart in result["restarts"]:
        lines.append(
            f"restart: {restart['label']} pid {restart['old']} -> {restart['new']} "
            f"at t={restart['t']:.0f} s"
        )
    drain = result["drain"]
    lines.append(
        f"drain after the load: {drain['seconds']:.1f} s, all taken: {drain['all_taken']}, "
        f"still waiting in the database: {drain['still_waiting_in_db']}"
    )
    once = result["exactly_once"]
    verdict = "OK" if once["ok"] else "FAILED"
    lines.append(
        f"exactly-once ({verdict}; warm-up and burst included): accepted {once['accepted']:,}, "
        f"sent {once['sent']:,}, taken once {once['taken_once']:,}, "
        f"taken twice+ {once['taken_twice_or_more']:,}, missing {once['missing']:,}, "
        f"via backup {once['via_backup']:,}, taken but not accepted "
        f"{once['taken_not_accepted']:,}, statuses {once['statuses']}"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels on one time axis: RSS per process, p50/p99 latency per minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 2]}
    )
    samples = result["samples"]
    for label in labels_of(result):
        points = [(s["t"] / 60, s["rss"][label] / MIB) for s in samples if label in s["rss"]]
        top.plot(*zip(*points, strict=True), label=label, linewidth=1.4)
    duration = result["minutes"]
    before = "warm-up + max-rate burst" if result["burst"] else "warm-up"
    spans = [
        (before, [s["t"] / 60 for s in samples if s["t"] < 0], 0.0),
        ("drain", [s["t"] / 60 for s in samples if s["phase"] == "drain"], duration),
    ]
    for what, times, edge in spans:
        if times:
            start, end = min([*times, edge]), max([*times, edge])
            for axis in (top, bottom):
                axis.axvspan(start, end, color="grey", alpha=0.12, linewidth=0)
            top.text(start, 1, f" {what}", transform=top.get_xaxis_transform(), va="top",
                     fontsize=8, color="dimgrey")  # fmt: skip
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    rows = result["rows"]
    mid = [(r["start_s"] + r["end_s"]) / 120 for r in rows]
    bottom.plot(mid, [r["p50_ms"] for r in rows], "o-", label="p50", markersize=3)
    bottom.plot(mid, [r["p99_ms"] for r in rows], "s-", label="p99", markersize=3)
    bottom.plot(mid, [r["max_ms"] for r in rows], "x:", label="max", color="grey", linewidth=1)
    bottom.set_yscale("log")
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    bottom.set_ylabel("accept latency per minute (ms)")
    bottom.set_xlabel("minutes from the start of the paced load")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    how = ""
    if result["burst"]:
        how = f", half the measured max {result['burst']['messages_per_s']:.0f}/s"
    fig.suptitle(
        f"mailgate serve soak, SQLite, defaults: {result['rate']:g} messages/s{how} "
        f"for {duration:g} min ({result['cpus']} cores)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _minor_label(value: float, _: object) -> str:
    """Label 2x and 5x of each decade on the log axis, leave the rest blank."""
    if value <= 0:
        return ""
    return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""


# --- running ---------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN as null: the JSON stays readable by strict parsers."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


async def soak(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    ids = IdLog()
    errors: Counter[str] = Counter()
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "cpus": os.cpu_count(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "minutes": args.minutes,
        "rate": args.rate,
        "burst": None,
        "connections": CONNECTIONS,
        "sample_seconds": SAMPLE_SECONDS,
        "rows": [],
        "samples": [],
        "restarts": [],
        "errors": {},
    }
    async with (
        service(latency=0.0, keep=0) as svc,
        aiohttp.ClientSession() as control,
    ):
        probe = Probe(svc, control, ids)
        sampler = asyncio.create_task(probe.sample_forever())
        t0 = time.monotonic()  # replaced by the paced load's start

        def save() -> None:
            taken = sorted(probe.samples, key=lambda s: s.at)
            result["samples"] = [asdict(s) | {"t": s.at - t0} for s in taken]
            result["restarts"] = [r | {"t": r["at"] - t0} for r in probe.restarts]
            result["errors"] = dict(errors)
            out.write_text(json.dumps(_json_safe(result), indent=1))

        def on_minute(minute: Minute) -> None:
            row = minute_row(minute, t0)
            result["rows"].append(row)
            rss = ", ".join(f"{k} {v:.0f}" for k, v in row["rss_mib"].items())
            print(
                f"  minute {row['minute']}: sent {row['sent']:,}, errors {row['errors']}, "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"max {row['max_ms']:.0f} ms, backlog {row['backlog']:,}, RSS MiB: {rss}",
                flush=True,
            )
            save()

        try:
            headers = {"Authorization": f"Bearer {svc.key}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                probe.phase = "warm-up"
                await warm_up(session, probe, ids)
            if args.rate is None:
                probe.phase = "burst"
                print(
                    f"max rate: {args.burst_seconds:g} s of single POSTs from "
                    f"{BURST_CONNECTIONS} connections...",
                    flush=True,
                )
                burst = await max_rate(svc, probe, ids, args.burst_seconds)
                result["burst"] = burst
                result["rate"] = round(burst["messages_per_s"] / 2)
                print(
                    f"    {burst['messages_per_s']:.0f} messages/s end to end "
                    f"({burst['accepted_per_s']:.0f}/s accepted, {burst['errors']} errors); "
                    f"soaking at {result['rate']}/s",
                    flush=True,
                )
            rate = float(result["rate"])
            print(f"paced load: {rate:g} messages/s for {args.minutes:g} min", flush=True)
            connector = aiohttp.TCPConnector(limit=CONNECTIONS)
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
            async with aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=timeout
            ) as session:
                probe.phase = "soak"
                t0 = time.monotonic()
                await paced(
                    session, svc.url, rate, args.minutes * 60, ids, errors, probe, on_minute
                )
            probe.phase = "drain"
            print(f"waiting for the fakes to take all {len(ids):,} accepted...", flush=True)
            result["drain"] = await wait_settled(probe, len(ids), args.drain_timeout)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            result["exactly_once"] = await exactly_once(probe, ids)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            save()
    result["labels"] = labels_of(result)
    result["memory"] = memory_summary(result, result["labels"])
    out.write_text(json.dumps(_json_safe(result), indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="paced load (may be 0.5)")
    parser.add_argument(
        "--rate", type=float, help="messages/s (default: half the max, measured first)"
    )
    parser.add_argument("--burst-seconds", type=float, default=BURST_SECONDS)
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for delivery"
    )
    parser.add_argument("--plot", type=Path, help="write a PNG of memory and latency here")
    parser.add_argument(
        "--plot-only", type=Path, metavar="RESULTS.json", help="redraw --plot from saved results"
    )
    args = parser.parse_args()
    if args.plot_only is not None:
        if args.plot is None:
            parser.error("--plot-only needs --plot PATH")
        plot(json.loads(args.plot_only.read_text()), args.plot)
        print(f"plot: {args.plot}")
        return
    if args.minutes <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--minutes and --rate must be above zero")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    result = asyncio.run(soak(args, out))
    print()
    print(summary(result))
    print(f"\nresults: {out.relative_to(ROOT)}")
    if args.plot is not None:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    if not result["exactly_once"]["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
