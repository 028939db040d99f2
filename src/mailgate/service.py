"""Running mailgate: `mailgate serve` (API, and a worker unless told not to) and `mailgate worker`.

With no providers configured, `serve` starts two simulated providers in the
same process: a fake SendGrid and a fake Mailgun speaking their real wire
formats on loopback, so the whole flow works out of the box and nothing
leaves the machine.

With `[smtp_server] enabled`, `serve` also takes mail by SMTP submission
(`mailgate.ingest`), into the same accept path as the API.

Shutdown on SIGTERM/SIGINT goes in order, so nothing accepted is lost and
nothing in flight is cut: stop taking HTTP requests and SMTP mail (those in
progress finish and commit), stop claiming and let in-flight sends finish
and be recorded, flush the store, then stop the simulated providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mailgate.api import create_app
from mailgate.api.accept import Acceptor
from mailgate.api.events import close_event_streams
from mailgate.config import (
    HttpProviderSettings,
    MailgunSettings,
    ProviderSettings,
    SendGridSettings,
    Settings,
)
from mailgate.delivery import ProviderPool, Worker
from mailgate.errors import ConfigError
from mailgate.ingest import SubmissionServer
from mailgate.metrics import Metrics
from mailgate.providers.fakes import FakeMailgun, FakeSendGrid
from mailgate.serving import serve_asgi
from mailgate.store import Scope, Store
from mailgate.store.engine import shown_url, sqlite_path

log = logging.getLogger("mailgate")

SIMULATED_DOMAIN = "sandbox.mailgate.invalid"


def simulated_providers(
    sendgrid_url: str,
    mailgun_url: str,
    key: str,
    *,
    sendgrid_public_key: str | None = None,
    mailgun_signing_key: str | None = None,
) -> list[ProviderSettings]:
    """The two providers `serve` simulates when none are configured.

    With the fakes' webhook keys, their signed event webhooks verify too.
    """
    return [
        SendGridSettings(
            name="sendgrid",
            type="sendgrid",
            api_key=key,
            base_url=sendgrid_url,
            priority=1,
            webhook_secret=sendgrid_public_key,
        ),
        MailgunSettings(
            name="mailgun",
            type="mailgun",
            api_key=key,
            domain=SIMULATED_DOMAIN,
            base_url=mailgun_url,
            priority=2,
            webhook_secret=mailgun_signing_key,
        ),
    ]


def effective_settings(settings: Settings) -> Settings:
    """The settings as a process that did not start the simulation sees them (the CLI)."""
    if not settings.simulated:
        return settings
    placeholder = "http://simulated.invalid"
    return settings.model_copy(
        update={"providers": simulated_providers(placeholder, placeholder, "simulated")}
    )


@dataclass
class Simulation:
    sendgrid: FakeSendGrid
    mailgun: FakeMailgun
    settings: Settings

    def post_events_to(self, api_url: str) -> None:
        """Have the fakes post each message's delivery events to the gateway, signed.

        Mail to `bounce@…`, `complaint@…`, `defer@…` (and the other local
        parts `providers.fakes.base.outcomes` knows) gets those events;
        any other address is delivered.
        """
        api_url = api_url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
        for name, fake in (("sendgrid", self.sendgrid), ("mailgun", self.mailgun)):
            fake.webhook_url = f"{api_url}/v1/providers/{name}/webhook"


@contextlib.asynccontextmanager
async def simulation(settings: Settings) -> AsyncIterator[Simulation]:
    """Start the fake SendGrid and Mailgun and point the settings at them."""
    key = secrets.token_urlsafe(24)
    sendgrid = FakeSendGrid(key, keep=1000)
    mailgun = FakeMailgun(key, SIMULATED_DOMAIN, keep=1000)
    try:
        async with serve_asgi(sendgrid.app()) as sg, serve_asgi(mailgun.app()) as mg:
            providers = simulated_providers(
                sg.url,
                mg.url,
                key,
                sendgrid_public_key=sendgrid.webhook_public_key,
                mailgun_signing_key=mailgun.webhook_signing_key,
            )
            simulated = settings.model_copy(update={"providers": providers})
            yield Simulation(sendgrid=sendgrid, mailgun=mailgun, settings=simulated)
    finally:
        await sendgrid.close()
        await mailgun.close()


async def open_store(settings: Settings) -> Store:
    store = Store(settings.database)
    if settings.database.auto_migrate:
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
    return store


async def bootstrap_key(store: Store, settings: Settings) -> tuple[str | None, str]:
    """A key to print at start: a new one when there are none, or the saved bootstrap key.

    With SQLite the bootstrap key is also written (mode 0600) beside the
    database, so a restart can print it again.
    """
    path = sqlite_path(settings.database.url)
    saved = path.parent / "bootstrap-key" if path is not None else None
    if not await store.any_keys():
        _, secret = await store.create_key("bootstrap", tenant_id="default", scopes=[Scope.ADMIN])
        if saved is not None:
            saved.touch(mode=0o600)
            saved.write_text(secret + "\n")
            return secret, f"new key, also saved in {saved}"
        return secret, "new key, shown once"
    if saved is not None and saved.exists():
        secret = saved.read_text().strip()
        if await store.find_key(secret) is not None:
            return secret, f"from {saved}"
    return None, "create one with `mailgate keys create --name NAME`"


def install_stop(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def serve(
    settings: Settings,
    *,
    worker: bool = True,
    announce: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the API (and a worker) until SIGTERM/SIGINT or `stop` is set."""
    stop = stop or asyncio.Event()
    remove_handlers = install_stop(stop)
    metrics = Metrics()
    try:
        async with contextlib.AsyncExitStack() as stack:
            sim: Simulation | None = None
            if settings.simulated:
                sim = await stack.enter_async_context(simulation(settings))
                settings = sim.settings
                urls = ", ".join(
                    p.base_url for p in settings.providers if isinstance(p, HttpProviderSettings)
                )
                announce(
                    "No providers configured: simulating SendGrid and Mailgun on loopback "
                    f"({urls}); nothing leaves this machine."
                )
            store = await open_store(settings)
            stack.push_async_callback(store.close)
            pool: ProviderPool | None = None
            runner: Worker | None = None
            if worker:
                pool = ProviderPool(settings, store, metrics)
                stack.push_async_callback(pool.close)
                runner = Worker(settings, store, pool, metrics)
            app = create_app(
                settings, store, metrics, on_state_change=pool.refresh if pool else None
            )
            smtp = submission_server(settings, store, metrics)
            secret, origin = await bootstrap_key(store, settings)
            host, port = settings.server.host, settings.server.port
            try:
                server = await stack.enter_async_context(serve_asgi(app, host=host, port=port))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                    "(server.host / server.port, MAILGATE_SERVER__PORT)"
                ) from None
            if smtp is not None:
                await smtp.start()
                stack.push_async_callback(smtp.stop)
            if sim is not None:
                sim.post_events_to(server.url)
            database = shown_url(settings.database.url)
            settle_heap()
            announce(f"mailgate is listening on {server.url} (database {database})")
            if smtp is not None:
                announce(smtp.announcement())
            announce(f"API key: {secret} ({origin})" if secret else f"API key: {origin}")
            if runner is None:
                announce(
                    "No worker in this process (--no-worker): run `mailgate worker` to deliver."
                )
            worker_task = asyncio.create_task(runner.run()) if runner else None
            stopped = asyncio.create_task(stop.wait())
            waiting = {stopped, *([worker_task] if worker_task else [])}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            log.info("shutting down")
            close_event_streams()  # open event streams end now, not at uvicorn's timeout
            server.stop()
            if smtp is not None:
                await smtp.stop()  # messages being accepted finish first
            if runner is not None and worker_task is not None:
                runner.stop()
                await worker_task  # raises if the worker crashed
            stopped.cancel()
    finally:
        remove_handlers()


def submission_server(
    settings: Settings, store: Store, metrics: Metrics
) -> SubmissionServer | None:
    """SMTP submission when `[smtp_server] enabled`, in front of the same accept path as the API.

    Its certificate is loaded here, so a bad one stops `serve` before it listens.
    """
    if not settings.smtp_server.enabled:
        return None
    acceptor = Acceptor(store, metrics, (p.name for p in settings.providers))
    return SubmissionServer(settings.smtp_server, store, acceptor, metrics)


async def work(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
    told: Callable[[Worker, ProviderPool], None] | None = None,
) -> None:
    """Run a worker alone until SIGTERM/SIGINT or `stop` is set.

    `told` hooks the worker up to whatever tells it of new work or provider
    changes (the supervisor's channel from its API processes).
    """
    if settings.simulated:
        raise ConfigError(
            "no providers configured: a separate worker needs [[providers]] in the config "
            "(the simulated providers run only inside `mailgate serve`)"
        )
    stop = stop or asyncio.Event()
    remove_handlers = install_stop(stop)
    metrics = metrics or Metrics()
    try:
        store = await open_store(settings)
        pool = ProviderPool(settings, store, metrics)
        runner = Worker(settings, store, pool, metrics)
        if told is not None:
            told(runner, pool)
        settle_heap()
        try:
            task = asyncio.create_task(runner.run())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            runner.stop()
            await task
            stopped.cancel()
        finally:
            await pool.close()
            await store.close()
    finally:
        remove_handlers()


GC_THRESHOLDS = (10_000, 50, 100)
"""Python's defaults are (700, 10, 10)."""


def settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running process that is ready to serve.

    Measured (bench.profile, batch accepts), the collector took about 40 % of an
    API process's CPU: every 700 allocations it scanned the young objects,
    and its older generations held everything built at start (the app and its
    routes, SQLAlchemy's tables and statement caches, the modules). Frozen,
    those are never scanned again; the young generation is scanned every
    10,000 allocations, not 700. Nearly everything a request allocates is
    freed by reference counting, so little waits longer for a collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # uvicorn's own start/stop lines repeat what `serve` announces.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # aiosmtpd logs every SMTP command at info and a deprecation note at warning on
    # every AUTH; mailgate's own SMTP lines (`mailgate.smtp`) say what matters.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
