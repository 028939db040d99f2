"""The configured providers as one worker process sees them, kept in step with the store.

Each provider has a slot: its adapter, its circuit breaker, whether an
operator enabled it, until when it is paused (a 429), and which drill is on.
The operator's switches and the breaker's open/close changes are kept in the
store; `refresh` (every second, and at once after a local API change) brings
this process's view up to date, so every process sees the same picture.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailgate.config import ProviderSettings, Settings
from mailgate.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from mailgate.errors import ProviderError, StoreUnavailable
from mailgate.metrics import Metrics
from mailgate.providers import Provider, SimulatedFailure, build_provider
from mailgate.store import Store

log = logging.getLogger(__name__)

DEFAULT_PAUSE_SECONDS = 2.0
"""How long a provider that answered 429 without a Retry-After is left alone."""

_ERROR_WRITE_INTERVAL = 1.0


def breaker_config(settings: ProviderSettings) -> BreakerConfig:
    return BreakerConfig(
        window_seconds=settings.breaker_window_seconds,
        min_calls=settings.breaker_min_calls,
        failure_ratio=settings.breaker_failure_ratio,
        cooldown_seconds=settings.breaker_cooldown_seconds,
    )


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class Slot:
    settings: ProviderSettings
    provider: Provider
    breaker: CircuitBreaker
    enabled: bool
    paused_until: float = 0.0
    _last_error_written: float = field(default=0.0, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    def unavailable_reason(self, now: float) -> str | None:
        """Why this provider cannot take a message now, or None if it can.

        When it can, this may take the breaker's one half-open probe: call it
        only right before sending.
        """
        if not self.enabled:
            return "disabled"
        if now < self.paused_until:
            return f"paused for {self.paused_until - now:.1f}s after a 429"
        if not self.breaker.allow(now):
            return "breaker open"
        return None


class ProviderPool:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.slots: dict[str, Slot] = {}
        for p in settings.providers:
            self.slots[p.name] = Slot(
                settings=p,
                provider=build_provider(
                    p,
                    timeout=settings.delivery.attempt_timeout_seconds,
                    max_connections=settings.delivery.concurrency,
                ),
                breaker=CircuitBreaker(breaker_config(p)),
                enabled=p.enabled,
            )
        priorities = sorted({s.settings.priority for s in self.slots.values()})
        self._groups = [
            [s for s in self.slots.values() if s.settings.priority == p] for p in priorities
        ]

    def ordered(self, forced: str | None = None) -> list[Slot]:
        """The providers to try, in order: by priority, by weight inside a priority."""
        if forced is not None:
            return [self.slots[forced]] if forced in self.slots else []
        order: list[Slot] = []
        for group in self._groups:
            if len(group) == 1:
                order.append(group[0])
            else:
                # A weighted random order (Efraimidis-Spirakis): each provider comes
                # first with a probability proportional to its weight.
                order += sorted(
                    group, key=lambda s: random.random() ** (1 / s.settings.weight), reverse=True
                )
        return order

    async def refresh(self) -> None:
        """Adopt the operator's switches and breaker changes other processes stored."""
        states = await self._store.provider_states()
        for name, slot in self.slots.items():
            state = states.get(name)
            if state is None:
                continue
            slot.enabled = slot.settings.enabled if state.enabled is None else state.enabled
            slot.provider.simulated_failure = SimulatedFailure(state.simulated_failure)
            slot.paused_until = max(slot.paused_until, _epoch(state.paused_until))
            if slot.breaker.adopt(state.breaker_state, _epoch(state.breaker_changed_at)):
                self._gauge(slot)

    # --- outcomes of calls ---------------------------------------------------

    async def succeeded(self, slot: Slot) -> None:
        """The provider handled a call (it took the message, or rightly refused a bad one)."""
        await self._changed(slot, slot.breaker.record_success(self._clock()), None)

    async def failed(self, slot: Slot, error: ProviderError) -> None:
        """A timeout, connection failure or 5xx."""
        await self._changed(slot, slot.breaker.record_failure(self._clock()), error)

    async def refused_credentials(self, slot: Slot, error: ProviderError) -> None:
        """401/403: open the breaker at once; nothing will pass until the cool-down."""
        await self._changed(slot, slot.breaker.trip(self._clock()), error)

    async def throttled(self, slot: Slot, error: ProviderError, retry_after: float | None) -> None:
        """429: leave the provider alone until Retry-After (or a short default)."""
        slot.breaker.release_probe()
        until = self._clock() + (retry_after if retry_after is not None else DEFAULT_PAUSE_SECONDS)
        if until > slot.paused_until:
            slot.paused_until = until
            await self._write(slot.name, paused_until=_datetime(until))
        await self._note_error(slot, error)

    async def _changed(
        self, slot: Slot, state: BreakerState | None, error: ProviderError | None
    ) -> None:
        if error is not None:
            await self._note_error(slot, error)
        if state is None:
            return
        self._metrics.breaker_transitions.labels(slot.name, state.value).inc()
        self._gauge(slot)
        if state is BreakerState.OPEN:
            log.warning(
                "provider %s: breaker opened (cool-down %.0fs): %s",
                slot.name,
                slot.settings.breaker_cooldown_seconds,
                error,
            )
        else:
            log.info("provider %s: breaker closed, the probe succeeded", slot.name)
        await self._write(
            slot.name,
            breaker_state=state.value,
            breaker_changed_at=_datetime(slot.breaker.changed_at),
        )

    async def _note_error(self, slot: Slot, error: ProviderError) -> None:
        now = self._clock()
        if now - slot._last_error_written < _ERROR_WRITE_INTERVAL:
            return
        slot._last_error_written = now
        await self._write(slot.name, last_error=str(error), last_error_at=_datetime(now))

    def _gauge(self, slot: Slot) -> None:
        is_open = slot.breaker.state(self._clock()) is not BreakerState.CLOSED
        self._metrics.breaker_open.labels(slot.name).set(int(is_open))

    async def _write(self, name: str, **values: object) -> None:
        try:
            await self._store.update_provider(name, **values)
        except StoreUnavailable as exc:
            log.warning("provider %s: could not store its state: %s", name, exc)

    async def close(self) -> None:
        for slot in self.slots.values():
            await slot.provider.close()
