"""`/healthz`, `/readyz` and `/metrics`: for load balancers and Prometheus, no key needed."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from mailgate.api.context import ApiContext
from mailgate.errors import StoreUnavailable


def ops_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is up")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        summary="The store takes writes",
        responses={503: {"description": "The store cannot take a write now."}},
    )
    async def readyz() -> JSONResponse:
        try:
            await ctx.store.heartbeat(ctx.node_id, "api", ctx.started_at)
        except StoreUnavailable as exc:
            body = {
                "status": "unavailable",
                "error": {"code": "unavailable", "message": str(exc), "field": None},
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready"})

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        try:
            depth = await ctx.store.queue_depth()
        except StoreUnavailable:
            depth = {}
        for status, count in depth.items():
            ctx.metrics.queue_depth.labels(status).set(count)
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
