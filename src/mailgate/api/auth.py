"""Bearer API keys, checked against the store and cached briefly.

Each request would otherwise cost a database read; a key found (or
revoked) is remembered for `CACHE_SECONDS`, so a revocation takes effect
within that time in every process.
"""

from __future__ import annotations

import hashlib
import time

from starlette.requests import Request

from mailgate.errors import Unauthorized
from mailgate.store import ApiKey, Store

CACHE_SECONDS = 5.0
UNKNOWN_CACHE_SECONDS = 1.0
_MAX_ENTRIES = 10_000


class KeyChecker:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}

    async def __call__(self, request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized(
                "send your API key as 'Authorization: Bearer <key>'", field="Authorization"
            )
        key = await self._lookup(secret.strip())
        if key is None:
            raise Unauthorized("unknown or revoked API key", field="Authorization")
        return key

    async def _lookup(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        key = await self._store.find_key(secret)
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        ttl = CACHE_SECONDS if key is not None else UNKNOWN_CACHE_SECONDS
        self._cache[digest] = (key, now + ttl)
        return key
