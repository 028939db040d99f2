"""Brevo (formerly Sendinblue) transactional email (`POST /v3/smtp/email`, JSON, `api-key`).

Our message id travels three ways: as Brevo's idempotency key
(`headers.idempotencyKey`: a repeat within 30 minutes is not sent again, so
an ambiguous attempt retried here cannot deliver twice), inside the
`X-Mailin-custom` header with the metadata (`mailgate_id`; Brevo returns
that header in every webhook event), and as the `X-Mailgate-Id` header.
The provider's id is the response's `messageId`, kept with its angle
brackets because Brevo's webhooks quote it that way (`message-id`).

Quirks handled here: Brevo silently drops a display name that mixes
non-ASCII characters with RFC 5322 specials (and sends non-ASCII reply-to
names as raw 8-bit), so such names go out RFC 2047-encoded. Account states
that only a person can fix (`unauthorized`, `permission_denied`,
`not_enough_credits`, `account_under_validation`; HTTP 401/402/403) are
`ProviderAuthError` whatever the status, and a 429's wait comes from
`x-sib-ratelimit-reset` (seconds), else `Retry-After`.
"""

from __future__ import annotations

import json
from email.charset import Charset
from typing import Any

from mailgate.config import BrevoSettings
from mailgate.errors import ProviderAuthError, ProviderError
from mailgate.message import Address, Email
from mailgate.providers.base import (
    HttpProvider,
    HttpRequest,
    HttpResponse,
    SendResult,
    parse_retry_after,
    seconds_header,
)

METADATA_HEADER = "X-Mailin-custom"
"""Brevo's one header for custom data; it comes back verbatim in webhook events."""
IDEMPOTENCY_KEY = "idempotencyKey"
"""Not a mail header: Brevo reads it from `headers` and sends a repeat only once."""

# Error codes about the account, not the message: another provider can send it.
_ACCOUNT_CODES = frozenset(
    {
        "unauthorized",
        "permission_denied",
        "reseller_permission_denied",
        "not_enough_credits",
        "account_under_validation",
    }
)
_SPECIALS = frozenset('()<>[]:;@\\,."')
_UTF8 = Charset("utf-8")


def _name(name: str, *, always_encode: bool = False) -> str:
    """The display name as Brevo keeps it: RFC 2047 where Brevo would mangle it."""
    if name.isascii():
        return name
    if always_encode or any(c in _SPECIALS for c in name):
        return _UTF8.header_encode(name)
    return name


def _address(address: Address, *, reply_to: bool = False) -> dict[str, str]:
    if not address.name:
        return {"email": address.email}
    return {"email": address.email, "name": _name(address.name, always_encode=reply_to)}


class BrevoProvider(HttpProvider):
    type = "brevo"

    def __init__(
        self, settings: BrevoSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self._headers = {
            "api-key": settings.api_key.get_secret_value(),
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        body: dict[str, Any] = {
            "sender": _address(email.sender),
            "to": [_address(a) for a in email.to],
            "subject": email.subject,
            "headers": {
                **email.headers,
                "X-Mailgate-Id": message_id,
                METADATA_HEADER: json.dumps(
                    {**email.metadata, "mailgate_id": message_id}, separators=(",", ":")
                ),
                IDEMPOTENCY_KEY: message_id,
            },
        }
        if email.cc:
            body["cc"] = [_address(a) for a in email.cc]
        if email.bcc:
            body["bcc"] = [_address(a) for a in email.bcc]
        if email.reply_to:
            # Brevo takes one reply-to address; the others cannot be carried.
            body["replyTo"] = _address(email.reply_to[0], reply_to=True)
        if email.text is not None:
            body["textContent"] = email.text
        if email.html is not None:
            body["htmlContent"] = email.html
        if email.tags:
            body["tags"] = list(email.tags)
        if email.attachments:
            # Brevo has no content-type field: it takes the type from the name's extension.
            body["attachment"] = [
                {"name": a.filename, "content": a.content} for a in email.attachments
            ]
        return HttpRequest(
            "POST", f"{self.base_url}/v3/smtp/email", headers=self._headers, json=body
        )

    def probe_request(self) -> HttpRequest:
        """The account: cheap, and a bad key (401) or a blocked account (403) shows."""
        return HttpRequest("GET", f"{self.base_url}/v3/account", headers=self._headers)

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        if not isinstance(data, dict) or not data.get("messageId"):
            raise self.not_a_success(response, "a messageId")
        return SendResult(provider_message_id=str(data["messageId"]))

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict) and (data.get("message") or data.get("code")):
            code, message = data.get("code"), str(data.get("message") or "")
            return f"{code}: {message}" if code else message
        return super().describe_error(response)

    def classify_error(self, response: HttpResponse) -> ProviderError:
        status, detail = response.status, self.describe_error(response)
        data = response.json()
        code = data.get("code") if isinstance(data, dict) else None
        # 402 (no credits) and the account codes need a person, like a bad key:
        # open the breaker at once and send elsewhere, whatever status carries them.
        if status in (401, 402, 403) or code in _ACCOUNT_CODES:
            return ProviderAuthError(self.name, detail, status_code=status)
        return super().classify_error(response)

    def retry_after(self, response: HttpResponse) -> float | None:
        """Brevo's `x-sib-ratelimit-reset` (seconds left), else `Retry-After`."""
        reset = seconds_header(response.headers, "x-sib-ratelimit-reset")
        return reset if reset is not None else parse_retry_after(response.headers)
