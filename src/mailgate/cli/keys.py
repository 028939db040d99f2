"""`mailgate keys`: create, list and revoke API keys, on the store directly or over HTTP.

On the store the CLI holds the database, so it acts on every tenant; its
changes are in the audit log with no key (`key_id` null). Over `--url` it
acts as its key.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Column, Table

from mailgate.api.render import key_json
from mailgate.cli.common import (
    ConfigOption,
    JsonOption,
    app,
    gateway,
    out,
    over_http,
    print_json,
    settings_from,
    with_store,
)
from mailgate.store import CLI, DEFAULT_TENANT, Scope

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="The tenant it belongs to (default: default; over --url, the key's).",
            show_default=False,
        ),
    ] = None,
    scope: Annotated[
        list[Scope] | None,
        typer.Option("--scope", help="What it may do (repeat; default: admin)."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key. The secret is printed once and never stored."""
    scopes = scope or [Scope.ADMIN]
    if gateway.remote:
        names = [s.value for s in scopes]
        data = over_http(lambda client: client.create_key(name, names, tenant_id=tenant))
    else:
        settings = settings_from(config)
        owner = tenant or DEFAULT_TENANT
        data = key_json(
            *with_store(
                settings, lambda s: s.create_key(name, tenant_id=owner, scopes=scopes, actor=CLI)
            )
        )
    if as_json:
        print_json(data)
    else:
        out.print(
            f"{data['key']}\n[dim]id {data['id']}, tenant {data['tenant_id']}, scopes "
            f"{', '.join(data['scopes'])}; shown once, keep it safe[/dim]",
            highlight=False,
        )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="Only this tenant's (default: every tenant's; over --url, the key's, * for all).",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List API keys, newest first (never their secrets)."""
    if gateway.remote:
        rows = over_http(lambda client: list(client.keys(tenant=tenant, limit=100)))
    else:
        settings = settings_from(config)
        listed = None if tenant == "*" else tenant
        rows = [key_json(k) for k in with_store(settings, lambda s: s.list_keys(tenant_id=listed))]
    if as_json:
        print_json({"data": rows, "next_cursor": None})
        return
    table = Table(
        Column("id", no_wrap=True), "name", "tenant", "scopes", "prefix", "created", "revoked",
        box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["id"], r["name"], r["tenant_id"], " ".join(r["scopes"]), f"{r['prefix']}…",
            r["created_at"], r["revoked_at"] or "",
        )  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Revoke an API key (every process stops taking it within seconds)."""
    if gateway.remote:
        over_http(lambda client: client.revoke_key(key_id))
    else:
        with_store(settings_from(config), lambda s: s.revoke_key(key_id, actor=CLI))
    out.print(f"{key_id} revoked")
