"""`/v1/providers`: each provider's state and health, its history, and the operator's switches.

Everything shown comes from the store, so any API process shows the same
picture whichever process holds the worker.
"""

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS
from mailgate.api.schemas import ProviderEventList, ProviderList, ProviderOut, SimulateIn
from mailgate.config import ProviderSettings
from mailgate.delivery.breaker import BreakerState, visible_state
from mailgate.errors import NotFound
from mailgate.message import rfc3339
from mailgate.store import ProviderEvent, ProviderState, Scope, Store

RECENT = timedelta(minutes=5)


def health(
    *,
    enabled: bool,
    breaker: BreakerState,
    paused: bool,
    success_rate: float | None,
    probe_failed: bool,
) -> dict[str, Any]:
    """A 0-100 score and a word for it, from what the provider did lately.

    The recent success rate (100 with no attempts: no evidence of trouble),
    halved while the breaker is half-open or the provider paused after a 429,
    at most 25 after a failed health probe; 0 when disabled or the breaker is
    open. 90 and up is `healthy`, 50 and up `degraded`, below that `down`.
    """
    if not enabled:
        return {"score": 0, "status": "disabled"}
    if breaker is BreakerState.OPEN:
        return {"score": 0, "status": "down"}
    score = 100.0 if success_rate is None else 100.0 * success_rate
    if breaker is BreakerState.HALF_OPEN or paused:
        score /= 2
    if probe_failed:
        score = min(score, 25.0)
    status = "healthy" if score >= 90 else "degraded" if score >= 50 else "down"
    return {"score": round(score), "status": status}


def provider_json(
    settings: ProviderSettings,
    state: ProviderState | None,
    outcomes: tuple[int, int] | None,
    used_today: int = 0,
) -> dict[str, Any]:
    state = state or ProviderState(name=settings.name)
    now = time.time()
    changed = state.breaker_changed_at
    breaker = visible_state(
        state.breaker_state,
        changed.timestamp() if changed is not None else None,
        settings.breaker_cooldown_seconds,
        now,
    )
    total, ok = outcomes or (0, 0)
    success_rate = round(ok / total, 4) if total else None
    enabled = settings.enabled if state.enabled is None else state.enabled
    paused = state.paused_until is not None and state.paused_until.timestamp() > now
    return {
        "name": settings.name,
        "type": settings.type,
        "enabled": enabled,
        "priority": settings.priority,
        "weight": settings.weight,
        "health": health(
            enabled=enabled,
            breaker=breaker,
            paused=paused,
            success_rate=success_rate,
            probe_failed=state.probe_error is not None,
        ),
        "breaker": {
            "state": breaker.value,
            "changed_at": rfc3339(changed),
            "cooldown_seconds": settings.breaker_cooldown_seconds,
            "window_seconds": settings.breaker_window_seconds,
            "min_calls": settings.breaker_min_calls,
            "failure_ratio": settings.breaker_failure_ratio,
            "half_open_calls": settings.breaker_half_open_calls,
        },
        "success_rate": success_rate,
        "attempts_recent": total,
        "last_error": state.last_error,
        "last_error_at": rfc3339(state.last_error_at),
        "paused_until": rfc3339(state.paused_until),
        "limits": {
            "rate_limit": settings.rate_limit,
            "daily_quota": settings.daily_quota,
            "used_today": used_today,
        },
        "probe": {
            "every_seconds": settings.health_probe_seconds or None,
            "last_at": rfc3339(state.probed_at),
            "error": state.probe_error,
        },
        "simulated_failure": state.simulated_failure,
    }


def provider_event_json(event: ProviderEvent) -> dict[str, Any]:
    return {"type": event.type, "at": rfc3339(event.at), "detail": dict(event.detail)}


async def provider_reports(
    store: Store, providers: Sequence[ProviderSettings]
) -> list[dict[str, Any]]:
    """Every provider as the API shows it, in the order they are tried."""
    states = await store.provider_states()
    outcomes = await store.recent_outcomes(RECENT)
    used = await store.quota_used(day=datetime.now(UTC).strftime("%Y-%m-%d"))
    return [
        provider_json(p, states.get(p.name), outcomes.get(p.name), used.get(p.name, 0))
        for p in sorted(providers, key=lambda p: (p.priority, p.name))
    ]


def visible_providers(
    configured: Iterable[ProviderSettings], caller: Caller
) -> list[ProviderSettings]:
    """The providers a caller may see: its tenant's (every one for an admin key)."""
    allowed = caller.tenant.providers
    if allowed is None or caller.is_admin:
        return list(configured)
    return [p for p in configured if p.name in allowed]


def providers_router(ctx: ApiContext) -> APIRouter:
    """Reading needs `read` and shows the providers the caller's tenant may use; switches
    and drills need `admin`."""
    router = APIRouter(prefix="/v1/providers", tags=["providers"])
    Reader = Annotated[Caller, Depends(ctx.guard.require(Scope.READ))]
    Admin = Annotated[Caller, Depends(ctx.guard.require(Scope.ADMIN))]
    configured = {p.name: p for p in ctx.settings.providers}

    def visible(caller: Caller) -> list[ProviderSettings]:
        return visible_providers(configured.values(), caller)

    def find(name: str, caller: Caller) -> ProviderSettings:
        for p in visible(caller):
            if p.name == name:
                return p
        raise NotFound(f"no provider {name!r} is configured", field="name")

    async def one(name: str, caller: Caller) -> dict[str, Any]:
        [report] = await provider_reports(ctx.store, [find(name, caller)])
        return report

    async def change(name: str, caller: Caller, event: str, **values: Any) -> JSONResponse:
        find(name, caller)
        await ctx.store.switch_provider(name, event, actor=caller.actor, **values)
        await ctx.on_state_change()
        return JSONResponse(await one(name, caller))

    @router.get(
        "",
        summary="Every provider and its health",
        responses={200: {"model": ProviderList}, **ERRORS},
    )
    async def list_providers(caller: Reader) -> JSONResponse:
        return JSONResponse({"data": await provider_reports(ctx.store, visible(caller))})

    @router.get(
        "/{name}", summary="One provider", responses={200: {"model": ProviderOut}, **ERRORS}
    )
    async def get_provider(name: str, caller: Reader) -> JSONResponse:
        return JSONResponse(await one(name, caller))

    @router.get(
        "/{name}/events",
        summary="A provider's history, newest first",
        responses={200: {"model": ProviderEventList}, **ERRORS},
    )
    async def provider_events(
        name: str, caller: Reader, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> JSONResponse:
        """Breaker openings and closings, pauses after a 429, exhausted quotas, failed
        probes, and the operator's switches and drills."""
        find(name, caller)
        events = await ctx.store.provider_events(name, limit=limit)
        return JSONResponse({"data": [provider_event_json(e) for e in events]})

    @router.post(
        "/{name}/disable",
        summary="Stop sending through a provider",
        responses={200: {"model": ProviderOut}, **ERRORS},
    )
    async def disable(name: str, caller: Admin) -> JSONResponse:
        return await change(name, caller, "disabled", enabled=False)

    @router.post(
        "/{name}/enable",
        summary="Send through a provider again",
        responses={200: {"model": ProviderOut}, **ERRORS},
    )
    async def enable(name: str, caller: Admin) -> JSONResponse:
        return await change(name, caller, "enabled", enabled=True)

    @router.post(
        "/{name}/simulate-failure",
        summary="Make a provider fail on purpose (drills)",
        responses={200: {"model": ProviderOut}, **ERRORS},
    )
    async def simulate_failure(name: str, body: SimulateIn, caller: Admin) -> JSONResponse:
        """`error` answers every call with a 503, `timeout` never answers; `off` ends the drill.

        The failure goes through the same code path as a real one: breaker,
        failover, attempts, events and metrics all see it.
        """
        return await change(name, caller, "drill", simulated_failure=body.mode)

    return router
