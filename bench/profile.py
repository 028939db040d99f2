"""Where the CPU goes: py-spy samples of the accept and delivery loops, split per layer.

    .venv/bin/uv sync --group bench --inexact        # py-spy
    .venv/bin/python -m bench.profile                 # SQLite, both loops
    .venv/bin/python -m bench.profile --only accept --flame /tmp/accept.txt

The load is bench.cpu's: 3,000 single POSTs over 64 connections against
`serve --no-worker` (after 200 to warm up), 30,000 in batches of 1,000 from 4
clients (`--only batch`), and 5,000 messages queued through
the batch API and delivered by one `mailgate worker` to a fake SendGrid
answering at once. py-spy samples the one process doing the work (1,000
samples/s, on-CPU samples only) while /proc gives its CPU seconds; each
sample is put in the layer of its innermost frame that belongs to a layer
below (so SQLAlchemy called by the store counts as SQLAlchemy), and the
process's CPU per message is split in proportion. The split is what a
change to the hot paths is aimed at; bench.cpu and bench.run say whether it
paid.

`--flame FILE` keeps py-spy's collapsed stacks (one line per stack, with its
count) for a closer look.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.cpu import accept_load, batch_load
from bench.harness import MESSAGE, cpu_seconds, fake_stats, process, service

# (layer, markers in a frame's file path); the first layer whose marker a frame's file
# holds names it, and the innermost frame with a layer names the sample. py-spy sees
# Python frames only: time inside a C call (SQLite, a commit's fsync) shows as the
# Python frame that made it, so SQLAlchemy's calls into the driver get a layer of
# their own.
DRIVER = "database calls (driver, SQLite in process, fsync)"
DRIVER_CALLS = ("DefaultDialect.do_", "Cursor", "(sqlite3/", "(asyncpg/")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("SQLAlchemy", ("(sqlalchemy/",)),
    ("pydantic and address checks", ("(pydantic/", "(pydantic_core/", "(email_validator/")),
    ("JSON", ("(json/",)),
    ("HTTP server (uvicorn, httptools)", ("(uvicorn/", "(httptools/", "(h11/")),
    ("web framework (Starlette, FastAPI)", ("(starlette/", "(fastapi/")),
    ("HTTP client (aiohttp)", ("(aiohttp/", "(multidict/", "(yarl/")),
    ("metrics (prometheus_client)", ("(prometheus_client/",)),
    ("mailgate: API", ("(mailgate/api/", "(mailgate/console/", "(mailgate/serving.py")),
    ("mailgate: store", ("(mailgate/store/",)),
    ("mailgate: delivery", ("(mailgate/delivery/",)),
    ("mailgate: providers", ("(mailgate/providers/",)),
    ("mailgate: other", ("(mailgate/",)),
    ("asyncio event loop", ("(asyncio/", "(selectors.py")),
]
OTHER = "other (stdlib, interpreter)"


def layer_of(stack: str) -> str:
    """The layer of one collapsed stack (frames outermost first, `;`-separated)."""
    frames = stack.split(";")
    leaf = frames[-1]
    if leaf.startswith(DRIVER_CALLS[:2]) or any(m in leaf for m in DRIVER_CALLS[2:]):
        return DRIVER
    for frame in reversed(frames):
        for name, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return name
    return OTHER


def split(collapsed: str) -> Counter[str]:
    """Samples per layer from py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[layer_of(stack)] += int(count)
    return counts


@contextlib.asynccontextmanager
async def sampling(pid: int, out: Path) -> AsyncIterator[None]:
    """py-spy recording `pid` until the block ends."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
        "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its output and ends
        _, err = await proc.communicate()
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")


async def accept(n: int, out: Path, concurrency: int = 64) -> float:
    """CPU seconds per accepted message of `serve --no-worker`, sampled into `out`."""
    async with service(worker=False) as svc:
        return await accept_load(svc, n, concurrency, during=lambda: sampling(svc.pid, out))


async def batch(n: int, out: Path) -> float:
    """CPU seconds per message of `serve --no-worker` taking batches of 1,000, into `out`."""
    async with service(worker=False) as svc:
        return await batch_load(svc, n, during=lambda: sampling(svc.pid, out))


async def deliver(n: int, out: Path) -> float:
    """CPU seconds per delivered message of one `mailgate worker`, sampled into `out`."""
    async with service(worker=False, poll_interval_seconds=0.05) as svc:
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        args = ["-m", "mailgate", "worker", "--config", str(svc.config)]
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            process(*args, cwd=svc.cwd) as worker,
        ):
            await worker.wait_for("started")
            await asyncio.sleep(0.5)
            pid = worker.proc.pid
            payload = json.dumps({"messages": [MESSAGE] * 1000})
            async with sampling(pid, out):
                before = cpu_seconds(pid)
                for _ in range(n // 1000):
                    async with session.post(f"{svc.url}/v1/messages/batch", data=payload) as r:
                        assert r.status == 200
                while (await fake_stats(session, svc.sendgrid))["taken"] < n:
                    await asyncio.sleep(0.02)
                used = cpu_seconds(pid) - before
    return used / n


def report(name: str, per_message: float, counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    lines = [
        f"\n{name}: {per_message * 1e6:.0f} µs of CPU per message ({total} samples)\n",
        "| layer | share | µs per message |",
        "|---|---:|---:|",
    ]
    for layer, count in counts.most_common():
        share = count / total
        lines.append(f"| {layer} | {share:.0%} | {share * per_message * 1e6:.0f} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["accept", "batch", "delivery"])
    parser.add_argument("--accepts", type=int, default=3000)
    parser.add_argument("--batched", type=int, default=30_000)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--flame", type=Path, help="keep the collapsed stacks here")
    parser.add_argument(
        "--read",
        type=Path,
        nargs=2,
        metavar=("STACKS", "US_PER_MESSAGE"),
        help="split stacks kept with --flame again, without a run",
    )
    args = parser.parse_args()
    if args.read:
        counts = split(args.read[0].read_text())
        print(report(str(args.read[0]), float(str(args.read[1])) / 1e6, counts))
        return
    jobs: dict[str, tuple[str, Callable[[int, Path], Awaitable[float]], int]] = {
        "accept (serve --no-worker, single POSTs)": ("accept", accept, args.accepts),
        "batch accept (serve --no-worker, 1,000 per POST)": ("batch", batch, args.batched),
        "delivery (one worker, provider 0 ms)": ("delivery", deliver, args.deliveries),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for title, (key, job, n) in jobs.items():
            if args.only not in (None, key):
                continue
            out = Path(tmp) / f"{key}.txt"
            per_message = await job(n, out)
            collapsed = out.read_text()
            if args.flame:
                target = args.flame.with_name(f"{args.flame.stem}-{key}{args.flame.suffix}")
                target.write_text(collapsed)
            print(report(title, per_message, split(collapsed)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
