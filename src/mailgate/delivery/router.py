"""One delivery round for one message: try providers in order until one takes it.

This is DESIGN.md's outcome table in code:

| the provider call raised | attempt outcome        | then                                  |
|--------------------------|------------------------|---------------------------------------|
| nothing                  | `sent`                 | `sent`                                |
| `ProviderUnavailable`    | `transient`/`ambiguous`| count against its breaker, try next   |
| `ProviderThrottled`      | `throttled`            | pause it until Retry-After, try next  |
| `ProviderAuthError`      | `auth`                 | open its breaker, try next            |
| `MessageRejected`        | `permanent`            | `failed` at once, nobody else         |

When nobody took it, the message is queued again with exponential backoff
and jitter, until `max_age_seconds` after it became due; then it `expired`.
A message that names its `provider` is tried there only; a tenant that
names its `providers` has its mail tried on those only. A disabled tenant's
message is not sent: it waits (`TENANT_RECHECK_SECONDS`, then again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mailgate.delivery.backoff import BackoffPolicy
from mailgate.delivery.pool import ProviderPool, Slot
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email, EventType, Outcome, Status, rfc3339
from mailgate.metrics import Metrics
from mailgate.store import AttemptRecord, Claimed, EventRecord, Finish

log = logging.getLogger(__name__)

TENANT_RECHECK_SECONDS = 2.0
"""How soon a message of a disabled tenant is looked at again.

Enabling a tenant releases its held mail at once; this is for the few
messages a worker claimed while its view (refreshed every second) was
behind, so it stays just above the refresh interval.
"""


def outcome_of(error: ProviderError) -> Outcome:
    if isinstance(error, MessageRejected):
        return Outcome.PERMANENT
    if isinstance(error, ProviderThrottled):
        return Outcome.THROTTLED
    if isinstance(error, ProviderAuthError):
        return Outcome.AUTH
    if isinstance(error, ProviderUnavailable) and error.ambiguous:
        return Outcome.AMBIGUOUS
    return Outcome.TRANSIENT


@dataclass
class _Round:
    message: Claimed
    owner: str
    attempts: list[AttemptRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    last_error: str | None = None
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None
    """The provider that failed last in this round (the next try is a failover)."""
    wait: float | None = None
    """When nobody was tried: how soon the first provider frees up."""
    suppressed: tuple[str, ...] = ()
    """Recipients dropped before the send: on the tenant's suppression list."""

    def event(self, kind: EventType, **detail: object) -> None:
        self.events.append(EventRecord(kind, datetime.now(UTC), detail))

    def finish(self, status: Status, **fields: Any) -> Finish:
        return Finish(
            message_id=self.message.id,
            lease_owner=self.owner,
            status=status,
            rounds=self.message.rounds + 1,
            attempts=tuple(self.attempts),
            events=tuple(self.events),
            suppressed=self.suppressed,
            tenant_id=self.message.tenant_id,
            **fields,
        )


def without(email: Email, suppressed: frozenset[str]) -> tuple[Email | None, tuple[str, ...]]:
    """The email without its suppressed recipients (None: nobody left), and who was dropped.

    When every `to` is dropped, the `cc` (else the first `bcc`) take its place:
    providers want at least one `to`.
    """

    def kept(addresses: tuple[Address, ...]) -> tuple[Address, ...]:
        return tuple(a for a in addresses if a.email.lower() not in suppressed)

    to, cc, bcc = kept(email.to), kept(email.cc), kept(email.bcc)
    dropped = tuple(
        dict.fromkeys(
            a.email.lower()
            for a in (*email.to, *email.cc, *email.bcc)
            if a.email.lower() in suppressed
        )
    )
    if not to and cc:
        to, cc = cc, ()
    elif not to and bcc:
        to, bcc = bcc[:1], bcc[1:]
    if not to:
        return None, dropped
    return replace(email, to=to, cc=cc, bcc=bcc), dropped


class Router:
    def __init__(
        self,
        pool: ProviderPool,
        *,
        backoff: BackoffPolicy,
        max_age_seconds: float,
        metrics: Metrics,
        max_inline_wait: float = 1.0,
    ) -> None:
        self._pool = pool
        self._max_inline_wait = max_inline_wait
        self._backoff = backoff
        self._max_age = timedelta(seconds=max_age_seconds)
        self._metrics = metrics

    async def deliver(self, message: Claimed, *, owner: str) -> Finish:
        """Run one round and say how it ended (the caller stores it)."""
        round_ = _Round(message, owner)
        if not self._pool.tenant_enabled(message.tenant_id):
            return self._finish_held(round_)
        if message.suppressed:
            email, dropped = without(message.email, message.suppressed)
            round_.suppressed = dropped
            for address in dropped:
                round_.event(EventType.SUPPRESSED, recipient=address)
            if email is None:
                error = "suppressed: every recipient is on the tenant's suppression list"
                round_.event(EventType.FAILED, reason=error, code="suppressed")
                self._metrics.failed.labels("suppressed").inc()
                log.info("message %s: not sent, every recipient is suppressed", message.id)
                return round_.finish(Status.FAILED, last_error=error)
            message = replace(message, email=email)
            round_.message = message
        candidates = self._pool.ordered(message.forced_provider, message.tenant_id)
        if message.forced_provider is not None and not candidates:
            forced = message.forced_provider
            allowed = self._pool.allowed(message.tenant_id)
            error = f"provider {forced!r} is not configured"
            if forced in self._pool.slots and allowed is not None:
                error = f"provider {forced!r} is not one the tenant may use ({', '.join(allowed)})"
            return self._finish_failed(round_, Outcome.PERMANENT, error)
        if not candidates:
            names = ", ".join(self._pool.allowed(message.tenant_id) or ())
            round_.skipped.append(f"none of the tenant's providers ({names}) is configured")
        # Providers that cannot take the message right now (rate limit, pause,
        # open breaker) are passed over for the next; when every one left is
        # only briefly unavailable, the round waits for the first to free up.
        waited = 0.0
        while candidates:
            waits: list[float] = []
            round_.skipped.clear()
            for slot in list(candidates):
                unavailable = await self._pool.acquire(slot)
                if unavailable is not None:
                    round_.skipped.append(f"{slot.name}: {unavailable}")
                    if unavailable.wait is None:
                        candidates.remove(slot)
                    else:
                        waits.append(unavailable.wait)
                    continue
                candidates.remove(slot)
                finish = await self._try(round_, slot)
                if finish is not None:
                    return finish
            if not candidates or not waits:
                break
            wait = min(waits)
            if waited + wait > self._max_inline_wait:
                round_.wait = wait
                break
            await asyncio.sleep(wait)
            waited += wait
        return self._finish_later(round_)

    async def _try(self, round_: _Round, slot: Slot) -> Finish | None:
        """One provider call; a Finish when the round is over, None to try the next."""
        message = round_.message
        if round_.failed is not None:
            failed = round_.failed
            round_.event(
                EventType.FAILOVER, **{"from": failed, "to": slot.name, "reason": round_.last_error}
            )
            self._metrics.failovers.labels(failed).inc()
            log.info(
                "message %s: failover %s -> %s (%s)",
                message.id,
                failed,
                slot.name,
                round_.last_error,
            )
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            result = await slot.provider.send(message.id, message.email)
        except ProviderError as error:
            elapsed = time.perf_counter() - t0
            self._attempt(round_, slot, started, elapsed, outcome_of(error), error)
            round_.last_error = str(error)
            if isinstance(error, MessageRejected):
                await self._pool.succeeded(slot)  # the provider works; the message is bad
                return self._finish_failed(round_, Outcome.PERMANENT, str(error))
            if isinstance(error, ProviderThrottled):
                await self._pool.throttled(slot, error, error.retry_after)
            elif isinstance(error, ProviderAuthError):
                await self._pool.refused_credentials(slot, error)
            else:
                await self._pool.failed(slot, error)
            round_.failed = slot.name
            return None
        elapsed = time.perf_counter() - t0
        self._attempt(round_, slot, started, elapsed, Outcome.SENT, None)
        await self._pool.succeeded(slot)
        round_.event(
            EventType.SENT, provider=slot.name, provider_message_id=result.provider_message_id
        )
        self._metrics.sent.labels(slot.name).inc()
        return round_.finish(
            Status.SENT, provider=slot.name, provider_message_id=result.provider_message_id
        )

    def _attempt(
        self,
        round_: _Round,
        slot: Slot,
        started: datetime,
        elapsed: float,
        outcome: Outcome,
        error: ProviderError | None,
    ) -> None:
        self._metrics.attempts.labels(slot.name, outcome.value).inc()
        self._metrics.send_seconds.labels(slot.name).observe(elapsed)
        round_.attempts.append(
            AttemptRecord(
                provider=slot.name,
                started_at=started,
                duration_ms=round(elapsed * 1000),
                outcome=outcome,
                status_code=error.status_code if error is not None else None,
                error=error.detail if error is not None else None,
            )
        )
        if outcome is not Outcome.SENT:
            round_.event(
                EventType.ATTEMPT,
                provider=slot.name,
                outcome=outcome.value,
                error=error.detail if error is not None else None,
            )

    def _finish_failed(self, round_: _Round, outcome: Outcome, error: str) -> Finish:
        round_.event(EventType.FAILED, reason=error)
        self._metrics.failed.labels(outcome.value).inc()
        log.warning("message %s: failed: %s", round_.message.id, error)
        return round_.finish(Status.FAILED, last_error=error)

    def _finish_held(self, round_: _Round) -> Finish:
        """The tenant is disabled: the message waits, and this round does not count."""
        reason = "the tenant is disabled"
        next_at = datetime.now(UTC) + timedelta(seconds=TENANT_RECHECK_SECONDS)
        round_.event(EventType.DEFERRED, next_attempt_at=rfc3339(next_at), reason=reason)
        finish = round_.finish(Status.QUEUED, last_error=reason, next_attempt_at=next_at)
        return replace(finish, rounds=round_.message.rounds)

    def _finish_later(self, round_: _Round) -> Finish:
        message = round_.message
        now = datetime.now(UTC)
        deadline = message.window_start + self._max_age
        if not round_.attempts:
            reason = "no provider available: " + ("; ".join(round_.skipped) or "none configured")
        else:
            reason = round_.last_error or "every provider failed"
        if now >= deadline:
            rounds = message.rounds + 1
            round_.event(EventType.EXPIRED, reason=reason, rounds=rounds)
            self._metrics.failed.labels("expired").inc()
            log.warning("message %s: expired after %d rounds: %s", message.id, rounds, reason)
            return round_.finish(Status.FAILED, last_error=f"expired: {reason}")
        if not round_.attempts and round_.wait is not None:
            # Nobody failed: providers are only busy (rate limit, pause, breaker
            # cool-down). Come back when the first frees up, with no backoff.
            delay, rounds = round_.wait, message.rounds
        else:
            rounds = message.rounds + 1
            delay = self._backoff.delay(rounds)
        next_at = min(now + timedelta(seconds=delay), deadline)
        round_.event(EventType.DEFERRED, next_attempt_at=rfc3339(next_at), reason=reason)
        self._metrics.deferred.inc()
        finish = round_.finish(Status.QUEUED, last_error=reason, next_attempt_at=next_at)
        return replace(finish, rounds=rounds)
