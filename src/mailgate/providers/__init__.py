"""Provider adapters: one module per provider behind `base.Provider`."""

from __future__ import annotations

from collections.abc import Callable

from mailgate.config import (
    BrevoSettings,
    MailgunSettings,
    MailjetSettings,
    MandrillSettings,
    PostmarkSettings,
    ProviderSettings,
    ResendSettings,
    SendGridSettings,
    SesSettings,
    SmtpSettings,
    SparkPostSettings,
)
from mailgate.providers.base import (
    HttpProvider,
    HttpRequest,
    HttpResponse,
    Provider,
    SendResult,
    SimulatedFailure,
)
from mailgate.providers.brevo import BrevoProvider
from mailgate.providers.mailgun import MailgunProvider
from mailgate.providers.mailjet import MailjetProvider
from mailgate.providers.mandrill import MandrillProvider
from mailgate.providers.postmark import PostmarkProvider
from mailgate.providers.resend import ResendProvider
from mailgate.providers.sendgrid import SendGridProvider
from mailgate.providers.ses import SesProvider
from mailgate.providers.smtp import SmtpProvider
from mailgate.providers.sparkpost import SparkPostProvider

__all__ = [
    "BrevoProvider",
    "HttpProvider",
    "HttpRequest",
    "HttpResponse",
    "MailgunProvider",
    "MailjetProvider",
    "MandrillProvider",
    "PostmarkProvider",
    "Provider",
    "ResendProvider",
    "SendGridProvider",
    "SendResult",
    "SesProvider",
    "SimulatedFailure",
    "SmtpProvider",
    "SparkPostProvider",
    "build_provider",
]


ADAPTERS: dict[type, Callable[..., Provider]] = {
    SendGridSettings: SendGridProvider,
    MailgunSettings: MailgunProvider,
    SesSettings: SesProvider,
    PostmarkSettings: PostmarkProvider,
    ResendSettings: ResendProvider,
    BrevoSettings: BrevoProvider,
    MailjetSettings: MailjetProvider,
    SparkPostSettings: SparkPostProvider,
    MandrillSettings: MandrillProvider,
    SmtpSettings: SmtpProvider,
}
"""The adapter class for each `[[providers]]` type's settings model."""


def build_provider(settings: ProviderSettings, *, timeout: float, max_connections: int) -> Provider:
    """The adapter for one `[[providers]]` entry."""
    adapter = ADAPTERS.get(type(settings))
    if adapter is None:
        raise TypeError(f"no adapter for provider type {settings.type!r}")
    return adapter(settings, timeout=timeout, max_connections=max_connections)
