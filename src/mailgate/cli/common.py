"""What every `mailgate` command shares: the Typer app, options, output and error handling."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from mailgate import service
from mailgate.config import Settings, load_settings
from mailgate.errors import ConfigError, MailgateError, RequestError
from mailgate.store import Store

T = TypeVar("T")

app = typer.Typer(
    name="mailgate",
    help="A self-hosted email gateway: accept over HTTP, queue durably, deliver with failover.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (default: $MAILGATE_CONFIG).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings_from(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def run(job: Callable[[], Awaitable[T]]) -> T:
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


def with_store(settings: Settings, job: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run `job` on it, close it; errors as in `run`."""

    async def opened() -> T:
        store = await service.open_store(settings)
        try:
            return await job(store)
        finally:
            await store.close()

    return run(opened)


def usage_error(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
