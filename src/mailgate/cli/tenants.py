"""`mailgate tenants`: create, list, show, change, disable and enable tenants.

The same rules as `/v1/tenants` (the same models check the values); a
tenant is named by its id or its name. Over `--url` they are that API's
calls, made with an admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.table import Column, Table

from mailgate import service
from mailgate.api.errors import validation_error
from mailgate.api.render import tenant_json
from mailgate.api.tenant_schemas import TenantIn, TenantPatch
from mailgate.api.tenants import check_rules, new_tenant, patch_values
from mailgate.cli.common import (
    ConfigOption,
    JsonOption,
    app,
    gateway,
    out,
    over_http,
    print_json,
    settings_from,
    usage_error,
    with_store,
)
from mailgate.client import Client
from mailgate.client import NotFound as NotListed
from mailgate.errors import NotFound
from mailgate.store import CLI, Store, Tenant

tenants_app = typer.Typer(
    help="Tenants: who owns which mail and keys, and the rules their mail follows.",
    no_args_is_help=True,
)
app.add_typer(tenants_app, name="tenants")

Ref = Annotated[str, typer.Argument(metavar="ID", help="The tenant's id or name.")]
SenderDomains = Annotated[
    list[str] | None,
    typer.Option("--sender-domain", help="A domain its `from` may use (repeat; none: any)."),
]
DefaultFrom = Annotated[
    str | None, typer.Option("--default-from", help="The sender of mail that names none.")
]
Providers = Annotated[
    list[str] | None,
    typer.Option("--provider", help="A configured provider its mail may use (repeat; none: all)."),
]
RateLimit = Annotated[
    str | None, typer.Option("--rate-limit", help="API requests: N/s, N/min or N/h.")
]
DailyQuota = Annotated[
    int | None, typer.Option("--daily-quota", help="Messages per UTC day.", min=1)
]
CLEARABLE = ("sender_domains", "default_from", "providers", "rate_limit", "daily_quota")


def _model(model: type[Any], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problem = validation_error(exc)
        raise usage_error(f"({problem.field}) {problem.message}") from None


async def _find(store: Store, ref: str) -> Tenant:
    try:
        return await store.get_tenant(ref)
    except NotFound:
        for tenant in await store.list_tenants():
            if tenant.name == ref:
                return tenant
        raise


def _tenant_id(client: Client, ref: str) -> str:
    """The id of the tenant `ref` names (its id or its name), asking the gateway."""
    try:
        return str(client.tenant(ref)["id"])
    except NotListed:
        for tenant in client.tenants():
            if tenant["name"] == ref:
                return str(tenant["id"])
        raise


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        out.print(f"{key:>15}  {'-' if value is None else value}", highlight=False)


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Option("--name", help="A unique name.")],
    sender_domain: SenderDomains = None,
    default_from: DefaultFrom = None,
    provider: Providers = None,
    rate_limit: RateLimit = None,
    daily_quota: DailyQuota = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tenant; make keys for it with `mailgate keys create --tenant ID`."""
    settings = service.effective_settings(settings_from(config))
    values: dict[str, Any] = {"name": name, "sender_domains": sender_domain or []}
    values |= {
        k: v
        for k, v in (
            ("default_from", default_from),
            ("providers", provider),
            ("rate_limit", rate_limit),
            ("daily_quota", daily_quota),
        )
        if v is not None
    }
    body: TenantIn = _model(TenantIn, values)
    if gateway.remote:
        data = over_http(lambda client: client.create_tenant(**values))
    else:

        async def job(store: Store) -> Tenant:
            check_rules(
                {p.name for p in settings.providers},
                sender_domains=body.sender_domains,
                default_from=body.default_from,
                providers=body.providers,
            )
            return await store.create_tenant(new_tenant(body), actor=CLI)

        data = tenant_json(with_store(settings, job), None)
    if as_json:
        _show(data, True)
    else:
        out.print(f"{data['id']} created ({data['name']})", highlight=False)


@tenants_app.command("list")
def tenants_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every tenant, newest first."""
    if gateway.remote:
        rows = over_http(lambda client: list(client.tenants()))
    else:

        async def job(store: Store) -> tuple[list[Tenant], dict[str, int]]:
            found = await store.list_tenants()
            return found, await store.used_today([t.id for t in found])

        found, used = with_store(settings_from(config), job)
        rows = [tenant_json(t, used.get(t.id)) for t in found]
    if as_json:
        print_json({"data": rows, "next_cursor": None})
        return
    table = Table(
        Column("id", no_wrap=True), "name", "enabled", "rate limit", "quota (used today)",
        box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for r in rows:
        quota = f"{r['daily_quota']} ({r['used_today']})" if r["daily_quota"] else "-"
        enabled = "yes" if r["enabled"] else "no"
        table.add_row(r["id"], r["name"], enabled, r["rate_limit"] or "-", quota)
    out.print(table)


@tenants_app.command("show")
def tenants_show(ref: Ref, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One tenant and how much of today's quota it used."""
    if gateway.remote:
        data = over_http(lambda client: client.tenant(_tenant_id(client, ref)))
    else:

        async def job(store: Store) -> dict[str, Any]:
            tenant = await _find(store, ref)
            return tenant_json(tenant, (await store.used_today([tenant.id])).get(tenant.id))

        data = with_store(settings_from(config), job)
    _show(data, as_json)


@tenants_app.command("update")
def tenants_update(
    ref: Ref,
    name: Annotated[str | None, typer.Option("--name")] = None,
    sender_domain: SenderDomains = None,
    default_from: DefaultFrom = None,
    provider: Providers = None,
    rate_limit: RateLimit = None,
    daily_quota: DailyQuota = None,
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help=f"Unset a field (repeat): {', '.join(CLEARABLE)}."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a tenant: only the options given change."""
    settings = service.effective_settings(settings_from(config))
    values: dict[str, Any] = {
        k: v
        for k, v in (
            ("name", name),
            ("sender_domains", sender_domain),
            ("default_from", default_from),
            ("providers", provider),
            ("rate_limit", rate_limit),
            ("daily_quota", daily_quota),
        )
        if v is not None
    }
    for field in clear or []:
        field = field.replace("-", "_")
        if field not in CLEARABLE:
            raise usage_error(f"--clear takes one of {', '.join(CLEARABLE)}")
        values[field] = None
    patch: TenantPatch = _model(TenantPatch, values)
    if gateway.remote:
        # Only the fields given; a cleared one is sent as null.
        data = over_http(lambda client: client.update_tenant(_tenant_id(client, ref), **values))
    else:

        async def job(store: Store) -> dict[str, Any]:
            before = await _find(store, ref)
            changes = patch_values(patch, before, {p.name for p in settings.providers})
            tenant = await store.update_tenant(before.id, actor=CLI, **changes)
            return tenant_json(tenant, (await store.used_today([tenant.id])).get(tenant.id))

        data = with_store(settings, job)
    _show(data, as_json)


def _switch(ref: str, config: Any, enabled: bool) -> None:
    if gateway.remote:

        def call(client: Client) -> str:
            tenant_id = _tenant_id(client, ref)
            switch = client.enable_tenant if enabled else client.disable_tenant
            return str(switch(tenant_id)["id"])

        tenant_id = over_http(call)
    else:

        async def job(store: Store) -> str:
            tenant = await _find(store, ref)
            return (await store.update_tenant(tenant.id, actor=CLI, enabled=enabled)).id

        tenant_id = with_store(settings_from(config), job)
    out.print(f"{tenant_id} {'enabled' if enabled else 'disabled'}", highlight=False)


@tenants_app.command("disable")
def tenants_disable(ref: Ref, config: ConfigOption = None) -> None:
    """Refuse the tenant's keys and hold its waiting mail (nothing is lost)."""
    _switch(ref, config, False)


@tenants_app.command("enable")
def tenants_enable(ref: Ref, config: ConfigOption = None) -> None:
    """Take the tenant's keys again; its held mail is due at once."""
    _switch(ref, config, True)
