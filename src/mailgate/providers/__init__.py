"""Provider adapters: one module per provider behind `base.Provider`."""

from __future__ import annotations

from mailgate.config import MailgunSettings, ProviderSettings, SendGridSettings
from mailgate.providers.base import (
    HttpProvider,
    HttpRequest,
    HttpResponse,
    Provider,
    SendResult,
    SimulatedFailure,
)
from mailgate.providers.mailgun import MailgunProvider
from mailgate.providers.sendgrid import SendGridProvider

__all__ = [
    "HttpProvider",
    "HttpRequest",
    "HttpResponse",
    "MailgunProvider",
    "Provider",
    "SendGridProvider",
    "SendResult",
    "SimulatedFailure",
    "build_provider",
]


def build_provider(settings: ProviderSettings, *, timeout: float, max_connections: int) -> Provider:
    """The adapter for one `[[providers]]` entry."""
    if isinstance(settings, SendGridSettings):
        return SendGridProvider(settings, timeout=timeout, max_connections=max_connections)
    if isinstance(settings, MailgunSettings):
        return MailgunProvider(settings, timeout=timeout, max_connections=max_connections)
    raise TypeError(f"no adapter for provider type {settings.type!r}")
