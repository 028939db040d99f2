"""Delivering the outbox to the tenants' endpoints: signed, retried, in order per message.

Each delivery is signed the Standard Webhooks way: `webhook-id` (the
event's id, the same on every try, for the receiver to dedupe),
`webhook-timestamp` (Unix seconds) and `webhook-signature` =
`v1,` + base64 HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed with the
base64 part of the endpoint's `whsec_` secret. A 2xx within
`[webhooks] timeout_seconds` is a success; anything else is tried again
after a growing delay (`retry_initial_seconds`, three times longer each
time, at most `retry_max_seconds`) until `max_age_seconds` after the
event, when the delivery is `failed` (it can be retried by hand). An
endpoint whose every try failed for `disable_after_seconds` is disabled.

With `block_private_addresses`, an endpoint whose host is, or resolves to,
a loopback, private, link-local or otherwise non-public address is refused
here too, at connection time (the resolver filters what DNS answers, so a
name that changes its answer after the endpoint was created cannot reach
inside).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import UTC, datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from mailgate.config import Settings
from mailgate.errors import StoreUnavailable
from mailgate.metrics import Metrics
from mailgate.store import Store
from mailgate.store.webhooks import Due, Outcome, Policy
from mailgate.streams import read_at_most

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 300


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for this body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def is_public(address: str) -> bool:
    """Whether an IP address is on the public internet (not loopback, private, link-local...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class BlockedAddress(OSError):
    """The endpoint's host is, or resolves only to, a non-public address."""


class PublicOnlyResolver(AbstractResolver):
    """DNS answers with every non-public address taken out."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public(r["host"])]
        if not public:
            raise BlockedAddress(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


async def check_endpoint(url: str, *, block_private: bool) -> None:
    """Refuse an endpoint URL that cannot be used (raises ValueError saying why)."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("an endpoint is an http:// or https:// URL with a host")
    if parsed.user is not None or parsed.password is not None:
        raise ValueError("put no credentials in the URL; check the signature instead")
    if not block_private:
        return
    host = parsed.host
    if _is_literal(host):
        if not is_public(host):
            raise ValueError(f"{host} is not a public address (webhooks.block_private_addresses)")
        return
    try:
        await PublicOnlyResolver().resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except BlockedAddress as exc:
        raise ValueError(f"{exc} (webhooks.block_private_addresses)") from None
    except OSError as exc:
        raise ValueError(f"{host} does not resolve: {exc}") from None


class WebhookSender:
    """Claims due deliveries, posts them, stores how each try went."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, *, owner: str) -> None:
        self.settings = settings.webhooks
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.poll_seconds = settings.delivery.poll_interval_seconds
        self.lease_seconds = max(settings.delivery.lease_seconds, self.settings.timeout_seconds * 3)
        self.policy = Policy(
            initial=self.settings.retry_initial_seconds,
            maximum=self.settings.retry_max_seconds,
            max_age=self.settings.max_age_seconds,
            disable_after=self.settings.disable_after_seconds,
        )
        self._batch = max(1, self.settings.concurrency // 4)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._done: list[Outcome] = []
        self._session: aiohttp.ClientSession | None = None

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = PublicOnlyResolver() if self.settings.block_private_addresses else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.concurrency, resolver=resolver),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": "mailgate-webhooks"},
            )
        return self._session

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                await self._flush()
                free = self.settings.concurrency - len(self._inflight)
                claimed: list[Due] = []
                # Claim in batches: a claim per freed slot would cost a query each.
                if free >= self._batch or (free > 0 and not self._inflight):
                    try:
                        claimed = await self.store.claim_webhook_deliveries(
                            self.owner, limit=free, lease_seconds=self.lease_seconds
                        )
                    except StoreUnavailable as exc:
                        log.warning("webhooks: cannot claim deliveries: %s", exc)
                for due in claimed:
                    task = asyncio.create_task(self._deliver(due))
                    self._inflight.add(task)
                    task.add_done_callback(self._finished)
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)  # more may be due: go round at once
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()
        finally:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await self._flush()
            if self._session is not None:
                await self._session.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        # The wake-up comes after the slot is free, so the loop sees it free.
        self._inflight.discard(task)
        self._wake.set()

    async def _flush(self) -> None:
        if not self._done:
            return
        done, self._done = self._done, []
        try:
            disabled = await self.store.finish_webhook_deliveries(self.owner, done, self.policy)
        except StoreUnavailable:
            self._done = done + self._done  # kept for the next round; the lease covers them
            raise
        for tenant_id, webhook_id, reason in disabled:
            self.metrics.webhooks_disabled.inc()
            log.warning("tenant %s: webhook %s disabled: %s", tenant_id, webhook_id, reason)

    async def _deliver(self, due: Due) -> None:
        body = json.dumps(due.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": due.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(due.secret, due.event_id, timestamp, body),
        }
        started = time.perf_counter()
        at = datetime.now(UTC)
        status: int | None = None
        error: str | None = None
        try:
            if not self.settings.block_private_addresses or _literal_ok(due.url):
                async with self._http().post(due.url, data=body, headers=headers) as response:
                    status = response.status
                    if not 200 <= status < 300:
                        text = (await read_at_most(response.content, MAX_ERROR_CHARS)).decode(
                            "utf-8", "replace"
                        )
                        error = f"HTTP {status}: {text}".strip()
            else:
                error = "the endpoint's address is not public (webhooks.block_private_addresses)"
        except TimeoutError:
            error = f"no answer within {self.settings.timeout_seconds:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        ok = error is None and status is not None
        self.metrics.webhook_tries.labels("ok" if ok else "failed").inc()
        if not ok:
            log.info("webhook %s: delivery %d failed: %s", due.webhook_id, due.id, error)
        self._done.append(
            Outcome(
                delivery_id=due.id,
                webhook_id=due.webhook_id,
                at=at,
                ok=ok,
                status_code=status,
                duration_ms=round((time.perf_counter() - started) * 1000),
                error=error,
            )
        )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _literal_ok(url: str) -> bool:
    """False when the URL's host is a literal non-public IP (names go through the resolver)."""
    host = URL(url).host or ""
    return not _is_literal(host) or is_public(host)
