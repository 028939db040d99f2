"""The benchmark's moving parts: processes, fake providers, a database per run, `mailgate serve`.

Every run gets a fresh database: a SQLite file in a temporary directory, or
a PostgreSQL database created for the run and dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

KEY = "bench-key"
DOMAIN = "mg.bench.test"
MESSAGE = {
    "from": "Bench <bench@example.com>",
    "to": ["reader@example.org"],
    "subject": "Benchmark",
    "text": "A short plain-text body, about the size of a receipt notification.",
    "tags": ["bench"],
}
POSTGRES_URL = os.environ.get(
    "MAILGATE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


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
async def fake(kind: str, latency: float, cwd: Path, keep: int = 0) -> AsyncIterator[str]:
    args = ["-m", "mailgate.providers.fakes", kind, "--api-key", KEY, "--domain", DOMAIN]
    async with process(*args, "--latency", str(latency), "--keep", str(keep), cwd=cwd) as p:
        yield (await p.wait_for(r"(http://\S+)"))[1]


@contextlib.asynccontextmanager
async def database(engine: str, directory: Path) -> AsyncIterator[str]:
    """A fresh, empty database for one run: its mailgate URL."""
    if engine == "sqlite":
        yield f"sqlite:///{directory}/bench.db"
        return
    base = make_url(POSTGRES_URL)
    name = f"mailgate_bench_{os.getpid()}_{time.monotonic_ns()}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def write_config(
    path: Path,
    database_url: str,
    sendgrid: str,
    mailgun: str,
    provider_settings: dict[str, Any] | None = None,
    **delivery: Any,
) -> Path:
    """The config: database, `delivery` keys, and both providers (plus `provider_settings`)."""
    extra = [f"{k} = {v}" for k, v in (provider_settings or {}).items()]
    lines = ["[database]", f'url = "{database_url}"', "[delivery]"]
    lines += [f"{k} = {v}" for k, v in delivery.items()]
    lines += [
        "[[providers]]", 'name = "primary"', 'type = "sendgrid"', f'api_key = "{KEY}"',
        f'base_url = "{sendgrid}"', "priority = 1", *extra,
        "[[providers]]", 'name = "backup"', 'type = "mailgun"', f'api_key = "{KEY}"',
        f'domain = "{DOMAIN}"', f'base_url = "{mailgun}"', "priority = 2", *extra,
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
    database_url: str
    pid: int
    smtp: tuple[str, int] | None = None
    """SMTP submission's host and port, when the service was started with it."""


@contextlib.asynccontextmanager
async def service(
    *,
    engine: str = "sqlite",
    latency: float = 0.0,
    worker: bool = True,
    api_processes: int = 1,
    keep: int = 0,
    provider_settings: dict[str, Any] | None = None,
    smtp_server: bool = False,
    serve_args: tuple[str, ...] = (),
    **delivery: Any,
) -> AsyncIterator[Service]:
    """Fresh directory and database, two fakes, and `mailgate serve` (with SMTP submission
    on a free loopback port, plain, when `smtp_server`)."""
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as tmp:
        cwd = Path(tmp)
        async with (
            database(engine, cwd) as db_url,
            fake("sendgrid", latency, cwd, keep) as sg,
            fake("mailgun", latency, cwd, keep) as mg,
        ):
            config = write_config(
                cwd / "mailgate.toml", db_url, sg, mg, provider_settings, **delivery
            )
            if smtp_server:
                smtp = "[smtp_server]\nenabled = true\nport = 0\nrequire_tls = false\n"
                config.write_text(config.read_text() + smtp)
            args = ["-m", "mailgate", "serve", "--port", "0", "--config", str(config)]
            args += ["--workers", str(api_processes), *serve_args]
            if not worker:
                args.append("--no-worker")
            async with process(*args, cwd=cwd) as p:
                url = (await p.wait_for(r"listening on (http://\S+)"))[1]
                key = (await p.wait_for(r"API key: (mg_\S+)"))[1]
                smtp_at = None
                if smtp_server:
                    found = await p.wait_for(r"listening on smtp://([0-9.]+):(\d+)")
                    smtp_at = (found[1], int(found[2]))
                yield Service(
                    url, key, sg, mg, config, cwd, database_url=db_url, pid=p.proc.pid, smtp=smtp_at
                )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fake_stats(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/_fake/stats") as response:
        return dict(await response.json())
