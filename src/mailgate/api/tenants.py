"""`/v1/tenants` (admin keys): create, list, show, change, disable and enable tenants.

A disabled tenant's keys are refused with `403 tenant_disabled` and its
waiting mail is held, not lost, until it is enabled again. The tenant
`default` holds the operator's keys and cannot be disabled.
"""

import re
from collections.abc import Collection
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from mailgate.api.addresses import parse_address
from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, TENANT_ID
from mailgate.api.render import tenant_json
from mailgate.api.tenant_schemas import TenantIn, TenantList, TenantOut, TenantPatch
from mailgate.errors import InvalidRequest
from mailgate.message import new_id
from mailgate.store import Scope, Tenant, utcnow

_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_rules(
    provider_names: Collection[str],
    *,
    sender_domains: tuple[str, ...] | list[str],
    default_from: str | None,
    providers: tuple[str, ...] | list[str] | None,
) -> None:
    """What a tenant's fields must agree on: configured providers, a permitted default sender."""
    if providers is not None:
        for i, name in enumerate(providers):
            if name not in provider_names:
                known = ", ".join(sorted(provider_names)) or "none"
                raise InvalidRequest(
                    f"providers[{i}]: no provider {name!r} is configured (configured: {known})",
                    field=f"providers[{i}]",
                )
    if default_from is not None and sender_domains:
        domain = parse_address(default_from).email.rpartition("@")[2]
        if domain not in sender_domains:
            raise InvalidRequest(
                "default_from: its domain is not one of the tenant's sender_domains",
                field="default_from",
            )


def new_tenant(body: TenantIn) -> Tenant:
    now = utcnow()
    return Tenant(
        id=new_id("ten"),
        name=body.name,
        enabled=True,
        sender_domains=tuple(body.sender_domains),
        default_from=body.default_from,
        providers=tuple(body.providers) if body.providers is not None else None,
        rate_limit=body.rate_limit,
        daily_quota=body.daily_quota,
        created_at=now,
        updated_at=now,
    )


def patch_values(
    patch: TenantPatch, before: Tenant, provider_names: Collection[str]
) -> dict[str, Any]:
    """The fields a patch changes (null clears one), checked against the tenant's others."""
    changes = patch.model_dump(include=patch.model_fields_set)
    if "name" in changes and changes["name"] is None:
        raise InvalidRequest("name: a tenant needs a name", field="name")
    if "sender_domains" in changes and changes["sender_domains"] is None:
        changes["sender_domains"] = []
    check_rules(
        provider_names,
        sender_domains=changes.get("sender_domains", before.sender_domains),
        default_from=changes.get("default_from", before.default_from),
        providers=changes.get("providers", before.providers),
    )
    return changes


async def make_tenant(ctx: ApiContext, caller: Caller, body: TenantIn) -> Tenant:
    """A new tenant (the API and the console both call this)."""
    check_rules(
        ctx.provider_names,
        sender_domains=body.sender_domains,
        default_from=body.default_from,
        providers=body.providers,
    )
    return await ctx.store.create_tenant(new_tenant(body), actor=caller.actor)


async def switch_tenant(
    ctx: ApiContext, caller: Caller, tenant_id: str, *, enabled: bool
) -> Tenant:
    """Enable or disable a tenant; this process's caches and worker see it at once."""
    tenant = await ctx.store.update_tenant(tenant_id, actor=caller.actor, enabled=enabled)
    ctx.guard.forget()
    await ctx.on_state_change()
    return tenant


def tenants_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
    Admin = Annotated[Caller, Depends(ctx.guard.require(Scope.ADMIN))]
    TenantId = Annotated[str, Path(pattern=TENANT_ID)]

    async def answer(tenant: Tenant, status_code: int = 200) -> JSONResponse:
        used = await ctx.store.used_today([tenant.id])
        return JSONResponse(tenant_json(tenant, used.get(tenant.id)), status_code=status_code)

    async def switch(tenant_id: str, caller: Caller, enabled: bool) -> JSONResponse:
        return await answer(await switch_tenant(ctx, caller, tenant_id, enabled=enabled))

    @router.post(
        "",
        status_code=201,
        summary="Create a tenant",
        responses={201: {"model": TenantOut}, **ERRORS},
    )
    async def create_tenant(body: TenantIn, caller: Admin) -> JSONResponse:
        return await answer(await make_tenant(ctx, caller, body), 201)

    @router.get(
        "", summary="List tenants, newest first", responses={200: {"model": TenantList}, **ERRORS}
    )
    async def list_tenants(
        _: Admin,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if cursor is not None and not _CURSOR.match(cursor):
            raise InvalidRequest("cursor is not one this API gave out", field="cursor")
        found = await ctx.store.list_tenants(limit=limit + 1, before_id=cursor)
        page = found[:limit]
        used = await ctx.store.used_today([t.id for t in page])
        return JSONResponse(
            {
                "data": [tenant_json(t, used.get(t.id)) for t in page],
                "next_cursor": page[-1].id if len(found) > limit else None,
            }
        )

    @router.get(
        "/{tenant_id}", summary="One tenant", responses={200: {"model": TenantOut}, **ERRORS}
    )
    async def get_tenant(tenant_id: TenantId, _: Admin) -> JSONResponse:
        return await answer(await ctx.store.get_tenant(tenant_id))

    @router.patch(
        "/{tenant_id}",
        summary="Change a tenant (only the fields given)",
        responses={200: {"model": TenantOut}, **ERRORS},
    )
    async def update_tenant(tenant_id: TenantId, patch: TenantPatch, caller: Admin) -> JSONResponse:
        before = await ctx.store.get_tenant(tenant_id)
        changes = patch_values(patch, before, ctx.provider_names)
        tenant = await ctx.store.update_tenant(tenant_id, actor=caller.actor, **changes)
        ctx.guard.forget()
        await ctx.on_state_change()
        return await answer(tenant)

    @router.post(
        "/{tenant_id}/disable",
        summary="Refuse a tenant's keys and hold its mail",
        responses={200: {"model": TenantOut}, **ERRORS},
    )
    async def disable(tenant_id: TenantId, caller: Admin) -> JSONResponse:
        return await switch(tenant_id, caller, False)

    @router.post(
        "/{tenant_id}/enable",
        summary="Take a tenant's keys again and release its held mail",
        responses={200: {"model": TenantOut}, **ERRORS},
    )
    async def enable(tenant_id: TenantId, caller: Admin) -> JSONResponse:
        return await switch(tenant_id, caller, True)

    return router
