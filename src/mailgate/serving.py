"""Serve an ASGI app with uvicorn inside the running event loop, its request heads bounded.

Used for the API itself and for the provider fakes (simulated providers and
tests). uvicorn's own signal capture is turned off: the process that embeds
several servers decides itself how SIGTERM shuts everything down, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

MAX_HEAD_BYTES = 64 * 1024
"""The most bytes of request line and headers the server reads for one request.

Above the sum of the largest `max_path_bytes`, `max_query_bytes` and
`max_header_bytes` that `ServerSettings` accepts, so every configured limit is
answered by the API's `RequestLimits`, with its precise message; this cap only
catches heads no configuration allows.
"""

MAX_HEAD_FIELDS = 1000
"""The most headers the server parses for one request: `ServerSettings.max_headers`' ceiling."""


def error_body(code: str, message: str, field: str) -> bytes:
    """An error in the API's shape, for answers given outside FastAPI's handlers."""
    return json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class JoinedWrites(asyncio.Transport):
    """A transport that sends a response's head together with what follows it.

    uvicorn writes a response's head and its body separately; each write of
    an idle socket is a `send()` at once, and with `TCP_NODELAY` its own
    segment, which the client then reads on its own. Here a head (a write
    starting `HTTP/`) waits for the next write, which takes it along, so a
    small answer costs one system call on each side and leaves when its body
    would have. A head that nothing follows within the loop's current turn
    (a body streamed later, a `100 Continue`) is sent on its own then.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + data)
        elif data[:5] == b"HTTP/":
            self._head = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        waiting = len(self._head) if self._head is not None else 0
        return self._transport.get_write_buffer_size() + waiting

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over a cap while reading it.

    Bytes are counted from the start of each request to the end of its
    headers, as they arrive; once a head has taken `max_head_bytes` without
    ending, or has more than `MAX_HEAD_FIELDS` headers, the client gets a 431
    and the connection is closed. A head can slip past the cap by at most one
    socket read (256 KiB) — the bytes that arrive with the end of the previous
    request — so a connection holds at most that much of a head, whatever is
    sent. The cap is uvicorn's `h11_max_incomplete_event_size`, which bounds
    the same thing for h11; unset, `MAX_HEAD_BYTES`. Select the protocol with
    `uvicorn.Config(http=HeadLimitedHttpToolsProtocol)`.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or MAX_HEAD_BYTES
        self._reading_head = True
        self._head_bytes = 0
        self._head_fields = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWrites(transport, self.loop))

    def data_received(self, data: bytes) -> None:
        if not self._refused and self._head_bytes + len(data) <= self.max_head_bytes:
            # The common case, a whole request in one read: nothing to cut.
            self._head_bytes += len(data) if self._reading_head else 0
            super().data_received(data)
            return
        while data and not self._refused:
            if not self._reading_head:
                super().data_received(data)  # a body, which the app's reads pace
                return
            allowance = self.max_head_bytes - self._head_bytes
            if allowance <= 0:
                self._refuse_head(f"the request head is larger than {self.max_head_bytes} bytes")
                return
            # Feed no more than the head may still take: if it ends within that,
            # the rest (a body, the next request) is judged on its own.
            piece, data = data[:allowance], data[allowance:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # the parser refused the request, or it was upgraded

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._head_fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_fields += 1
        if self._head_fields > MAX_HEAD_FIELDS:
            # Bytes alone do not bound memory: each header costs uvicorn ~100 bytes
            # of objects, so 64 KiB of `a:` lines would cost 1.6 MB.
            self._refuse_head(f"the request has more than {MAX_HEAD_FIELDS} headers")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_head = True
        if not self._refused:
            super().on_message_complete()

    def _refuse_head(self, message: str) -> None:
        """Answer 431 and close; the parser may go on through data already read, unheeded."""
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while a response is being written: an answer now
            # would land inside that response. Let it finish, then close unread.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = error_body("headers_too_large", message, "headers")
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


@dataclass
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop accepting; in-flight requests finish."""
        self.server.should_exit = True


def listening_socket(host: str, port: int, *, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free one), to serve or to share.

    It listens at once: connections made before a server process takes it
    wait in the kernel's queue instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it Nagle holds back the body behind the headers (40 ms delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    access_log: bool = False,
    graceful_seconds: int = 10,
) -> AsyncIterator[RunningServer]:
    """Run `app` until the block ends; port 0 picks a free port."""
    if sock is None:
        sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=graceful_seconds,
        backlog=4096,
        # httptools with the request head bounded while it is read: plain httptools
        # buffers any amount of headers.
        http=HeadLimitedHttpToolsProtocol,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn-{bound_port}")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.005)
        yield RunningServer(host=host, port=bound_port, server=server)
    finally:
        server.should_exit = True
        await task
