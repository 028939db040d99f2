"""The store: tables, migrations and the queue operations."""

from mailgate.store.keys import ApiKey
from mailgate.store.providers import ProviderEvent, ProviderState
from mailgate.store.records import (
    Accepted,
    AttemptRecord,
    AttemptView,
    Claimed,
    EventRecord,
    EventView,
    Finish,
    MessageView,
    NewMessage,
)
from mailgate.store.store import Store, utcnow

__all__ = [
    "Accepted",
    "ApiKey",
    "AttemptRecord",
    "AttemptView",
    "Claimed",
    "EventRecord",
    "EventView",
    "Finish",
    "MessageView",
    "NewMessage",
    "ProviderEvent",
    "ProviderState",
    "Store",
    "utcnow",
]
