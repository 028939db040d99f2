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
A message that names its `provider` is tried there only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
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
from mailgate.message import EventType, Outcome, Status, rfc3339
from mailgate.metrics import Metrics
from mailgate.store import AttemptRecord, Claimed, EventRecord, Finish

log = logging.getLogger(__name__)


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
            **fields,
        )


class Router:
    def __init__(
        self,
        pool: ProviderPool,
        *,
        backoff: BackoffPolicy,
        max_age_seconds: float,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._backoff = backoff
        self._max_age = timedelta(seconds=max_age_seconds)
        self._metrics = metrics

    async def deliver(self, message: Claimed, *, owner: str) -> Finish:
        """Run one round and say how it ended (the caller stores it)."""
        round_ = _Round(message, owner)
        failed_slot: Slot | None = None
        candidates = self._pool.ordered(message.forced_provider)
        if message.forced_provider is not None and not candidates:
            error = f"provider {message.forced_provider!r} is not configured"
            return self._finish_failed(round_, Outcome.PERMANENT, error)
        for slot in candidates:
            reason = slot.unavailable_reason(time.time())
            if reason is not None:
                round_.skipped.append(f"{slot.name}: {reason}")
                continue
            if failed_slot is not None:
                round_.event(
                    EventType.FAILOVER,
                    **{"from": failed_slot.name, "to": slot.name, "reason": round_.last_error},
                )
                self._metrics.failovers.labels(failed_slot.name).inc()
                log.info(
                    "message %s: failover %s -> %s (%s)",
                    message.id,
                    failed_slot.name,
                    slot.name,
                    round_.last_error,
                )
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            try:
                result = await slot.provider.send(message.id, message.email)
            except ProviderError as error:
                elapsed = time.perf_counter() - t0
                outcome = outcome_of(error)
                self._attempt(round_, slot, started, elapsed, outcome, error)
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
                failed_slot = slot
                continue
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
        return self._finish_later(round_)

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

    def _finish_later(self, round_: _Round) -> Finish:
        message = round_.message
        now = datetime.now(UTC)
        rounds = message.rounds + 1
        reason = round_.last_error
        if not round_.attempts:
            reason = "no provider available: " + ("; ".join(round_.skipped) or "none configured")
        deadline = message.window_start + self._max_age
        if now >= deadline:
            round_.event(EventType.EXPIRED, reason=reason, rounds=rounds)
            self._metrics.failed.labels("expired").inc()
            log.warning("message %s: expired after %d rounds: %s", message.id, rounds, reason)
            return round_.finish(Status.FAILED, last_error=f"expired: {reason}")
        next_at = min(now + timedelta(seconds=self._backoff.delay(rounds)), deadline)
        round_.event(EventType.DEFERRED, next_attempt_at=rfc3339(next_at), reason=reason)
        self._metrics.deferred.inc()
        return round_.finish(Status.QUEUED, last_error=reason, next_attempt_at=next_at)
