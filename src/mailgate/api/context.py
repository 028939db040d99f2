"""What the routes share: settings, store, metrics, the guard and the accept path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from mailgate.api.accept import Acceptor
from mailgate.api.auth import Caller, Guard
from mailgate.config import Settings
from mailgate.errors import Forbidden, NotFound
from mailgate.message import new_id
from mailgate.metrics import Metrics
from mailgate.store import Store, utcnow


async def _nothing() -> None:
    return None


EVERY_TENANT = "*"


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    metrics: Metrics
    guard: Guard
    acceptor: Acceptor
    on_state_change: Callable[[], Awaitable[None]] = _nothing
    """Called after an operator changes a provider or a tenant, so a worker in this process
    sees it at once (others read the store every second)."""
    node_id: str = field(default_factory=lambda: new_id("api"))
    started_at: datetime = field(default_factory=utcnow)

    @property
    def provider_names(self) -> set[str]:
        return {p.name for p in self.settings.providers}

    async def listed_tenant(self, caller: Caller, tenant: str | None) -> str | None:
        """Whose objects a list shows: the caller's own tenant unless an admin names
        another with `?tenant=` (`*`: every tenant, returned as None)."""
        if tenant is None or tenant == caller.tenant.id:
            return caller.tenant.id
        if not caller.is_admin:
            raise Forbidden("only an admin key may list another tenant's", field="tenant")
        if tenant == EVERY_TENANT:
            return None
        try:
            return (await self.store.get_tenant(tenant)).id
        except NotFound:
            raise NotFound(f"no tenant {tenant}", field="tenant") from None
