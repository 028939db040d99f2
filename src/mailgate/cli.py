"""The `mailgate` command.

`serve` and `worker` run the service; the other commands work on the store
directly (the same queue operations the API uses), so they need no running
server and no API key. Every command takes `--config PATH`; exit codes are
0 done, 1 failed, 2 usage or configuration error. `--json` prints what the
HTTP API would answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Column, Table

from mailgate import __version__, service, supervisor
from mailgate.api.errors import validation_error
from mailgate.api.providers import provider_event_json, provider_reports
from mailgate.api.render import message_json, new_message_json
from mailgate.api.schemas import MessageIn
from mailgate.config import Settings, load_settings
from mailgate.errors import ConfigError, MailgateError, RequestError
from mailgate.message import new_id
from mailgate.store import NewMessage, Store, utcnow
from mailgate.store import migrate as migrations

T = TypeVar("T")

app = typer.Typer(
    name="mailgate",
    help="A self-hosted email gateway: accept over HTTP, queue durably, deliver with failover.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="Schema migrations.", no_args_is_help=True)
providers_app = typer.Typer(help="Provider state: list, enable, disable.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(providers_app, name="providers")

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (default: $MAILGATE_CONFIG).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _run(job: Callable[[], Awaitable[T]]) -> T:
    """Run an async job; turn mailgate's errors into a message and exit code 1."""
    try:
        return asyncio.run(job())  # type: ignore[arg-type]
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except RequestError as exc:
        where = f" ({exc.field})" if exc.field else ""
        err.print(f"[red]error{where}:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    except MailgateError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


async def _with_store(settings: Settings, job: Callable[[Store], Awaitable[T]]) -> T:
    store = await service.open_store(settings)
    try:
        return await job(store)
    finally:
        await store.close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"mailgate {__version__}")
        raise typer.Exit(0)


# --- running ------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOption = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; deliver with `mailgate worker`.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="API processes (server.workers).")
    ] = None,
) -> None:
    """Run the HTTP API and, unless --no-worker, a delivery worker."""
    settings = _settings(config)
    overrides = {
        k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None
    }
    if overrides:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update=overrides)}
        )
    service.configure_logging(settings.server.log_level)
    if settings.server.workers > 1:
        _run(
            lambda: supervisor.supervise(
                settings,
                api_processes=settings.server.workers,
                worker=not no_worker,
                announce=_announce,
            )
        )
    else:
        _run(lambda: service.serve(settings, worker=not no_worker, announce=_announce))


@app.command()
def worker(
    config: ConfigOption = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Override delivery.concurrency.")
    ] = None,
) -> None:
    """Run a delivery worker (no API)."""
    settings = _settings(config)
    if concurrency is not None:
        settings = settings.model_copy(
            update={"delivery": settings.delivery.model_copy(update={"concurrency": concurrency})}
        )
    service.configure_logging(settings.server.log_level)
    _run(lambda: service.work(settings))


def _announce(line: str) -> None:
    err.print(line, highlight=False, soft_wrap=True)


# --- sending and reading ---------------------------------------------------------


@app.command()
def send(
    to: Annotated[list[str], typer.Option("--to", help="Recipient (repeat for more).")],
    subject: Annotated[str, typer.Option("--subject", "-s")],
    text: Annotated[str | None, typer.Option(help="Plain-text body.")] = None,
    html: Annotated[str | None, typer.Option(help="HTML body.")] = None,
    sender: Annotated[
        str | None, typer.Option("--from", help="Sender (default: delivery.default_from).")
    ] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a message; a running worker delivers it."""
    settings = service.effective_settings(_settings(config))
    sender = sender or settings.delivery.default_from
    if sender is None:
        err.print("[red]error:[/red] give --from, or set delivery.default_from in the config")
        raise typer.Exit(2)
    if text is None and html is None:
        err.print("[red]error:[/red] give --text or --html")
        raise typer.Exit(2)
    raw = {
        "from": sender,
        "to": to,
        "cc": cc or [],
        "bcc": bcc or [],
        "subject": subject,
        "tags": tag or [],
    }
    raw |= {k: v for k, v in (("text", text), ("html", html)) if v is not None}
    try:
        email = MessageIn.model_validate(raw).to_email()
    except ValidationError as exc:
        problem = validation_error(exc)
        err.print(f"[red]error ({problem.field}):[/red] {problem.message}", highlight=False)
        raise typer.Exit(2) from None
    except RequestError as exc:
        err.print(f"[red]error ({exc.field}):[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    item = NewMessage(id=new_id("msg"), tenant_id="default", email=email, created_at=utcnow())
    _run(lambda: _with_store(settings, lambda store: store.accept(item)))
    if as_json:
        _print_json(new_message_json(item))
    else:
        out.print(f"{item.id} queued")


@app.command()
def status(
    message_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a message: status, attempts and events."""
    settings = _settings(config)
    view = _run(
        lambda: _with_store(settings, lambda store: store.get_message("default", message_id))
    )
    data = message_json(view)
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]{data['id']}[/bold]  {data['status']}", highlight=False)
    recipients = ", ".join(a["email"] for a in data["to"])
    out.print(f"from {data['from']['email']} to {recipients}: {data['subject']}", highlight=False)
    if data["provider"]:
        out.print(
            f"provider {data['provider']} ({data['provider_message_id'] or 'no id yet'})",
            highlight=False,
        )
    if data["last_error"]:
        out.print(f"last error: {data['last_error']}", highlight=False)
    if data["attempts"]:
        table = Table(
            "started", "provider", "ms", "outcome", "error", title="attempts", title_justify="left"
        )
        for a in data["attempts"]:
            table.add_row(
                a["started_at"],
                a["provider"] or "?",
                str(a["duration_ms"]),
                a["outcome"],
                a["error"] or "",
            )
        out.print(table)
    table = Table("at", "event", "detail", title="events", title_justify="left")
    for e in data["events"]:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if v is not None)
        table.add_row(e["at"], e["type"], detail)
    out.print(table)


# --- keys ------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key. The secret is printed once and never stored."""
    settings = _settings(config)
    key, secret = _run(
        lambda: _with_store(settings, lambda s: s.create_key(name, tenant_id="default"))
    )
    if as_json:
        _print_json({"id": key.id, "name": key.name, "key": secret})
    else:
        out.print(f"{secret}\n[dim]id {key.id}; shown once, keep it safe[/dim]", highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List API keys (never their secrets)."""
    settings = _settings(config)
    keys = _run(lambda: _with_store(settings, lambda s: s.list_keys()))
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.prefix,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in keys
    ]
    if as_json:
        _print_json({"data": rows})
        return
    table = Table(Column("id", no_wrap=True), "name", "prefix", "created", "revoked")
    for r in rows:
        table.add_row(r["id"], r["name"], f"{r['prefix']}…", r["created_at"], r["revoked_at"] or "")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Revoke an API key (every process stops taking it within seconds)."""
    settings = _settings(config)
    _run(lambda: _with_store(settings, lambda s: s.revoke_key(key_id)))
    out.print(f"{key_id} revoked")


# --- database -------------------------------------------------------------------


def _without_auto_migrate(settings: Settings) -> Settings:
    """`db` commands migrate (or report) on purpose, never as a side effect of opening."""
    database = settings.database.model_copy(update={"auto_migrate": False})
    return settings.model_copy(update={"database": database})


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Bring the schema up to date (also done by serve/worker when database.auto_migrate)."""
    no_auto = _without_auto_migrate(_settings(config))

    async def job(store: Store) -> str | None:
        await migrations.upgrade(store.db)
        return await migrations.current(store.db)

    revision = _run(lambda: _with_store(no_auto, job))
    out.print(f"schema at revision {revision}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the schema revision (and whether it is the newest)."""
    no_auto = _without_auto_migrate(_settings(config))
    revision = _run(lambda: _with_store(no_auto, lambda s: migrations.current(s.db)))
    head = migrations.head()
    note = "up to date" if revision == head else f"behind: newest is {head}"
    out.print(f"{revision or 'empty'} ({note})")


# --- providers ------------------------------------------------------------------


def _provider_settings(name: str, config: Path | None) -> Settings:
    """The settings, when they configure provider `name` (else exit 1 saying so)."""
    settings = service.effective_settings(_settings(config))
    if name not in {p.name for p in settings.providers}:
        err.print(f"[red]error:[/red] no provider {name!r} is configured", highlight=False)
        raise typer.Exit(1)
    return settings


@providers_app.command("list")
def providers_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each provider: enabled, breaker, recent success rate, last error."""
    settings = service.effective_settings(_settings(config))

    async def job(store: Store) -> list[dict[str, Any]]:
        return await provider_reports(store, settings.providers)

    rows = _run(lambda: _with_store(settings, job))
    if as_json:
        _print_json({"data": rows})
        return
    table = Table(
        Column("name", no_wrap=True), Column("type", no_wrap=True), "priority", "health",
        "breaker", "success", "last error", box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for r in rows:
        rate = f"{r['success_rate']:.0%}" if r["success_rate"] is not None else "-"
        breaker = r["breaker"]["state"]
        if r["simulated_failure"] != "off":
            breaker += f" (drill: {r['simulated_failure']})"
        health = f"{r['health']['status']} {r['health']['score']}"
        table.add_row(
            r["name"], r["type"], str(r["priority"]), health, breaker, rate, r["last_error"] or "",
        )  # fmt: skip
    out.print(table)


def _switch(name: str, config: Path | None, enabled: bool) -> None:
    settings = _provider_settings(name, config)

    async def job(store: Store) -> None:
        await store.update_provider(name, enabled=enabled)
        await store.provider_event(name, "enabled" if enabled else "disabled", by="cli")

    _run(lambda: _with_store(settings, job))
    out.print(f"{name} {'enabled' if enabled else 'disabled'}")


@providers_app.command("events")
def providers_events(
    name: str,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A provider's history: breaker changes, pauses, quotas, failed probes, switches, drills."""
    settings = _provider_settings(name, config)

    async def job(store: Store) -> list[dict[str, Any]]:
        return [provider_event_json(e) for e in await store.provider_events(name, limit=limit)]

    rows = _run(lambda: _with_store(settings, job))
    if as_json:
        _print_json({"data": rows})
        return
    table = Table(Column("at", no_wrap=True), "event", "detail", box=box.SIMPLE_HEAD)
    for r in rows:
        detail = ", ".join(f"{k}={v}" for k, v in r["detail"].items())
        table.add_row(r["at"], r["type"], detail)
    out.print(table)


@providers_app.command("enable")
def providers_enable(name: str, config: ConfigOption = None) -> None:
    """Send through a provider again."""
    _switch(name, config, True)


@providers_app.command("disable")
def providers_disable(name: str, config: ConfigOption = None) -> None:
    """Stop sending through a provider (every worker sees it within a second)."""
    _switch(name, config, False)


def main() -> None:
    app()
