"""`mailgate webhooks`: the tenants' endpoints, on the store directly or over HTTP."""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from mailgate.api.webhooks import SUBSCRIBABLE, delivery_json, webhook_json
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
from mailgate.delivery.webhooks import check_endpoint
from mailgate.store import CLI, DEFAULT_TENANT

webhooks_app = typer.Typer(
    help="Webhooks to your endpoints: create, list, deliveries, test.", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Option("--url", help="Where to post (http or https).")],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="An event type to send (repeat; default: every one)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="Whose endpoint (default: default; over --url, the key's).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add an endpoint. Its signing secret is printed once."""
    events = event or ["*"]
    unknown = [e for e in events if e != "*" and e not in SUBSCRIBABLE]
    if unknown:
        raise typer.BadParameter(
            f"unknown event type {unknown[0]!r} (one of {', '.join(SUBSCRIBABLE)})",
            param_hint="--event",
        )
    # Over --url the gateway checks the address against its own block_private_addresses.
    settings = None if gateway.remote else settings_from(config)
    block = settings is not None and settings.webhooks.block_private_addresses
    try:
        asyncio.run(check_endpoint(url, block_private=block))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None
    if settings is None:
        fields = {"events": events, "description": description, "tenant_id": tenant}
        data = over_http(lambda client: client.create_webhook(url, **fields))
    else:
        owner = tenant or DEFAULT_TENANT
        endpoint = with_store(
            settings,
            lambda s: s.create_webhook(owner, url, events, description, actor=CLI),
        )
        data = webhook_json(endpoint, secret=True)
    if as_json:
        print_json(data)
        return
    out.print(
        f"{data['id']} → {data['url']}\nsecret {data['secret']}\n"
        "[dim]verify each delivery's webhook-signature with it; shown once[/dim]",
        highlight=False,
    )


@webhooks_app.command("list")
def webhooks_list(
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
    """List endpoints, newest first."""
    if gateway.remote:
        rows = over_http(lambda client: list(client.webhooks(tenant=tenant, limit=100)))
    else:
        listed = None if tenant == "*" else tenant
        found = with_store(settings_from(config), lambda s: s.list_webhooks(tenant_id=listed))
        rows = [webhook_json(w) for w in found]
    if as_json:
        print_json({"data": rows, "next_cursor": None})
        return
    table = Table("id", "tenant", "url", "events", "enabled", box=box.SIMPLE_HEAD)
    for r in rows:
        state = "yes" if r["enabled"] else f"no: {r['disabled_reason'] or 'by hand'}"
        table.add_row(r["id"], r["tenant_id"], r["url"], " ".join(r["events"]), state)
    out.print(table)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """What was delivered to an endpoint, newest first, with every try."""
    if gateway.remote:
        rows = over_http(
            lambda client: list(
                islice(client.webhook_deliveries(webhook_id, limit=min(limit, 100)), limit)
            )
        )
    else:
        found = with_store(
            settings_from(config), lambda s: s.webhook_deliveries(None, webhook_id, limit=limit)
        )
        rows = [delivery_json(d) for d in found]
    if as_json:
        print_json({"data": rows, "next_cursor": None})
        return
    table = Table("id", "event", "message", "status", "tries", "last", box=box.SIMPLE_HEAD)
    for r in rows:
        last = r["last_error"] or (str(r["last_status_code"]) if r["last_status_code"] else "")
        table.add_row(
            str(r["id"]), r["event_type"], r["message_id"] or "", r["status"], str(r["tries"]),
            last,
        )  # fmt: skip
    out.print(table)


@webhooks_app.command("test")
def webhooks_test(
    webhook_id: Annotated[str, typer.Argument(metavar="ID")], config: ConfigOption = None
) -> None:
    """Send an endpoint a `webhook.test` event (a worker delivers it)."""
    if gateway.remote:
        delivery_id = over_http(lambda client: client.test_webhook(webhook_id))["delivery_id"]
    else:
        delivery_id = with_store(
            settings_from(config), lambda s: s.test_webhook(None, webhook_id, actor=CLI)
        )
    out.print(f"delivery {delivery_id} queued for {webhook_id}")
