"""`/v1/providers`: each provider's state, and the operator's switches.

Everything shown comes from the store, so any API process shows the same
picture whichever process holds the worker.
"""

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from mailgate.api.context import ApiContext
from mailgate.api.schemas import ErrorOut, ProviderList, ProviderOut, SimulateIn
from mailgate.config import ProviderSettings
from mailgate.delivery.breaker import visible_state
from mailgate.errors import NotFound
from mailgate.message import rfc3339
from mailgate.store import ApiKey, ProviderState

RECENT = timedelta(minutes=5)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


def provider_json(
    settings: ProviderSettings, state: ProviderState | None, outcomes: tuple[int, int] | None
) -> dict[str, Any]:
    state = state or ProviderState(name=settings.name)
    changed = state.breaker_changed_at
    breaker = visible_state(
        state.breaker_state,
        changed.timestamp() if changed is not None else None,
        settings.breaker_cooldown_seconds,
        time.time(),
    )
    total, ok = outcomes or (0, 0)
    return {
        "name": settings.name,
        "type": settings.type,
        "enabled": settings.enabled if state.enabled is None else state.enabled,
        "priority": settings.priority,
        "weight": settings.weight,
        "breaker": {
            "state": breaker.value,
            "changed_at": rfc3339(changed),
            "cooldown_seconds": settings.breaker_cooldown_seconds,
        },
        "success_rate": round(ok / total, 4) if total else None,
        "attempts_recent": total,
        "last_error": state.last_error,
        "last_error_at": rfc3339(state.last_error_at),
        "paused_until": rfc3339(state.paused_until),
        "simulated_failure": state.simulated_failure,
    }


def providers_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/providers", tags=["providers"])
    Key = Annotated[ApiKey, Depends(ctx.keys)]
    configured = {p.name: p for p in ctx.settings.providers}

    def find(name: str) -> ProviderSettings:
        if name not in configured:
            raise NotFound(f"no provider {name!r} is configured", field="name")
        return configured[name]

    async def one(name: str) -> dict[str, Any]:
        settings = find(name)
        states = await ctx.store.provider_states()
        outcomes: Mapping[str, tuple[int, int]] = await ctx.store.recent_outcomes(RECENT)
        return provider_json(settings, states.get(name), outcomes.get(name))

    async def change(name: str, **values: Any) -> JSONResponse:
        find(name)
        await ctx.store.update_provider(name, **values)
        await ctx.on_provider_change()
        return JSONResponse(await one(name))

    @router.get(
        "",
        summary="Every provider and its health",
        responses={200: {"model": ProviderList}, **_ERRORS},
    )
    async def list_providers(_: Key) -> JSONResponse:
        states = await ctx.store.provider_states()
        outcomes = await ctx.store.recent_outcomes(RECENT)
        data = [
            provider_json(p, states.get(p.name), outcomes.get(p.name))
            for p in sorted(configured.values(), key=lambda p: (p.priority, p.name))
        ]
        return JSONResponse({"data": data})

    @router.get(
        "/{name}", summary="One provider", responses={200: {"model": ProviderOut}, **_ERRORS}
    )
    async def get_provider(name: str, _: Key) -> JSONResponse:
        return JSONResponse(await one(name))

    @router.post(
        "/{name}/disable",
        summary="Stop sending through a provider",
        responses={200: {"model": ProviderOut}, **_ERRORS},
    )
    async def disable(name: str, _: Key) -> JSONResponse:
        return await change(name, enabled=False)

    @router.post(
        "/{name}/enable",
        summary="Send through a provider again",
        responses={200: {"model": ProviderOut}, **_ERRORS},
    )
    async def enable(name: str, _: Key) -> JSONResponse:
        return await change(name, enabled=True)

    @router.post(
        "/{name}/simulate-failure",
        summary="Make a provider fail on purpose (drills)",
        responses={200: {"model": ProviderOut}, **_ERRORS},
    )
    async def simulate_failure(name: str, body: SimulateIn, _: Key) -> JSONResponse:
        """`error` answers every call with a 503, `timeout` never answers; `off` ends the drill.

        The failure goes through the same code path as a real one: breaker,
        failover, attempts, events and metrics all see it.
        """
        return await change(name, simulated_failure=body.mode)

    return router
