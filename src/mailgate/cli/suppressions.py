"""`mailgate suppressions`: list, add and remove suppressed addresses, on the store directly
or over HTTP."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from mailgate.api.addresses import AddressError, normalize_email
from mailgate.api.suppressions import suppression_json
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
from mailgate.client import Client
from mailgate.store import CLI, DEFAULT_TENANT, Store

suppressions_app = typer.Typer(
    help="Suppressed addresses (mail to them is not sent): list, add, remove.",
    no_args_is_help=True,
)
app.add_typer(suppressions_app, name="suppressions")

TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant", help="Whose list (default: default; over --url, the key's).", show_default=False
    ),
]


def _tenant_of(client: Client, tenant: str | None) -> str:
    """The tenant a call over HTTP acts on: the one named, else the key's."""
    return tenant if tenant is not None else str(client.me()["tenant"]["id"])


def _address(value: str) -> str:
    try:
        return normalize_email(value).lower()
    except AddressError as exc:
        raise typer.BadParameter(str(exc), param_hint="EMAIL") from None


@suppressions_app.command("list")
def suppressions_list(
    tenant: TenantOption = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Only this reason: hard_bounce, complaint, unsubscribe, manual."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List suppressed addresses, newest first."""
    if gateway.remote:
        rows = over_http(
            lambda client: list(
                islice(client.suppressions(tenant=tenant, reason=reason, limit=100), limit)
            )
        )
    else:
        settings = settings_from(config)
        owner = tenant or DEFAULT_TENANT
        found = with_store(
            settings, lambda s: s.list_suppressions(owner, limit=limit, reason=reason)
        )
        rows = [suppression_json(s) for s in found]
    if as_json:
        print_json({"data": rows, "next_cursor": None})
        return
    table = Table("email", "reason", "message", "since", box=box.SIMPLE_HEAD)
    for r in rows:
        table.add_row(r["email"], r["reason"], r["message_id"] or "", r["created_at"])
    out.print(table)


def _change(email: str, tenant: str | None, config: Path | None, *, add: bool) -> tuple[str, str]:
    """Suppress (`add`) or let through an address, over HTTP or on the store; the address
    as normalised and the tenant whose list changed."""
    address = _address(email)
    if gateway.remote:

        def call(client: Client) -> str:
            owner = _tenant_of(client, tenant)
            if add:
                client.suppress(address, tenant=owner)
            else:
                client.unsuppress(address, tenant=owner)
            return owner

        return address, over_http(call)
    owner = tenant or DEFAULT_TENANT

    async def job(store: Store) -> None:
        if add:
            await store.add_suppression(owner, address, "manual", actor=CLI)
        else:
            await store.remove_suppression(owner, address, actor=CLI)

    with_store(settings_from(config), job)
    return address, owner


@suppressions_app.command("add")
def suppressions_add(
    email: Annotated[str, typer.Argument(metavar="EMAIL")],
    tenant: TenantOption = None,
    config: ConfigOption = None,
) -> None:
    """Suppress an address: mail to it is dropped before the send."""
    address, owner = _change(email, tenant, config, add=True)
    out.print(f"{address} suppressed for tenant {owner}")


@suppressions_app.command("remove")
def suppressions_remove(
    email: Annotated[str, typer.Argument(metavar="EMAIL")],
    tenant: TenantOption = None,
    config: ConfigOption = None,
) -> None:
    """Let mail to an address through again."""
    address, owner = _change(email, tenant, config, add=False)
    out.print(f"{address} removed from tenant {owner}'s suppressions")
