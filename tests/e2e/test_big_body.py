"""A real `mailgate serve` against a 2 GB body and 10 MB of headers: refused, memory flat."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mailgate.serving import MAX_HEAD_BYTES
from tests.api.test_guard import SLACK, chunked, exchange
from tests.e2e.processes import KEY, URL, mailgate

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024
GROWTH = 32 * 1024 * 1024
"""How much the server's resident memory may grow while refusing: noise, not the request."""


@dataclass
class Served:
    port: int
    key: str
    pid: int

    def head(self, *extra: bytes, complete: bool = True) -> bytes:
        """A `POST /v1/messages` head with the key; not `complete`: more headers to follow."""
        lines = [
            b"POST /v1/messages HTTP/1.1",
            b"host: mailgate.test",
            b"authorization: Bearer " + self.key.encode(),
            b"content-type: application/json",
            *extra,
        ]
        return b"\r\n".join(lines) + (b"\r\n\r\n" if complete else b"\r\n")

    def memory(self, field: str) -> int:
        """`VmRSS` (resident now) or `VmHWM` (peak since `reset_peak`), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for process {self.pid}")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """`mailgate serve` with simulated providers and a 1 MiB request limit."""
    env = {"MAILGATE_SERVER__MAX_REQUEST_BYTES": str(LIMIT)}
    async with mailgate("serve", "--port", "0", cwd=tmp_path, env=env) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        port = urlsplit(url).port
        assert port is not None
        yield Served(port, key, server.proc.pid)
        assert await server.stop() == 0


async def test_a_2_gb_chunked_body_is_cut_off_at_the_limit(served: Served) -> None:
    total = 2 * 1024**3
    before = served.memory("VmRSS")
    served.reset_peak()
    answer = await exchange(served.port, served.head(b"transfer-encoding: chunked"), chunked(total))
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    assert answer.error() == {
        "code": "payload_too_large",
        "message": f"the request body is larger than {LIMIT} bytes",
        "field": "body",
    }
    assert answer.sent <= LIMIT + SLACK
    assert served.memory("VmHWM") - before <= GROWTH
    assert served.memory("VmRSS") - before <= GROWTH


FLOODS = {
    # httptools would join it into one 10 MB value, uvicorn then hand it to the app.
    "one-big-header": (b"x-big: " + b"v" * 65536 + b"\r\n", 160),
    # 2.6 million headers: about 300 MB of Python objects in a plain uvicorn.
    "empty-headers": (b"a:\r\n" * 16384, 160),
}


@pytest.mark.parametrize("flood", FLOODS)
async def test_ten_megabytes_of_headers_are_cut_off_while_read(served: Served, flood: str) -> None:
    line, count = FLOODS[flood]
    before = served.memory("VmRSS")
    served.reset_peak()
    answer = await exchange(
        served.port,
        served.head(complete=False),
        itertools.chain(itertools.repeat(line, count), [b"\r\n"]),
    )
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    assert answer.error()["code"] == "headers_too_large"
    assert answer.error()["field"] == "headers"
    assert answer.sent <= MAX_HEAD_BYTES + SLACK < len(line) * count
    assert served.memory("VmHWM") - before <= GROWTH
    assert served.memory("VmRSS") - before <= GROWTH
