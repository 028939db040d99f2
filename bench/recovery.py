"""How long messages in flight wait after `kill -9` of `serve` and a restart.

    .venv/bin/python -m bench.recovery                  # SQLite, 3 repeats
    .venv/bin/python -m bench.recovery --engine postgresql

Per run: a fresh database and both fakes (in their own processes), 200
messages posted to `serve`; the primary provider holds every send for 30 s,
so the worker has them in flight when `serve` is killed with SIGKILL. The
provider then answers at once and `serve` starts again on the same
database. The figures are the times from the restart until the first
message that was in flight is sent again and until every message is
`sent` (polled through the API every 50 ms), with the default
`lease_seconds` (60). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.harness import KEY, database, fake, process, write_config

MESSAGES = 200


async def one_run(engine: str) -> tuple[float, float, int]:
    """Seconds from the restart until the first message that was in flight at the kill was
    sent again and until every message was sent, and how many were in flight."""
    with tempfile.TemporaryDirectory(prefix="mailgate-recovery-") as tmp:
        cwd = Path(tmp)
        async with (
            database(engine, cwd) as db_url,
            fake("sendgrid", 0.0, cwd) as sg,
            fake("mailgun", 0.0, cwd) as mg,
            aiohttp.ClientSession() as http,
        ):
            config = write_config(cwd / "mailgate.toml", db_url, sg, mg, poll_interval_seconds=0.1)
            args = ["-m", "mailgate", "serve", "--port", "0", "--config", str(config)]
            await _behave(http, sg, latency=30)
            async with process(*args, cwd=cwd) as first:
                url = (await first.wait_for(r"listening on (http://\S+)"))[1]
                key = (await first.wait_for(r"API key: (mg_\S+)"))[1]
                headers = {"Authorization": f"Bearer {key}"}
                ids = [await _post(http, url, headers, i) for i in range(MESSAGES)]
                while len(await _with_status(http, url, headers, "sending")) < MESSAGES // 2:
                    await asyncio.sleep(0.05)
                in_flight = set(await _with_status(http, url, headers, "sending"))
                first.proc.kill()
                await first.proc.wait()
            await _behave(http, sg, latency=0)
            async with process(*args, cwd=cwd) as second:
                url = (await second.wait_for(r"listening on (http://\S+)"))[1]
                restarted = time.monotonic()
                first_sent: float | None = None
                while True:
                    sent = await _with_status(http, url, headers, "sent")
                    now = time.monotonic() - restarted
                    if first_sent is None and in_flight.intersection(sent):
                        first_sent = now
                    if len(sent) == len(ids):
                        assert first_sent is not None
                        return first_sent, now, len(in_flight)
                    await asyncio.sleep(0.05)


async def _behave(http: aiohttp.ClientSession, url: str, *, latency: float) -> None:
    async with http.post(f"{url}/_fake/behaviour", json={"latency": latency}) as response:
        response.raise_for_status()


async def _post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], i: int) -> str:
    body = {"from": "a@example.com", "to": [f"r{i}@example.org"], "subject": "s", "text": "t"}
    async with http.post(f"{url}/v1/messages", json=body, headers=headers) as response:
        assert response.status == 202, await response.text()
        return str((await response.json())["id"])


async def _with_status(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], status: str
) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        params = {"status": status, "limit": "100", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{url}/v1/messages", params=params, headers=headers) as response:
            page = await response.json()
        found += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    assert KEY  # the fakes' key, used by the config
    runs = [await one_run(options.engine) for _ in range(options.repeats)]
    for first, last, in_flight in runs:
        print(
            f"{in_flight:4d} in flight at the kill: the first of them sent {first:5.1f} s, "
            f"all {last:5.1f} s after the restart"
        )
    first = statistics.median(r[0] for r in runs)
    last = statistics.median(r[1] for r in runs)
    print(f"medians ({options.engine}): the first {first:.1f} s, all {last:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
