"""Each provider's event webhook: verify its signature, normalise its events.

One module per provider type, each with one `EventWebhook` subclass
(`mailgate.events.inbound` holds the contract). SMTP relays have no event
webhook: what a relay learns after it took a message comes back as a
bounce email, which mailgate does not receive.
"""

from __future__ import annotations

import importlib
from typing import Any

from mailgate.config import ProviderSettings
from mailgate.events.inbound import EventWebhook

WEBHOOKS: dict[str, str] = {
    "sendgrid": "SendGridWebhook",
    "mailgun": "MailgunWebhook",
    "ses": "SesWebhook",
    "postmark": "PostmarkWebhook",
    "resend": "ResendWebhook",
    "brevo": "BrevoWebhook",
    "mailjet": "MailjetWebhook",
    "sparkpost": "SparkPostWebhook",
    "mandrill": "MandrillWebhook",
}
"""Provider type → the class in `mailgate.providers.webhooks.<type>`."""


def webhook_for(settings: ProviderSettings, **options: Any) -> EventWebhook | None:
    """The event webhook of a configured provider; None for a type without one (SMTP)."""
    class_name = WEBHOOKS.get(settings.type)
    if class_name is None:
        return None
    module = importlib.import_module(f"{__name__}.{settings.type}")
    webhook: EventWebhook = getattr(module, class_name)(settings, **options)
    return webhook
