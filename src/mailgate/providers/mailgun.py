"""Mailgun v3 Messages API (`POST /v3/{domain}/messages`, multipart form, basic auth).

Repeated `to`/`cc`/`bcc` fields, `h:` custom headers, `o:tag` tags, `v:`
custom variables (metadata, and our message id as `v:mailgate_id`, which
come back in webhooks as `user-variables`), attachments as raw file parts.
The provider's id is the response's `id` without its angle brackets (the form
Mailgun's webhooks use).

Quirks handled here: 420 "not allowed to send ... try again after <date>"
is a sending limit (throttled until that date, try the next provider); a 200
whose body is Mailgun's API greeting means a malformed URL, not a send.
"""

from __future__ import annotations

import base64
import re
import time
from email.utils import parsedate_to_datetime

import aiohttp

from mailgate.config import MailgunSettings
from mailgate.errors import ProviderError, ProviderThrottled
from mailgate.message import Email
from mailgate.providers.base import (
    HttpProvider,
    HttpRequest,
    HttpResponse,
    SendResult,
    clamp_wait,
)

_TRY_AGAIN = re.compile(r"try again after (.+)$", re.IGNORECASE)

API_USER = "api"
"""The user name of Mailgun's basic auth; the password is the API key."""
QUEUED = "Queued. Thank you."
"""The `message` of Mailgun's send answer (anymail checks it starts with "Queued")."""
CONTROL_HEADERS = {
    "x-mailgun-tag": "o:tag",
    "x-mailgun-deliver-by": "o:deliverytime",
    "x-mailgun-variables": "variables",
    "x-mailgun-drop-message": "o:testmode",
    "x-mailgun-dkim": "o:dkim",
    "x-mailgun-require-tls": "o:require-tls",
    "x-mailgun-skip-verification": "o:skip-verification",
    "x-mailgun-track": "o:tracking",
    "x-mailgun-track-clicks": "o:tracking-clicks",
    "x-mailgun-track-opens": "o:tracking-opens",
    "x-mailgun-sending-ip": "o:sending-ip",
    "x-mailgun-sending-ip-pool": "o:sending-ip-pool",
    "x-mailgun-recipient-variables": "recipient-variables",
    "x-mailgun-template-name": "template",
    "x-mailgun-template-version": "template",
    "x-mailgun-template-variables": "template",
}
"""Mailgun's control headers (lower-cased; its SMTP way of giving options), each with the
Messages API parameter it stands for (`variables`: the JSON `v:` variables at once)."""


class MailgunProvider(HttpProvider):
    type = "mailgun"

    def __init__(
        self, settings: MailgunSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self.domain = settings.domain
        token = base64.b64encode(f"api:{settings.api_key.get_secret_value()}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        form = aiohttp.FormData(quote_fields=False, charset="utf-8", default_to_multipart=True)
        form.add_field("from", email.sender.formatted())
        for kind, addresses in (("to", email.to), ("cc", email.cc), ("bcc", email.bcc)):
            for address in addresses:
                form.add_field(kind, address.formatted())
        form.add_field("subject", email.subject)
        if email.text is not None:
            form.add_field("text", email.text)
        if email.html is not None:
            form.add_field("html", email.html)
        if email.reply_to:
            form.add_field("h:Reply-To", ", ".join(a.formatted() for a in email.reply_to))
        for name, value in email.headers.items():
            form.add_field(f"h:{name}", value)
        form.add_field("h:X-Mailgate-Id", message_id)
        for tag in email.tags:
            form.add_field("o:tag", tag)
        for key, value in email.metadata.items():
            form.add_field(f"v:{key}", value)
        form.add_field("v:mailgate_id", message_id)
        for attachment in email.attachments:
            form.add_field(
                "attachment",
                attachment.data(),
                filename=attachment.filename,
                content_type=attachment.content_type,
            )
        return HttpRequest(
            "POST", f"{self.base_url}/v3/{self.domain}/messages", headers=self._headers, form=form
        )

    def probe_request(self) -> HttpRequest:
        """The sending domain: a bad key is 401, a wrong domain or region 404."""
        return HttpRequest(
            "GET", f"{self.base_url}/v3/domains/{self.domain}", headers=self._headers
        )

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        if not isinstance(data, dict) or "id" not in data:
            raise self.not_a_success(response, "a message id")
        return SendResult(provider_message_id=str(data["id"]).strip("<>"))

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
        return super().describe_error(response)

    def classify_error(self, response: HttpResponse) -> ProviderError:
        if response.status == 420:
            detail = self.describe_error(response)
            return ProviderThrottled(
                self.name, detail, status_code=420, retry_after=_retry_after_420(detail)
            )
        return super().classify_error(response)


def _retry_after_420(detail: str) -> float | None:
    """Seconds until the "try again after <date>" in a 420's message, if it has one."""
    match = _TRY_AGAIN.search(detail)
    if match is None:
        return None
    try:
        when = parsedate_to_datetime(match.group(1).strip())
    except (TypeError, ValueError):
        return None
    return clamp_wait(when.timestamp() - time.time())
