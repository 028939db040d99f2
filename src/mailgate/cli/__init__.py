"""The `mailgate` command.

`serve` and `worker` run the service; the other commands work on the store
directly (the same operations the API uses), so they need no running server
and no API key, and act on every tenant. Every command takes `--config
PATH`; exit codes are 0 done, 1 failed, 2 usage or configuration error.
`--json` prints what the HTTP API would answer.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mailgate import __version__
from mailgate.cli import keys, messages, providers, running, suppressions, tenants, webhooks
from mailgate.cli.common import app, out

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


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"mailgate {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()
