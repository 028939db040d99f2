"""`mailgate providers`: each provider's health and history, and the operator's switches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Column, Table

from mailgate import service
from mailgate.api.providers import provider_event_json, provider_reports
from mailgate.cli.common import (
    ConfigOption,
    JsonOption,
    app,
    err,
    gateway,
    out,
    over_http,
    print_json,
    settings_from,
    with_store,
)
from mailgate.config import Settings
from mailgate.store import CLI, Store

providers_app = typer.Typer(help="Provider state: list, enable, disable.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")


def _provider_settings(name: str, config: Path | None) -> Settings:
    """The settings, when they configure provider `name` (else exit 1 saying so)."""
    settings = service.effective_settings(settings_from(config))
    if name not in {p.name for p in settings.providers}:
        err.print(f"[red]error:[/red] no provider {name!r} is configured", highlight=False)
        raise typer.Exit(1)
    return settings


@providers_app.command("list")
def providers_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Each provider: enabled, breaker, recent success rate, last error."""
    if gateway.remote:
        rows = over_http(lambda client: client.providers())
    else:
        settings = service.effective_settings(settings_from(config))

        async def job(store: Store) -> list[dict[str, Any]]:
            return await provider_reports(store, settings.providers)

        rows = with_store(settings, job)
    if as_json:
        print_json({"data": rows})
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
    kind = "enabled" if enabled else "disabled"
    if gateway.remote:
        over_http(
            lambda client: (
                client.enable_provider(name) if enabled else client.disable_provider(name)
            )
        )
    else:
        settings = _provider_settings(name, config)
        with_store(settings, lambda s: s.switch_provider(name, kind, actor=CLI, enabled=enabled))
    out.print(f"{name} {kind}")


@providers_app.command("events")
def providers_events(
    name: str,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A provider's history: breaker changes, pauses, quotas, failed probes, switches, drills."""
    if gateway.remote:
        rows = over_http(lambda client: client.provider_events(name, limit=limit))
    else:
        settings = _provider_settings(name, config)

        async def job(store: Store) -> list[dict[str, Any]]:
            events = await store.provider_events(name, limit=limit)
            return [provider_event_json(e) for e in events]

        rows = with_store(settings, job)
    if as_json:
        print_json({"data": rows})
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
