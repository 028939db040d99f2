"""The worker: claim due messages with a lease, deliver them concurrently, record the end.

Up to `delivery.concurrency` messages are in their provider round at once.
The loop claims ahead: up to one claim batch more than the free slots, so a
slot that frees starts its next message at once, without waiting for a
claim. It claims whenever half a batch is wanted, and otherwise sleeps until
a slot frees, new work is accepted in this process, or the poll interval
passes. A slot frees when the provider has answered: the round's end is
stored after that, its lease still kept, while the next message already
sends (a slow store caps the leases held at twice `concurrency` and a
batch). Messages claimed but not started when the worker stops are handed
back. Beside it:

- a lease keeper pushes the lease of every in-flight message forward, so a
  slow round (several providers timing out) never loses its lease while
  the worker is alive;
- a heartbeat each second says this worker is alive, and watches the
  others': the messages leased to a worker whose heartbeat stopped are
  queued again within seconds (`mailgate.delivery.silence`), and a lease
  that runs out (`lease_seconds`) is the backstop for a worker that never
  beat; either way the lost try is recorded as an `ambiguous` attempt;
- a refresher adopts provider state other processes stored.

A store outage never stops the worker: it backs off and carries on. A
finished round is stored before its slot frees; if that write keeps failing
the lease runs out and the message is delivered again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from mailgate.config import Settings
from mailgate.delivery.backoff import BackoffPolicy
from mailgate.delivery.pool import ProviderPool
from mailgate.delivery.router import Router
from mailgate.delivery.silence import Silence
from mailgate.delivery.webhooks import WebhookSender
from mailgate.errors import StoreUnavailable
from mailgate.message import new_id
from mailgate.metrics import Metrics
from mailgate.store import Claimed, Finish, Store

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
CLAIM_HORIZON_SECONDS = 1.0
"""Under rate limits a worker claims what its providers can take in this long."""
_MAX_STORE_BACKOFF = 5.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pool: ProviderPool,
        metrics: Metrics,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.delivery = settings.delivery
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"
        self.router = Router(
            pool,
            backoff=BackoffPolicy(
                initial=self.delivery.retry_initial_seconds, maximum=self.delivery.retry_max_seconds
            ),
            max_age_seconds=self.delivery.max_age_seconds,
            metrics=metrics,
            max_inline_wait=min(1.0, self.delivery.attempt_timeout_seconds),
        )
        self._ready: deque[Claimed] = deque()
        """Claimed ahead, waiting for a free slot (their leases kept)."""
        self._inflight: dict[str, asyncio.Task[None]] = {}
        """The started rounds, until their end is stored."""
        self._sending = 0
        """Of those, how many are still in their provider round (the slots taken)."""
        self._concurrency = self.delivery.concurrency
        self._batch = min(self.delivery.claim_batch, self._concurrency)
        self._threshold = max(1, self._batch // 2)
        """Claims wait until this many are wanted (fewer under a rate limit's budget)."""
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._started_at = datetime.now(UTC)
        self._silence = Silence()
        store.on_accept(lambda _n: self._wake.set())
        self.webhooks = WebhookSender(settings, store, metrics, owner=self.id)
        """Delivers the outbox to the tenants' endpoints beside the mail."""

    @property
    def inflight(self) -> int:
        """Messages whose lease this worker holds: claimed, sending, or storing their end."""
        return len(self._inflight) + len(self._ready)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; `run` returns once in-flight rounds are stored."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        log.info("worker %s: started (concurrency %d)", self.id, self.delivery.concurrency)
        helpers = [
            self._every(self.delivery.lease_seconds / 3, self._keep_leases),
            self._every(min(self.delivery.lease_seconds / 4, 5.0), self._reclaim),
            self._every(REFRESH_SECONDS, self._beat),
            self._every(REFRESH_SECONDS, self._refresh),
            self._every(REFRESH_SECONDS, self.pool.probe_due),
        ]
        helper_tasks = [asyncio.create_task(h) for h in helpers]
        helper_tasks.append(asyncio.create_task(self.store.listen(self._wake.set)))
        webhooks = asyncio.create_task(self.webhooks.run(), name="webhooks")
        try:
            await self._guarded(self._beat)
            await self._guarded(self._refresh)
            await self._claim_loop()
        finally:
            self.webhooks.stop()
            await self._release_ready()
            if self._inflight:
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await webhooks
            for task in helper_tasks:
                task.cancel()
            await asyncio.gather(*helper_tasks, return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await self.store.node_stopped(self.id)  # others take its rate share at once
            log.info("worker %s: stopped", self.id)

    async def _claim_loop(self) -> None:
        batch, threshold = self._batch, self._threshold
        store_backoff = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            self._start_ready()
            # Under rate limits, claim only what the providers can take soon:
            # the rest stays queued instead of bouncing back as deferrals.
            ahead = self._sending + len(self._ready)
            budget = self.pool.send_budget(CLAIM_HORIZON_SECONDS) - ahead
            want = int(min(self._room(), batch, max(budget, 0.0)))
            if want >= min(threshold, max(budget, 1.0)) and want > 0:
                try:
                    claimed = await self.store.claim(
                        self.id, limit=want, lease_seconds=self.delivery.lease_seconds
                    )
                    store_backoff = 0.0
                except StoreUnavailable as exc:
                    store_backoff = min(_MAX_STORE_BACKOFF, max(0.1, store_backoff * 2))
                    log.warning(
                        "worker %s: cannot claim (%s); again in %.1fs", self.id, exc, store_backoff
                    )
                    await self._sleep(store_backoff)
                    continue
                self._ready.extend(claimed)
                self._start_ready()
                if len(claimed) == want:
                    await asyncio.sleep(0)  # more may be due: let sends start, then claim again
                    continue
            await self._sleep(self.delivery.poll_interval_seconds)

    def _room(self) -> int:
        """How many more messages to claim: up to a batch beyond the free slots, and no
        more than twice `concurrency` and a batch leased in all (rounds waiting for
        their store write hold leases but no slot)."""
        concurrency, batch = self._concurrency, self._batch
        ready = len(self._ready)
        return min(
            concurrency + batch - self._sending - ready,
            2 * concurrency + batch - len(self._inflight) - ready,
        )

    def _start_ready(self) -> None:
        """Start claimed messages in the free slots."""
        while self._ready and self._sending < self._concurrency and not self._stopping.is_set():
            message = self._ready.popleft()
            self._sending += 1
            task = asyncio.create_task(self._deliver(message), name=f"deliver-{message.id}")
            self._inflight[message.id] = task

    async def _release_ready(self) -> None:
        """Hand back what was claimed and never started (stopping): others may send it now."""
        ids = [message.id for message in self._ready]
        self._ready.clear()
        if not ids:
            return
        try:
            await self.store.release(self.id, ids)
        except StoreUnavailable as exc:
            log.warning(
                "worker %s: could not hand back %d claimed messages (%s); their leases run out",
                self.id,
                len(ids),
                exc,
            )

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _deliver(self, message: Claimed) -> None:
        try:
            try:
                finish = await self.router.deliver(message, owner=self.id)
            finally:
                self._slot_freed()
            await self._store_finish(finish)
        except Exception:
            # A bug, not a provider or store problem: keep the worker alive; the
            # lease runs out and another round will try again.
            log.exception("worker %s: message %s: delivery round crashed", self.id, message.id)
        finally:
            del self._inflight[message.id]
            self._wake.set()

    def _slot_freed(self) -> None:
        """A provider round ended: its slot takes the next claimed message (the lease of
        the round just ended is kept until its end is stored)."""
        self._sending -= 1
        self._start_ready()
        if self._room() >= self._threshold:
            self._wake.set()

    async def _store_finish(self, finish: Finish) -> None:
        """Store how the round ended, retrying through a store outage.

        While retrying the lease is kept, so nobody else sends the message. A
        worker told to stop gives up after `lease_seconds`: the lease then runs
        out and the message is delivered again (the lost round is recorded as
        an ambiguous attempt) rather than the process never exiting.
        """
        delay = 0.1
        gave_up_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.store.finish(finish)
                return
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    gave_up_at = gave_up_at or loop.time() + self.delivery.lease_seconds
                    if loop.time() > gave_up_at:
                        log.error(
                            "worker %s: message %s: stopping without storing its %s round: %s",
                            self.id,
                            finish.message_id,
                            finish.status.value,
                            exc,
                        )
                        return
                log.warning(
                    "worker %s: message %s: cannot store the round's end (%s); retrying",
                    self.id,
                    finish.message_id,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(_MAX_STORE_BACKOFF, delay * 2)

    async def _keep_leases(self) -> None:
        ids = [*self._inflight, *(message.id for message in self._ready)]
        if ids:
            await self.store.extend_leases(self.id, ids, lease_seconds=self.delivery.lease_seconds)

    async def _reclaim(self, dead: Sequence[str] = ()) -> None:
        # Our own leases first: after a store outage longer than a lease, our
        # in-flight messages must not look abandoned to our own reclaimer.
        await self._keep_leases()
        if dead:
            log.warning("worker %s: taking back the leases of silent workers %s", self.id, dead)
        reclaimed = await self.store.reclaim_expired(dead)
        if reclaimed:
            self.metrics.reclaimed.inc(len(reclaimed))
            log.warning(
                "worker %s: %d messages had lost their worker mid-send and are queued again: %s",
                self.id,
                len(reclaimed),
                ", ".join(reclaimed[:10]),
            )
            self._wake.set()

    async def _beat(self) -> None:
        """Say we are alive, count who else is, and take back the leases of the dead
        (`mailgate.delivery.silence`). Its own task, so nothing slow delays a heartbeat."""
        await self.store.heartbeat(self.id, "worker", self._started_at)
        self._silence.beat(time.monotonic())
        beats = await self.store.worker_beats(
            within_seconds=self.delivery.lease_seconds + self._silence.dead_after
        )
        recent = datetime.now(UTC) - timedelta(seconds=3 * REFRESH_SECONDS)
        self.pool.set_workers(max(1, sum(1 for seen in beats.values() if seen >= recent)))
        dead = self._silence.observe(beats, time.monotonic(), me=self.id)
        if dead:
            await self._reclaim(dead)

    async def _refresh(self) -> None:
        """Adopt the stored provider state."""
        await self.pool.refresh()

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._guarded(job)

    async def _guarded(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except StoreUnavailable as exc:
            log.warning("worker %s: %s: %s", self.id, job.__name__, exc)
        except Exception:
            log.exception("worker %s: %s failed", self.id, job.__name__)
