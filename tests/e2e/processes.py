"""Running real `mailgate` processes from tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import eventually

URL = re.compile(r"listening on (http://\S+)")
KEY = re.compile(r"API key: (mg_[A-Za-z0-9_-]+)")


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """The first line matching `pattern` (the process's stderr), waiting for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for line in self.lines:
                match = pattern.search(line)
                if match:
                    return match
            if self.proc.returncode is not None:
                raise AssertionError("process exited:\n" + "\n".join(self.lines))
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"no {pattern.pattern!r} within {timeout}s:\n" + "\n".join(self.lines)
                )
            await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)


@contextlib.asynccontextmanager
async def mailgate(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    """`python -m mailgate ARGS` in `cwd`; stopped with SIGTERM (or killed) at the end."""
    environment: dict[str, Any] = {**os.environ, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailgate", *args,
        cwd=cwd, env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    process = Process(proc)
    process._reader = asyncio.create_task(process._read())
    try:
        yield process
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await process._reader


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def write_config(
    path: Path, database_url: str, providers: list[dict[str, Any]], **delivery: Any
) -> Path:
    """A TOML config: the database, delivery overrides and providers."""
    lines = ["[database]", f"url = {_toml(database_url)}", "[delivery]"]
    lines += [f"{key} = {_toml(value)}" for key, value in delivery.items()]
    for provider in providers:
        lines.append("[[providers]]")
        lines += [f"{key} = {_toml(value)}" for key, value in provider.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_status(client: httpx.AsyncClient, message_id: str, *statuses: str) -> dict[str, Any]:
    """The message (through the API) once its status is one of `statuses` (20 s at most)."""
    found: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal found
        found = (await client.get(f"/v1/messages/{message_id}")).json()
        return found["status"] in statuses

    await eventually(reached, timeout=20)
    return found
