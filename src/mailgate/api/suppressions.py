"""`/v1/suppressions`: the addresses a tenant's mail is not sent to.

Hard bounces, complaints and unsubscribes add to the list by themselves
(`mailgate.store.feedback`); a `manage` key may add (`manual`) and remove.
An admin key works on another tenant's list with `?tenant=`.
"""

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from mailgate.api.addresses import AddressError, parse_address
from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, TenantQuery
from mailgate.api.schemas import AddressField
from mailgate.errors import InvalidRequest, NotFound
from mailgate.message import rfc3339
from mailgate.store import Scope
from mailgate.store.suppress import Suppression

Reason = Literal["hard_bounce", "complaint", "unsubscribe", "manual"]


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: AddressField
    reason: Reason = "manual"


class SuppressionOut(BaseModel):
    email: str
    reason: Reason
    message_id: str | None
    created_at: datetime


class SuppressionList(BaseModel):
    data: list[SuppressionOut]
    next_cursor: str | None


def suppression_json(s: Suppression) -> dict[str, Any]:
    return {
        "email": s.email,
        "reason": s.reason,
        "message_id": s.message_id,
        "created_at": rfc3339(s.created_at),
    }


def cursor_of(s: Suppression) -> str:
    raw = json.dumps([rfc3339(s.created_at), s.email]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        at, email = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at.replace("Z", "+00:00")), str(email)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("not a cursor this list gave", field="cursor") from exc


def _address(value: str, field: str) -> str:
    try:
        return parse_address(value).email.lower()
    except AddressError:
        raise InvalidRequest(f"{value!r} is not an email address", field=field) from None


EmailQuery = Annotated[str | None, Query(max_length=320, pattern=r"^[^\x00-\x1f\x7f]*$")]


def suppressions_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["suppressions"])
    Reader = Annotated[Caller, Depends(ctx.guard.require(Scope.READ))]
    Manager = Annotated[Caller, Depends(ctx.guard.require(Scope.MANAGE))]

    async def tenant_of(caller: Caller, tenant: str | None) -> str:
        if tenant == "*":
            raise InvalidRequest("name one tenant", field="tenant")
        listed = await ctx.listed_tenant(caller, tenant)
        assert listed is not None
        return listed

    @router.get(
        "/v1/suppressions",
        summary="List the tenant's suppressed addresses, newest first",
        responses={200: {"model": SuppressionList}, **ERRORS},
    )
    async def list_suppressions(
        caller: Reader,
        email: EmailQuery = None,
        reason: Annotated[Reason | None, Query()] = None,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> JSONResponse:
        found = await ctx.store.list_suppressions(
            await tenant_of(caller, tenant),
            limit=limit + 1,
            email=_address(email, "email") if email is not None else None,
            reason=reason,
            after=_after(cursor) if cursor is not None else None,
        )
        page = found[:limit]
        return JSONResponse(
            {
                "data": [suppression_json(s) for s in page],
                "next_cursor": cursor_of(page[-1]) if len(found) > limit else None,
            }
        )

    @router.get(
        "/v1/suppressions/{email}",
        summary="Whether one address is suppressed (404 when it is not)",
        responses={200: {"model": SuppressionOut}, **ERRORS},
    )
    async def get_suppression(
        email: str, caller: Reader, tenant: TenantQuery = None
    ) -> JSONResponse:
        address = _address(email, "email")
        found = await ctx.store.list_suppressions(
            await tenant_of(caller, tenant), limit=1, email=address
        )
        if not found:
            raise NotFound(f"{address} is not suppressed", field="email")
        return JSONResponse(suppression_json(found[0]))

    @router.post(
        "/v1/suppressions",
        status_code=201,
        summary="Suppress an address (409 when it already is)",
        responses={201: {"model": SuppressionOut}, **ERRORS},
    )
    async def add_suppression(
        body: SuppressionIn, caller: Manager, tenant: TenantQuery = None
    ) -> JSONResponse:
        added = await ctx.store.add_suppression(
            await tenant_of(caller, tenant),
            body.email.email,
            body.reason,
            actor=caller.actor,
        )
        return JSONResponse(suppression_json(added), status_code=201)

    @router.delete(
        "/v1/suppressions/{email}",
        status_code=204,
        summary="Let mail to an address through again",
        responses=ERRORS,
    )
    async def remove_suppression(
        email: str, caller: Manager, tenant: TenantQuery = None
    ) -> Response:
        await ctx.store.remove_suppression(
            await tenant_of(caller, tenant), _address(email, "email"), actor=caller.actor
        )
        return Response(status_code=204)

    return router
