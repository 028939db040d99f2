"""Delivery: the worker loop, the router, circuit breakers and backoff."""

from mailgate.delivery.backoff import BackoffPolicy
from mailgate.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from mailgate.delivery.pool import ProviderPool, Slot
from mailgate.delivery.router import Router
from mailgate.delivery.worker import Worker

__all__ = [
    "BackoffPolicy",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "ProviderPool",
    "Router",
    "Slot",
    "Worker",
]
