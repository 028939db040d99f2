"""`GET /v1/audit` (admin keys): every change made with a `manage` or `admin` key, newest first."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS, TenantQuery
from mailgate.api.render import audit_json
from mailgate.api.tenant_schemas import AuditList
from mailgate.store import Scope


def audit_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/audit", tags=["audit"])
    Admin = Annotated[Caller, Depends(ctx.guard.require(Scope.ADMIN))]

    @router.get("", summary="The audit log", responses={200: {"model": AuditList}, **ERRORS})
    async def audit(
        caller: Admin,
        tenant: TenantQuery = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> JSONResponse:
        """Each record names the key that made the change (null: the CLI), the action, the
        target and the tenant it concerns."""
        listed = None if tenant is None else await ctx.listed_tenant(caller, tenant)
        records = await ctx.store.audit_records(tenant_id=listed, limit=limit + 1, before_id=cursor)
        page = records[:limit]
        return JSONResponse(
            {
                "data": [audit_json(r) for r in page],
                "next_cursor": str(page[-1].id) if len(records) > limit else None,
            }
        )

    return router
