"""The store: tables, migrations and the queue operations."""

from mailgate.store.audit import CLI, Actor, AuditRecord, Change
from mailgate.store.keys import EVERY_SCOPE, ApiKey, Scope
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
from mailgate.store.store import Store, utc_day, utcnow
from mailgate.store.tables import DEFAULT_TENANT
from mailgate.store.tenants import Tenant

__all__ = [
    "CLI",
    "DEFAULT_TENANT",
    "EVERY_SCOPE",
    "Accepted",
    "Actor",
    "ApiKey",
    "AttemptRecord",
    "AttemptView",
    "AuditRecord",
    "Change",
    "Claimed",
    "EventRecord",
    "EventView",
    "Finish",
    "MessageView",
    "NewMessage",
    "ProviderEvent",
    "ProviderState",
    "Scope",
    "Store",
    "Tenant",
    "utc_day",
    "utcnow",
]
