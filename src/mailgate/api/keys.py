"""`/v1/keys` and `/v1/me`: scoped API keys, made and revoked by the tenant's `manage` keys.

A `manage` key works on its own tenant's keys and may not make `admin`
keys; an `admin` key works on every tenant's. A key's secret is in the
answer that made it and nowhere else, ever: the store keeps its hash.
"""

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, TenantQuery
from mailgate.api.render import key_json, tenant_json
from mailgate.api.tenant_schemas import KeyCreated, KeyIn, KeyList, KeyOut, MeOut
from mailgate.errors import Forbidden, InvalidRequest, NotFound
from mailgate.store import ApiKey, Scope

KEY_ID = re.compile(r"^key_[0-9A-HJKMNP-TV-Z]{26}$")


def _check_key_id(key_id: str, field: str = "id") -> str:
    if not KEY_ID.match(key_id):
        raise InvalidRequest(f"{key_id!r} is not a key id", field=field)
    return key_id


async def make_key(ctx: ApiContext, caller: Caller, body: KeyIn) -> tuple[ApiKey, str]:
    """A new key as `caller` may make it (the API and the console both call this)."""
    tenant_id = body.tenant_id or caller.tenant.id
    if tenant_id != caller.tenant.id and not caller.is_admin:
        raise NotFound(f"no tenant {tenant_id}", field="tenant_id")
    if Scope.ADMIN in body.scopes and not caller.is_admin:
        raise Forbidden("only an admin key may make admin keys", field="scopes")
    return await ctx.store.create_key(
        body.name, tenant_id=tenant_id, scopes=body.scopes, actor=caller.actor
    )


def keys_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["keys"])
    Manager = Annotated[Caller, Depends(ctx.guard.require(Scope.MANAGE))]
    AnyKey = Annotated[Caller, Depends(ctx.guard.require(None))]

    @router.post(
        "/v1/keys",
        status_code=201,
        summary="Create an API key (its secret is shown this once)",
        responses={201: {"model": KeyCreated}, **ERRORS},
    )
    async def create_key(body: KeyIn, caller: Manager) -> JSONResponse:
        key, secret = await make_key(ctx, caller, body)
        return JSONResponse(key_json(key, secret), status_code=201)

    @router.get(
        "/v1/keys",
        summary="List API keys, newest first (never their secrets)",
        responses={200: {"model": KeyList}, **ERRORS},
    )
    async def list_keys(
        caller: Manager,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if cursor is not None:
            _check_key_id(cursor, "cursor")
        found = await ctx.store.list_keys(
            tenant_id=await ctx.listed_tenant(caller, tenant), limit=limit + 1, before_id=cursor
        )
        page = found[:limit]
        return JSONResponse(
            {
                "data": [key_json(k) for k in page],
                "next_cursor": page[-1].id if len(found) > limit else None,
            }
        )

    @router.post(
        "/v1/keys/{key_id}/revoke",
        summary="Revoke an API key (every process refuses it within seconds)",
        responses={200: {"model": KeyOut}, **ERRORS},
    )
    async def revoke_key(key_id: str, caller: Manager) -> JSONResponse:
        key = await ctx.store.revoke_key(
            _check_key_id(key_id), tenant_id=caller.scope_of(), actor=caller.actor
        )
        ctx.guard.forget()
        return JSONResponse(key_json(key))

    @router.get(
        "/v1/me",
        summary="The calling key and its tenant",
        responses={200: {"model": MeOut}, **ERRORS},
    )
    async def me(caller: AnyKey) -> JSONResponse:
        used = await ctx.store.used_today([caller.tenant.id])
        return JSONResponse(
            {
                "key": key_json(caller.key),
                "tenant": tenant_json(caller.tenant, used.get(caller.tenant.id)),
            }
        )

    return router
