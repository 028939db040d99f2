"""The configured providers as one worker process sees them, kept in step with the store.

Each provider has a slot: its adapter, its circuit breaker, whether an
operator enabled it, until when it is paused (a 429), its share of the rate
limit, its daily quota, and which drill is on. The operator's switches, the
breaker's open/close changes and 429 pauses are kept in the store; `refresh`
(every second, and at once after a local API change) brings this process's
view up to date, so every process sees the same picture.

Every breaker change, pause, exhausted quota and failed health probe is
also a provider event in the store, a metric and a log line, so a failing
primary never hides behind a healthy backup.

`refresh` also reads the tenants: which are disabled (their mail waits)
and which providers each may use.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailgate.config import ProviderSettings, Settings
from mailgate.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from mailgate.delivery.limits import DailyQuota, RateLimiter, utc_day
from mailgate.errors import ProviderAuthError, ProviderError, StoreUnavailable
from mailgate.metrics import Metrics
from mailgate.providers import Provider, SimulatedFailure, build_provider
from mailgate.store import Store, Tenant

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
        half_open_calls=settings.breaker_half_open_calls,
    )


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a provider cannot take a message now, and in how many seconds it might."""

    reason: str
    wait: float | None
    """None: not by waiting (disabled)."""

    def __str__(self) -> str:
        return self.reason


@dataclass
class Slot:
    settings: ProviderSettings
    provider: Provider
    breaker: CircuitBreaker
    enabled: bool
    limiter: RateLimiter | None = None
    quota: DailyQuota | None = None
    paused_until: float = 0.0
    probed_at: float = 0.0
    """When some process last claimed this provider's health probe, as last seen."""
    _last_error_written: float = field(default=0.0, repr=False)
    _quota_reported: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return self.settings.name


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
            rate = p.rate_per_second
            self.slots[p.name] = Slot(
                settings=p,
                provider=build_provider(
                    p,
                    timeout=settings.delivery.attempt_timeout_seconds,
                    max_connections=settings.delivery.concurrency,
                ),
                breaker=CircuitBreaker(breaker_config(p)),
                enabled=p.enabled,
                limiter=RateLimiter(rate) if rate is not None else None,
                quota=DailyQuota(p.name, p.daily_quota, store) if p.daily_quota else None,
            )
        self.tenants: dict[str, Tenant] = {}
        """Every tenant as last read from the store (unknown ones: enabled, every provider)."""
        priorities = sorted({s.settings.priority for s in self.slots.values()})
        self._groups = [
            [s for s in self.slots.values() if s.settings.priority == p] for p in priorities
        ]

    def tenant_enabled(self, tenant_id: str) -> bool:
        tenant = self.tenants.get(tenant_id)
        return tenant is None or tenant.enabled

    def allowed(self, tenant_id: str) -> tuple[str, ...] | None:
        """The providers a tenant's mail may use (None: every one)."""
        tenant = self.tenants.get(tenant_id)
        return tenant.providers if tenant is not None else None

    def ordered(self, forced: str | None = None, tenant_id: str | None = None) -> list[Slot]:
        """The providers to try, in order: by priority, by weight inside a priority.

        Only those the tenant may use, when it names some.
        """
        allowed = self.allowed(tenant_id) if tenant_id is not None else None
        if forced is not None:
            usable = forced in self.slots and (allowed is None or forced in allowed)
            return [self.slots[forced]] if usable else []
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
        if allowed is not None:
            return [slot for slot in order if slot.name in allowed]
        return order

    async def acquire(self, slot: Slot) -> Unavailable | None:
        """Take what one send to this provider needs now, or say why it cannot go.

        When it can go, this may have taken one of the breaker's half-open probes,
        a rate-limit token and a send of the daily quota: call it only right
        before sending.
        """
        now = self._clock()
        if not slot.enabled:
            return Unavailable("disabled", None)
        if now < slot.paused_until:
            wait = slot.paused_until - now
            return Unavailable(f"paused for {wait:.1f}s after a 429", wait)
        if slot.limiter is not None and (wait := slot.limiter.wait()) > 0:
            return Unavailable(f"at its rate limit ({slot.settings.rate_limit})", wait)
        if slot.quota is not None and (wait := slot.quota.wait()) > 0:
            return Unavailable(f"daily quota of {slot.quota.quota} used up", wait)
        if not slot.breaker.allow(now):
            cooldown = slot.breaker.changed_at + slot.settings.breaker_cooldown_seconds - now
            return Unavailable("breaker open", max(cooldown, 0.05))
        if slot.quota is not None and not await self._take_quota(slot):
            slot.breaker.release_probe()
            return Unavailable(f"daily quota of {slot.quota.quota} used up", slot.quota.wait())
        if slot.limiter is not None:
            slot.limiter.take()
        return None

    async def _take_quota(self, slot: Slot) -> bool:
        assert slot.quota is not None
        try:
            taken = await slot.quota.take()
        except StoreUnavailable as exc:
            log.warning("provider %s: cannot reserve from its daily quota: %s", slot.name, exc)
            return False
        if not taken and slot._quota_reported != (day := utc_day(self._clock())):
            slot._quota_reported = day
            log.warning("provider %s: daily quota of %d used up", slot.name, slot.quota.quota)
            await self._event(slot.name, "quota_exhausted", quota=slot.quota.quota)
        return taken

    def send_budget(self, seconds: float) -> float:
        """Sends the usable providers can take within `seconds` (inf: no limit applies).

        Only rate limits and quotas cap it. With no usable provider at all
        (disabled, paused, breaker open) it is unlimited too: messages should
        then be claimed and deferred with a visible reason, not left unseen.
        """
        now = self._clock()
        total, usable = 0.0, False
        for slot in self.slots.values():
            if not slot.enabled or now < slot.paused_until:
                continue
            if slot.breaker.state(now) is BreakerState.OPEN:
                continue
            usable = True
            budget = math.inf
            if slot.limiter is not None:
                budget = slot.limiter.budget(seconds)
            if slot.quota is not None:
                budget = min(budget, slot.quota.budget())
            total += budget
        return total if usable else math.inf

    def set_workers(self, workers: int) -> None:
        """Split every rate limit between this many live worker processes."""
        for slot in self.slots.values():
            if slot.limiter is not None:
                slot.limiter.set_workers(workers)

    async def refresh(self) -> None:
        """Adopt the operator's switches and breaker changes other processes stored."""
        self.tenants = {t.id: t for t in await self._store.list_tenants()}
        states = await self._store.provider_states()
        for name, slot in self.slots.items():
            state = states.get(name)
            if state is None:
                continue
            slot.enabled = slot.settings.enabled if state.enabled is None else state.enabled
            slot.provider.simulated_failure = SimulatedFailure(state.simulated_failure)
            slot.paused_until = max(slot.paused_until, _epoch(state.paused_until))
            slot.probed_at = max(slot.probed_at, _epoch(state.probed_at))
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
        wait = retry_after if retry_after is not None else DEFAULT_PAUSE_SECONDS
        until = self._clock() + wait
        if until > slot.paused_until:
            new_pause = slot.paused_until <= self._clock()
            slot.paused_until = until
            await self._write(slot.name, paused_until=_datetime(until))
            if new_pause:
                log.warning("provider %s: paused for %.1fs: %s", slot.name, wait, error)
                await self._event(slot.name, "paused", seconds=round(wait, 3), error=error.detail)
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
        cooldown = slot.settings.breaker_cooldown_seconds
        if state is BreakerState.OPEN:
            log.warning(
                "provider %s: breaker opened (cool-down %.0fs): %s", slot.name, cooldown, error
            )
            detail: dict[str, Any] = {"cooldown_seconds": cooldown}
            if error is not None:
                detail["error"] = error.detail
            await self._event(slot.name, "breaker_opened", **detail)
        else:
            log.info("provider %s: breaker closed, the probe succeeded", slot.name)
            await self._event(slot.name, "breaker_closed")
        await self._write(
            slot.name,
            breaker_state=state.value,
            breaker_changed_at=_datetime(slot.breaker.changed_at),
        )

    # --- active health probes ----------------------------------------------------

    async def probe_due(self) -> None:
        """Probe the providers whose turn it is (one process per interval takes each).

        The turn is claimed in the store, but only once the last probe this
        process knows of (from `refresh`) is an interval old: no write per
        provider per second while nothing is due.
        """
        now = self._clock()
        for slot in self.slots.values():
            every = slot.settings.health_probe_seconds
            if every <= 0 or not slot.enabled or now < slot.probed_at + every:
                continue
            try:
                if not await self._store.claim_probe(slot.name, every_seconds=every):
                    continue
            except StoreUnavailable:
                continue
            slot.probed_at = now
            await self._probe(slot)

    async def _probe(self, slot: Slot) -> None:
        """Make the provider's cheap authenticated call; act on what it says."""
        try:
            await slot.provider.probe()
        except NotImplementedError:
            return
        except ProviderError as error:
            log.warning("provider %s: health probe failed: %s", slot.name, error)
            await self._write(slot.name, probe_error=error.detail)
            await self._event(slot.name, "probe_failed", error=error.detail)
            if isinstance(error, ProviderAuthError):
                await self.refused_credentials(slot, error)
            else:
                await self.failed(slot, error)
            return
        await self._write(slot.name, probe_error=None)

    # --- bookkeeping -------------------------------------------------------------

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

    async def _event(self, name: str, kind: str, **detail: Any) -> None:
        self._metrics.provider_events.labels(name, kind).inc()
        try:
            await self._store.provider_event(name, kind, **detail)
        except StoreUnavailable as exc:
            log.warning("provider %s: could not record %s: %s", name, kind, exc)

    async def close(self) -> None:
        for slot in self.slots.values():
            if slot.quota is not None:
                try:
                    await slot.quota.release()
                except StoreUnavailable as exc:
                    log.warning("provider %s: could not give back quota: %s", slot.name, exc)
            await slot.provider.close()
