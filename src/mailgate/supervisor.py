"""`mailgate serve` on more than one core: N API processes and one delivery worker, supervised.

`serve` runs this way with `--workers N` above 1, and by default on a machine
with more than one core (`supervised`): one API process and one worker
process then use two cores where one process would leave the second idle.
`serve --one-process` (`server.one_process`) keeps everything in one
process, for tests and one-core machines.

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
process counts all of them. Two things the store alone would make slow go
through a datagram socket pair the supervisor makes: an API process tells
the worker process at once that it committed new mail (on SQLite the worker
would otherwise find it at its next poll; PostgreSQL's NOTIFY does the same
across machines) or that an operator changed a provider. And every child
dies with the supervisor (`PR_SET_PDEATHSIG`), so `kill -9` of `serve`
ends the whole service, as it does with one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from mailgate.api import create_app
from mailgate.api.events import close_event_streams
from mailgate.config import Settings
from mailgate.delivery.pool import ProviderPool
from mailgate.delivery.worker import Worker
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
    settle_heap,
    simulation,
    submission_server,
    work,
)
from mailgate.serving import listening_socket, serve_asgi
from mailgate.store import Store
from mailgate.store.engine import shown_url

log = logging.getLogger("mailgate")

STOP_GRACE_SECONDS = 30.0
READY_SECONDS = 60.0
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


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def supervised(settings: Settings, *, worker: bool) -> bool:
    """Whether `serve` runs processes under a supervisor rather than all in one."""
    if settings.server.workers > 1:
        return True
    return worker and not settings.server.one_process and cores() > 1


WORK = b"w"
"""A datagram to the worker process: an API process committed mail that is due now."""
STATE = b"s"
"""A datagram to the worker process: an operator changed a provider; read its state now."""


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
            to_worker: socket.socket | None = None
            at_worker: socket.socket | None = None
            if worker:
                at_worker, to_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                stack.callback(at_worker.close)
                stack.callback(to_worker.close)
            ready = [context.Event() for _ in range(api_processes + (1 if worker else 0))]
            for i in range(api_processes):
                args = (settings, sock, str(shared_dir), smtp_sock, to_worker, ready[i])
                children.append(_Child(f"api-{i + 1}", _run_api_process, args))
            if worker:
                assert at_worker is not None
                worker_args = (settings, str(shared_dir), at_worker, ready[-1])
                children.append(_Child("worker", _run_worker_process, worker_args))
            for child in children:
                _start(context, child)
            # Announce only once every process serves: a client that starts sending at
            # the announcement is not left waiting in the listen backlog.
            await _ready(children, ready)
            processes = "1 API process" if api_processes == 1 else f"{api_processes} API processes"
            announce(
                f"mailgate is listening on http://{host}:{bound} with {processes}"
                f"{' and a worker process' if worker else ''} "
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


async def _ready(children: list[_Child], ready: list[Any]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not all(event.is_set() for event in ready):
        for child in children:
            if child.process is not None and not child.process.is_alive():
                raise RuntimeError(
                    f"process {child.name} exited at start (exit code "
                    f"{child.process.exitcode}); see its log lines above"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the processes were not ready within {READY_SECONDS:.0f} s")
        await asyncio.sleep(0.02)


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


def _die_with_parent() -> None:
    """Have the kernel kill this process when the supervisor dies (Linux), so no child
    outlives a `kill -9` of `serve`; elsewhere the supervisor's own stop must do."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the call above
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _poke(channel: socket.socket | None, what: bytes) -> None:
    """Tell the worker process `what`; a full channel already holds a wake-up."""
    if channel is not None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError, OSError):
            channel.send(what)


def _run_api_process(
    settings: Settings,
    sock: socket.socket,
    shared_dir: str,
    smtp_sock: socket.socket | None,
    to_worker: socket.socket | None,
    ready: Any,
) -> None:
    _die_with_parent()
    configure_logging(settings.server.log_level)
    asyncio.run(_api_process(settings, sock, Path(shared_dir), smtp_sock, to_worker, ready))


async def _api_process(
    settings: Settings,
    sock: socket.socket,
    shared_dir: Path,
    smtp_sock: socket.socket | None,
    to_worker: socket.socket | None,
    ready: Any,
) -> None:
    stop = asyncio.Event()
    remove_handlers = install_stop(stop)
    store = Store(settings.database)
    metrics = Metrics(shared_dir=shared_dir)
    smtp = submission_server(settings, store, metrics) if smtp_sock is not None else None
    if to_worker is not None:
        to_worker.setblocking(False)
        store.on_accept(lambda _due: _poke(to_worker, WORK))

    async def state_changed() -> None:
        _poke(to_worker, STATE)

    try:
        app = create_app(settings, store, metrics, on_state_change=state_changed)
        async with serve_asgi(app, sock=sock) as server:
            if smtp is not None:
                await smtp.start(smtp_sock)
            settle_heap()
            ready.set()
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


def _run_worker_process(
    settings: Settings, shared_dir: str, at_worker: socket.socket, ready: Any
) -> None:
    _die_with_parent()
    configure_logging(settings.server.log_level)
    metrics = Metrics(shared_dir=Path(shared_dir))
    asyncio.run(work(settings, metrics=metrics, told=_listen(at_worker, ready)))


def _listen(sock: socket.socket, ready: Any) -> Callable[[Worker, ProviderPool], None]:
    """What lets the API processes wake the worker: read their datagrams in its loop."""

    def attach(runner: Worker, pool: ProviderPool) -> None:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        refreshing: set[asyncio.Task[None]] = set()

        def readable() -> None:
            got = set()
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.add(sock.recv(16))
            if STATE in got and not refreshing:
                task = loop.create_task(pool.refresh())
                refreshing.add(task)
                task.add_done_callback(refreshing.discard)
            runner.wake()

        loop.add_reader(sock.fileno(), readable)
        ready.set()

    return attach
