"""`/v1/providers`: health score, breaker tuning, limits, probes, and each provider's history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mailgate.api.providers import health
from mailgate.api.schemas import ProviderEventList, ProviderOut
from mailgate.config import Settings
from mailgate.delivery.breaker import BreakerState
from mailgate.store import Store


async def primary(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/v1/providers/primary")
    assert response.status_code == 200, response.text
    ProviderOut.model_validate(response.json())
    return dict(response.json())


async def test_health_follows_what_the_store_knows(client: httpx.AsyncClient, store: Store) -> None:
    fresh = await primary(client)
    assert fresh["health"] == {"score": 100, "status": "healthy"}  # no evidence of trouble
    assert fresh["probe"] == {"every_seconds": None, "last_at": None, "error": None}
    assert fresh["limits"] == {"rate_limit": None, "daily_quota": None, "used_today": 0}

    await client.post("/v1/providers/primary/disable")
    assert (await primary(client))["health"] == {"score": 0, "status": "disabled"}
    await client.post("/v1/providers/primary/enable")

    now = datetime.now(UTC)
    await store.update_provider("primary", paused_until=now + timedelta(seconds=30))
    assert (await primary(client))["health"] == {"score": 50, "status": "degraded"}
    await store.update_provider("primary", paused_until=None, probe_error="HTTP 401: bad key")
    probed = await primary(client)
    assert probed["health"] == {"score": 25, "status": "down"}
    assert probed["probe"]["error"] == "HTTP 401: bad key"  # type: ignore[index]
    await store.update_provider(
        "primary", probe_error=None, breaker_state="open", breaker_changed_at=now
    )
    opened = await primary(client)
    assert opened["health"] == {"score": 0, "status": "down"}
    assert opened["breaker"]["state"] == "open"  # type: ignore[index]


async def test_breaker_tuning_and_limits_are_shown(
    client: httpx.AsyncClient, store: Store, settings: Settings
) -> None:
    report = await primary(client)
    configured = next(p for p in settings.providers if p.name == "primary")
    assert report["breaker"] == {
        "state": "closed",
        "changed_at": None,
        "cooldown_seconds": configured.breaker_cooldown_seconds,
        "window_seconds": configured.breaker_window_seconds,
        "min_calls": configured.breaker_min_calls,
        "failure_ratio": configured.breaker_failure_ratio,
        "half_open_calls": configured.breaker_half_open_calls,
    }
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await store.reserve_quota("primary", day=day, want=7, quota=100) == 7
    assert (await primary(client))["limits"]["used_today"] == 7  # type: ignore[index]


async def test_operator_actions_are_the_providers_history(client: httpx.AsyncClient) -> None:
    await client.post("/v1/providers/primary/disable")
    await client.post("/v1/providers/primary/enable")
    await client.post("/v1/providers/primary/simulate-failure", json={"mode": "error"})
    response = await client.get("/v1/providers/primary/events")
    assert response.status_code == 200
    events = ProviderEventList.model_validate(response.json()).data
    assert [e.type for e in events] == ["drill", "enabled", "disabled"]  # newest first
    assert events[0].detail == {"by": "api", "simulated_failure": "error"}
    assert events[2].detail == {"by": "api", "enabled": False}
    assert (await client.get("/v1/providers/backup/events")).json() == {"data": []}
    two = (await client.get("/v1/providers/primary/events", params={"limit": 2})).json()
    assert [e["type"] for e in two["data"]] == ["drill", "enabled"]


@pytest.mark.parametrize("limit", ["0", "501", "many"])
async def test_a_bad_event_limit_names_the_field(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/v1/providers/primary/events", params={"limit": limit})
    assert response.status_code == 400 and response.json()["error"]["field"] == "limit"


async def test_events_of_an_unknown_provider(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/providers/nope/events")
    assert response.status_code == 404 and response.json()["error"]["field"] == "name"


@pytest.mark.parametrize(
    ("state", "paused", "rate", "probe_failed", "expected"),
    [
        (BreakerState.CLOSED, False, 0.97, False, {"score": 97, "status": "healthy"}),
        (BreakerState.CLOSED, False, 0.7, False, {"score": 70, "status": "degraded"}),
        (BreakerState.CLOSED, False, 0.3, False, {"score": 30, "status": "down"}),
        (BreakerState.HALF_OPEN, False, 1.0, False, {"score": 50, "status": "degraded"}),
        (BreakerState.HALF_OPEN, True, 0.9, False, {"score": 45, "status": "down"}),
        (BreakerState.CLOSED, False, 1.0, True, {"score": 25, "status": "down"}),
        (BreakerState.OPEN, False, 1.0, False, {"score": 0, "status": "down"}),
    ],
)
def test_the_score(
    state: BreakerState, paused: bool, rate: float, probe_failed: bool, expected: dict[str, object]
) -> None:
    got = health(
        enabled=True, breaker=state, paused=paused, success_rate=rate, probe_failed=probe_failed
    )
    assert got == expected
