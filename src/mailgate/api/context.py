"""What the routes share: settings, store, metrics, key checker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from mailgate.api.auth import KeyChecker
from mailgate.config import Settings
from mailgate.message import new_id
from mailgate.metrics import Metrics
from mailgate.store import Store, utcnow


async def _nothing() -> None:
    return None


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    metrics: Metrics
    keys: KeyChecker
    on_provider_change: Callable[[], Awaitable[None]] = _nothing
    """Called after an operator changes a provider, so a worker in this process sees it at once."""
    node_id: str = field(default_factory=lambda: new_id("api"))
    started_at: datetime = field(default_factory=utcnow)

    @property
    def provider_names(self) -> set[str]:
        return {p.name for p in self.settings.providers}
