"""`mailgate serve --workers N`: N API processes and one delivery worker, supervised.

The supervisor prepares what must happen once (migrations, the bootstrap
key, the simulated providers when none are configured), binds the listening
socket, and starts the processes, each a fresh interpreter (`spawn`): N API
processes sharing the socket (the kernel spreads connections over them) and,
unless `--no-worker`, one worker process. A process that dies is started
again; one that dies within seconds of starting, repeatedly, stops the
whole service rather than looping. SIGTERM or SIGINT stop the children
gracefully (each finishes what it has in hand), then the supervisor.

With `[smtp_server] enabled` the supervisor binds the SMTP port too, once,
and every API process serves SMTP submission on that one inherited socket,
as it serves HTTP: no process binds the port again (no SO_REUSEPORT, which
would let a stray second `serve` share the port silently), a taken port
fails at start, here, and a restarted API process simply accepts from the
same socket.

The processes share everything through the store. Their metrics are summed
through prometheus-client's multiprocess files, so `/metrics` from any API
process counts all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from mailgate.api import create_app
from mailgate.api.events import close_event_streams
from mailgate.config import Settings
from mailgate.errors import ConfigError
from mailgate.ingest.smtp import announcement as smtp_announcement
from mailgate.ingest.smtp import bind as bind_smtp
from mailgate.ingest.smtp import tls_context
from mailgate.metrics import Metrics
from mailgate.service import (
    Simulation,
    bootstrap_key,
    configure_logging,
    install_stop,
    open_store,
    simulation,
    submission_server,
    work,
)
from mailgate.serving import listening_socket, serve_asgi
from mailgate.store import Store
from mailgate.store.engine import shown_url

log = logging.getLogger("mailgate")

STOP_GRACE_SECONDS = 30.0
_CRASH_LOOP_SECONDS = 5.0
_CRASH_LOOP_LIMIT = 3


@dataclass
class _Child:
    name: str
    target: Any
    args: tuple[Any, ...]
    process: SpawnProcess | None = None
    started: float = 0.0
    quick_deaths: int = 0


async def supervise(
    settings: Settings,
    *,
    api_processes: int,
    worker: bool = True,
    announce: Any = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Run `api_processes` API processes (and a worker process) until stopped."""
    stop = stop or asyncio.Event()
    remove_handlers = install_stop(stop)
    shared_dir = Path(tempfile.mkdtemp(prefix="mailgate-metrics-"))
    # Children read this before they import prometheus-client: their metric
    # values then live in files in this directory.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared_dir)
    context = multiprocessing.get_context("spawn")
    children: list[_Child] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            sim: Simulation | None = None
            if settings.simulated:
                sim = await stack.enter_async_context(simulation(settings))
                settings = sim.settings
                announce("No providers configured: simulating SendGrid and Mailgun on loopback.")
            secret, origin = await _prepare(settings)
            host, port = settings.server.host, settings.server.port
            try:
                sock = listening_socket(host, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                    "(server.host / server.port, MAILGATE_SERVER__PORT)"
                ) from None
            stack.callback(sock.close)
            bound = sock.getsockname()[1]
            smtp_sock: socket.socket | None = None
            smtp_tls = False
            if settings.smtp_server.enabled:
                # A bad certificate stops the start here, before any child tries it.
                smtp_tls = tls_context(settings.smtp_server) is not None
                smtp_sock = bind_smtp(settings.smtp_server)
                stack.callback(smtp_sock.close)
            if sim is not None:
                sim.post_events_to(f"http://{host}:{bound}")
            for i in range(api_processes):
                args = (settings, sock, str(shared_dir), smtp_sock)
                children.append(_Child(f"api-{i + 1}", _run_api_process, args))
            if worker:
                children.append(_Child("worker", _run_worker_process, (settings, str(shared_dir))))
            for child in children:
                _start(context, child)
            announce(
                f"mailgate is listening on http://{host}:{bound} with {api_processes} API "
                f"processes{' and a worker' if worker else ''} "
                f"(database {shown_url(settings.database.url)})"
            )
            if smtp_sock is not None:
                smtp_host, smtp_port = smtp_sock.getsockname()[:2]
                announce(smtp_announcement(settings.smtp_server, smtp_tls, smtp_host, smtp_port))
            announce(f"API key: {secret} ({origin})" if secret else f"API key: {origin}")
            while not stop.is_set():
                for child in children:
                    _restart_if_dead(context, child, shared_dir)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await stop.wait()
            log.info("shutting down %d processes", len(children))
            await _stop_all(children, shared_dir)
    finally:
        remove_handlers()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for child in children:
            if child.process is not None and child.process.is_alive():
                child.process.kill()
        shutil.rmtree(shared_dir, ignore_errors=True)


async def _prepare(settings: Settings) -> tuple[str | None, str]:
    """Migrate once and find the key to print, before any child starts."""
    store = await open_store(settings)
    try:
        return await bootstrap_key(store, settings)
    finally:
        await store.close()


def _start(context: Any, child: _Child) -> None:
    process = context.Process(target=child.target, args=child.args, name=f"mailgate-{child.name}")
    process.start()
    child.process = process
    child.started = time.monotonic()


def _restart_if_dead(context: Any, child: _Child, shared_dir: Path) -> None:
    process = child.process
    if process is None or process.is_alive():
        return
    multiprocess.mark_process_dead(process.pid, str(shared_dir))  # type: ignore[no-untyped-call]
    lived = time.monotonic() - child.started
    child.quick_deaths = child.quick_deaths + 1 if lived < _CRASH_LOOP_SECONDS else 0
    if child.quick_deaths >= _CRASH_LOOP_LIMIT:
        raise RuntimeError(
            f"process {child.name} keeps dying at start (exit code {process.exitcode}); "
            "see its log lines above"
        )
    log.warning(
        "process %s (pid %s) exited with %s; starting it again",
        child.name,
        process.pid,
        process.exitcode,
    )
    _start(context, child)


async def _stop_all(children: list[_Child], shared_dir: Path) -> None:
    for child in children:
        if child.process is not None and child.process.is_alive():
            child.process.terminate()  # SIGTERM: finish what is in hand, then exit
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        process = child.process
        if process is None:
            continue
        while process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.is_alive():
            log.warning("process %s did not stop in time; killing it", child.name)
            process.kill()
            process.join(1)
        multiprocess.mark_process_dead(process.pid, str(shared_dir))  # type: ignore[no-untyped-call]


# --- what runs in the children ------------------------------------------------------


def _run_api_process(
    settings: Settings, sock: socket.socket, shared_dir: str, smtp_sock: socket.socket | None
) -> None:
    configure_logging(settings.server.log_level)
    asyncio.run(_api_process(settings, sock, Path(shared_dir), smtp_sock))


async def _api_process(
    settings: Settings, sock: socket.socket, shared_dir: Path, smtp_sock: socket.socket | None
) -> None:
    stop = asyncio.Event()
    remove_handlers = install_stop(stop)
    store = Store(settings.database)
    metrics = Metrics(shared_dir=shared_dir)
    smtp = submission_server(settings, store, metrics) if smtp_sock is not None else None
    try:
        app = create_app(settings, store, metrics)
        async with serve_asgi(app, sock=sock) as server:
            if smtp is not None:
                await smtp.start(smtp_sock)
            await stop.wait()
            close_event_streams()  # open event streams end now, not at uvicorn's timeout
            server.stop()
            if smtp is not None:
                await smtp.stop()  # messages being accepted finish first
    finally:
        if smtp is not None:
            await smtp.stop()
        await store.close()
        remove_handlers()


def _run_worker_process(settings: Settings, shared_dir: str) -> None:
    configure_logging(settings.server.log_level)
    asyncio.run(work(settings, metrics=Metrics(shared_dir=Path(shared_dir))))
