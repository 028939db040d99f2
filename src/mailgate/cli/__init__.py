"""The `mailgate` command.

`serve` and `worker` run the service; the other commands work on the store
directly (the same operations the API uses), so they need no running server
and no API key, and act on every tenant. With `mailgate --url URL` (or
`MAILGATE_URL`, and the key in `MAILGATE_KEY`) the commands in `REMOTE`
speak HTTP to that gateway instead and act as the key. Every command takes
`--config PATH`; exit codes are 0 done, 1 failed, 2 usage or configuration
error. `--json` prints what the HTTP API would answer.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mailgate import __version__
from mailgate.cli import keys, messages, providers, running, suppressions, tenants, webhooks
from mailgate.cli.common import app, gateway, out, usage_error

__all__ = ["app", "main"]
_COMMANDS = (
    keys,
    messages,
    providers,
    running,
    suppressions,
    tenants,
    webhooks,
)  # each adds its commands to `app`


REMOTE = frozenset(
    {"send", "status", "retry", "providers", "keys", "tenants", "suppressions", "webhooks"}
)
"""The commands that can work on a running gateway over HTTP."""


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="MAILGATE_URL",
            help="A running gateway to work on over HTTP (send, status, retry, providers, "
            "keys, tenants, suppressions, webhooks) instead of the local database.",
            show_default=False,
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="MAILGATE_KEY",
            help="The API key for --url (better in MAILGATE_KEY than on the command line).",
            show_default=False,
        ),
    ] = None,
) -> None:
    if version:
        out.print(f"mailgate {__version__}")
        raise typer.Exit(0)
    gateway.url = gateway.key = None
    url = (url or "").strip()
    if not url:
        return
    if ctx.invoked_subcommand not in REMOTE:
        # MAILGATE_URL in the environment does not stop `serve` or `db upgrade`; --url does.
        source = ctx.get_parameter_source("url")
        if source is not None and source.name == "COMMANDLINE":
            raise usage_error(f"--url: `{ctx.invoked_subcommand}` works on the local database")
        return
    if not url.startswith(("http://", "https://")):
        raise usage_error(f"--url: give an http:// or https:// address, not {url!r}")
    gateway.url, gateway.key = url, key


def main() -> None:
    app()
