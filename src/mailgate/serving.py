"""Serve an ASGI app with uvicorn inside the running event loop.

Used for the API itself and for the provider fakes (simulated providers and
tests). uvicorn's own signal capture is turned off: the process that embeds
several servers decides itself how SIGTERM shuts everything down, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
