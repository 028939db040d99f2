"""Who is calling, and may they: bearer keys, their tenant, scopes and the tenant's rate limit.

A key is accepted only in the `Authorization: Bearer <key>` header, never
in a query string, cookie or body (those end up in logs and histories).
Each request would otherwise cost a database read; a key found (with its
tenant) or not found is remembered for a few seconds, so a revocation or a
disabled tenant takes effect within `CACHE_SECONDS` in every process, and
at once in the process that made the change (`forget`).

The checks run in this order: a known key (`401 unauthorized`), an enabled
tenant (`403 tenant_disabled`), the route's scope (`403 forbidden`), the
tenant's rate limit (`429 rate_limited`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from starlette.requests import Request

from mailgate.api.ratelimit import TenantRateLimiter
from mailgate.errors import Forbidden, TenantDisabled, Unauthorized
from mailgate.store import ApiKey, Scope, Store, Tenant
from mailgate.store.audit import Actor

CACHE_SECONDS = 5.0
UNKNOWN_CACHE_SECONDS = 1.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    """The key a request came with, and its tenant."""

    key: ApiKey
    tenant: Tenant

    @property
    def actor(self) -> Actor:
        return Actor(key_id=self.key.id, tenant_id=self.tenant.id)

    @property
    def is_admin(self) -> bool:
        return self.key.is_admin

    def scope_of(self) -> str | None:
        """The tenant a read or change of one object is confined to (None: an admin, any)."""
        return None if self.is_admin else self.tenant.id


@dataclass(frozen=True, slots=True)
class Requirement:
    """A route's dependency: a valid key holding `scope` (None: any valid key).

    `create_app` finds it in each route's dependencies, so no route under
    `/v1` can exist without saying who may call it.
    """

    guard: Guard
    scope: Scope | None

    async def __call__(self, request: Request) -> Caller:
        return await self.guard.check(request, self.scope)


class Guard:
    def __init__(self, store: Store, *, limiter: TenantRateLimiter | None = None) -> None:
        self._store = store
        self._limiter = limiter or TenantRateLimiter(store)
        self._cache: dict[str, tuple[tuple[ApiKey, Tenant] | None, float]] = {}

    def require(self, scope: Scope | None) -> Requirement:
        return Requirement(self, scope)

    async def check(self, request: Request, scope: Scope | None) -> Caller:
        """The caller, if its key, tenant, scope and rate limit all let the request through."""
        secret = bearer_secret(request.headers.get("authorization", ""))
        caller = await self.identify(secret, scope, field="Authorization")
        await self.limit(caller)
        return caller

    async def identify(
        self, secret: str, scope: Scope | None, *, field: str | None = None
    ) -> Caller:
        """The key's caller, if the key is known, its tenant enabled and it holds `scope`.

        Every way in that takes a key (the API's header, SMTP's AUTH) asks this,
        through the same cache; `field` names where the key came from in errors.
        """
        found = await self._lookup(secret) if secret else None
        if found is None:
            raise Unauthorized("unknown or revoked API key", field=field)
        key, tenant = found
        if not tenant.enabled:
            raise TenantDisabled(f"tenant {tenant.id} is disabled", field=field)
        if scope is not None and not key.allows(scope):
            raise Forbidden(
                f"this key lacks the '{scope}' scope (it has: {', '.join(key.scopes)})",
                field=field,
            )
        return Caller(key, tenant)

    async def limit(self, caller: Caller) -> None:
        """Count one request against the caller's tenant's rate limit (`429` over it)."""
        await self._limiter.check(caller.tenant)

    def forget(self) -> None:
        """Drop every cached key: a change made in this process takes effect at once."""
        self._cache.clear()

    async def _lookup(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = await self._store.find_key(secret)
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        ttl = CACHE_SECONDS if found is not None else UNKNOWN_CACHE_SECONDS
        self._cache[digest] = (found, now + ttl)
        return found


def bearer_secret(header: str) -> str:
    """The key in an `Authorization: Bearer <key>` header's value (401 for anything else)."""
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer <key>'", field="Authorization"
        )
    return secret
