"""The HTTP edge's size limits, against a real uvicorn server on loopback.

Hostile requests go over raw sockets: they are what a client library refuses
to send, and only a raw socket tells how much the server let the client write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from mailgate.api.guard import RequestLimits
from mailgate.config import ServerSettings
from mailgate.serving import MAX_HEAD_BYTES, MAX_HEAD_FIELDS, RunningServer, serve_asgi

BODY_LIMIT = 64 * 1024
LIMITS = ServerSettings(max_request_bytes=BODY_LIMIT)
SLACK = 4 * 1024 * 1024
"""What a client may write past a limit before the server's close reaches it:
socket buffers at both ends and uvicorn's read-ahead, a few MB at most."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int
    """Bytes the client handed to its socket before the server stopped it (at most)."""

    def error(self) -> Any:
        return json.loads(self.body)["error"]


async def exchange(port: int, head: bytes, body: Iterable[bytes] = ()) -> Answer:
    """Send `head` and `body` over a raw socket while reading the answer, until the server closes.

    Writing stops when the server's close reaches the client, so a server that
    answers early and closes keeps a lazily generated body from being made at all.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small send buffer, so what the client wrote is close to what the server took.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    sent = 0

    async def write() -> None:
        nonlocal sent
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in itertools.chain([head], body):
                sent += len(piece)
                await loop.sock_sendall(sock, piece)

    async def read() -> bytes:
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
        return bytes(received)

    try:
        async with asyncio.timeout(30):  # a hang guard, not a measure
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, raw = await asyncio.gather(write(), read())
    finally:
        sock.close()
    head_part, _, content = raw.partition(b"\r\n\r\n")
    status_line, *lines = head_part.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, content, sent)


def request_head(
    target: str = "/v1/messages", *headers: tuple[str, str], method: str = "POST"
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: mailgate.test"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A chunked body of `total` bytes, made as it is sent."""
    frame = b"%x\r\n" % piece + b"x" * piece + b"\r\n"
    for _ in range(total // piece):
        yield frame
    yield b"0\r\n\r\n"


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then says what it saw."""
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    seen = {
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "headers": len(scope["headers"]),
        "body": size,
    }
    out = json.dumps(seen).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(out)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with serve_asgi(RequestLimits(echo, settings=LIMITS)) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        yield client


def assert_refused(answer: Answer, status: int, code: str, field: str) -> None:
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json"
    assert answer.error()["code"] == code
    assert answer.error()["field"] == field


async def test_a_normal_request_passes_untouched(client: httpx.AsyncClient) -> None:
    body = b"x" * BODY_LIMIT
    response = await client.post("/v1/messages?a=1", content=body, headers={"x-one": "1"})
    assert response.status_code == 200
    assert response.json() == {
        "path": "/v1/messages",
        "query": "a=1",
        "headers": len(response.request.headers),
        "body": BODY_LIMIT,
    }
    assert "connection" not in response.headers


async def test_a_chunked_body_at_the_limit_passes(server: RunningServer) -> None:
    head = request_head("/", ("transfer-encoding", "chunked"), ("connection", "close"))
    answer = await exchange(server.port, head, chunked(BODY_LIMIT))
    assert answer.status == 200
    assert json.loads(answer.body)["body"] == BODY_LIMIT


async def test_a_content_length_over_the_limit_is_refused_before_the_body_is_sent(
    server: RunningServer,
) -> None:
    head = request_head("/", ("content-length", str(BODY_LIMIT + 1)))
    answer = await exchange(server.port, head)  # no body at all: the answer comes first
    assert_refused(answer, 413, "payload_too_large", "body")
    assert answer.error()["message"] == f"the request body is larger than {BODY_LIMIT} bytes"


async def test_a_chunked_body_over_the_limit_is_cut_off(server: RunningServer) -> None:
    total = 256 * 1024 * 1024
    head = request_head("/", ("transfer-encoding", "chunked"))
    answer = await exchange(server.port, head, chunked(total))
    assert_refused(answer, 413, "payload_too_large", "body")
    assert answer.sent <= BODY_LIMIT + SLACK < total


async def test_the_app_answer_after_a_refused_body_is_replaced(server: RunningServer) -> None:
    async def careless(scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(Exception):
            while (await receive()).get("more_body", False):
                pass
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"bad body"})

    async with serve_asgi(RequestLimits(careless, settings=LIMITS)) as other:
        head = request_head("/", ("transfer-encoding", "chunked"))
        answer = await exchange(other.port, head, chunked(4 * BODY_LIMIT))
    assert_refused(answer, 413, "payload_too_large", "body")


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("/" + "p" * (LIMITS.max_path_bytes - 1), None),
        ("/" + "p" * LIMITS.max_path_bytes, "path"),
        ("/?" + "q" * LIMITS.max_query_bytes, None),
        ("/?" + "q" * (LIMITS.max_query_bytes + 1), "query"),
    ],
    ids=["path-at-limit", "path-over", "query-at-limit", "query-over"],
)
async def test_long_paths_and_query_strings(
    client: httpx.AsyncClient, target: str, field: str | None
) -> None:
    response = await client.get(target)
    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 414
    assert response.headers["connection"] == "close"
    assert response.json()["error"]["code"] == "uri_too_long"
    assert response.json()["error"]["field"] == field


async def test_too_many_headers_are_refused(server: RunningServer) -> None:
    headers = [(f"x-h{i}", "1") for i in range(LIMITS.max_headers)]  # with host: one too many
    answer = await exchange(server.port, request_head("/", *headers))
    assert_refused(answer, 431, "headers_too_large", "headers")
    assert answer.error()["message"] == "the request has more than 100 headers"


async def test_headers_over_the_byte_limit_are_refused(server: RunningServer) -> None:
    big = ("x-big", "v" * LIMITS.max_header_bytes)
    answer = await exchange(server.port, request_head("/", big))
    assert_refused(answer, 431, "headers_too_large", "headers")
    assert answer.error()["message"] == "the request headers are larger than 16384 bytes"


async def test_ten_megabytes_of_headers_are_cut_off_while_read(server: RunningServer) -> None:
    """No configuration allows such a head: the server itself stops reading it."""
    total = 10 * 1024 * 1024
    line = b"x-big: " + b"v" * 65536 + b"\r\n"
    flood = itertools.chain(itertools.repeat(line, total // len(line)), [b"\r\n"])
    answer = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: mailgate.test\r\n", flood)
    assert_refused(answer, 431, "headers_too_large", "headers")
    assert answer.error()["message"] == f"the request head is larger than {MAX_HEAD_BYTES} bytes"
    assert answer.sent <= MAX_HEAD_BYTES + SLACK < total


async def test_thousands_of_empty_headers_are_cut_off_while_read(server: RunningServer) -> None:
    flood = [b"a:\r\n" * (4 * MAX_HEAD_FIELDS), b"\r\n"]  # well under the byte cap
    answer = await exchange(server.port, b"GET / HTTP/1.1\r\nhost: mailgate.test\r\n", flood)
    assert_refused(answer, 431, "headers_too_large", "headers")
    assert answer.error()["message"] == f"the request has more than {MAX_HEAD_FIELDS} headers"


async def test_the_head_cap_counts_each_request_of_a_connection_alone(
    server: RunningServer,
) -> None:
    """Many requests on one connection, pipelined, together far over the head cap, all pass."""
    header = ("x-pad", "p" * 8000)
    one = request_head("/", header, ("content-length", "5")) + b"hello"
    count = 4 * MAX_HEAD_BYTES // len(one)
    last = request_head("/", header, ("connection", "close"), method="GET")
    answer = await exchange(server.port, one * count + last)
    assert answer.status == 200
    assert answer.body.count(b'"body": 5') == count


def test_every_configurable_head_fits_under_the_servers_cap() -> None:
    """Otherwise a configured limit would be answered by the cap's blunter 431."""

    def ceiling(name: str) -> int:
        (bound,) = [m.le for m in ServerSettings.model_fields[name].metadata if hasattr(m, "le")]
        assert isinstance(bound, int)
        return bound

    request_line = len("OPTIONS ? HTTP/1.1\r\n") + ceiling("max_path_bytes")
    request_line += ceiling("max_query_bytes")
    assert request_line + ceiling("max_header_bytes") + 2 <= MAX_HEAD_BYTES
    assert ceiling("max_headers") <= MAX_HEAD_FIELDS
