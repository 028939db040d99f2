"""What every `mailgate` command shares: the Typer app, options, output and error handling.

Most commands work either on the store (the default) or, with `--url` or
`MAILGATE_URL`, on a running gateway over HTTP through the Python client
(`gateway`, `over_http`). Each such command gets the same JSON either way
and prints it the same way, so its output and exit codes do not depend on
which way it went.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from mailgate import service
from mailgate.client import ApiError, Client
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


@dataclass
class Gateway:
    """The running gateway the commands talk to (`--url`, `--key`), when one is named."""

    url: str | None = None
    key: str | None = None

    @property
    def remote(self) -> bool:
        return self.url is not None


gateway = Gateway()
"""Set by the `mailgate` callback for the command it runs."""


def over_http(job: Callable[[Client], T]) -> T:
    """Run `job` with a client of `gateway`; the API's errors printed as the store's are."""
    assert gateway.url is not None
    if not gateway.key:
        raise usage_error("--url needs a key: set MAILGATE_KEY (or give --key)")
    try:
        with Client(gateway.url, gateway.key) as client:
            return job(client)
    except ApiError as exc:
        where = f" ({exc.field})" if exc.field else ""
        err.print(f"[red]error{where}:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
