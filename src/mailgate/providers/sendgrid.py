"""SendGrid v3 Mail Send (`POST /v3/mail/send`, JSON, bearer key).

One personalization carries every recipient; our message id travels as the
custom arg `mailgate_id` (it comes back in every webhook event) and as the
`X-Mailgate-Id` header. The provider's id is the `X-Message-Id` response header.
"""

from __future__ import annotations

from typing import Any

from mailgate.config import SendGridSettings
from mailgate.message import Address, Email
from mailgate.providers.base import HttpProvider, HttpRequest, HttpResponse, SendResult

SEND_PATH = "/v3/mail/send"
MAX_PERSONALIZATIONS = 1000
"""SendGrid's limit per request (and on recipients in all)."""


def error_body(message: str, field: str | None) -> dict[str, Any]:
    """SendGrid's error shape, as `describe_error` reads it and mailgate's drop-in answers."""
    return {"errors": [{"message": message, "field": field, "help": None}]}


def _address(address: Address) -> dict[str, str]:
    return address.to_json()


class SendGridProvider(HttpProvider):
    type = "sendgrid"

    def __init__(
        self, settings: SendGridSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self._headers = {
            "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        personalization: dict[str, Any] = {"to": [_address(a) for a in email.to]}
        if email.cc:
            personalization["cc"] = [_address(a) for a in email.cc]
        if email.bcc:
            personalization["bcc"] = [_address(a) for a in email.bcc]
        content = []
        if email.text is not None:
            content.append({"type": "text/plain", "value": email.text})
        if email.html is not None:
            content.append({"type": "text/html", "value": email.html})
        body: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _address(email.sender),
            "subject": email.subject,
            "content": content,
            "headers": {**email.headers, "X-Mailgate-Id": message_id},
            "custom_args": {**email.metadata, "mailgate_id": message_id},
        }
        if len(email.reply_to) == 1:
            body["reply_to"] = _address(email.reply_to[0])
        elif email.reply_to:
            body["reply_to_list"] = [_address(a) for a in email.reply_to]
        if email.tags:
            body["categories"] = list(email.tags)
        if email.attachments:
            body["attachments"] = [
                {
                    "content": a.content,
                    "type": a.content_type,
                    "filename": a.filename,
                    "disposition": "attachment",
                }
                for a in email.attachments
            ]
        return HttpRequest(
            "POST", f"{self.base_url}/v3/mail/send", headers=self._headers, json=body
        )

    def probe_request(self) -> HttpRequest:
        """The key's scopes: cheap, and a 401/403 says the key is no good."""
        return HttpRequest("GET", f"{self.base_url}/v3/scopes", headers=self._headers)

    def parse_success(self, response: HttpResponse) -> SendResult:
        return SendResult(provider_message_id=response.header("X-Message-Id"))

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict) and isinstance(data.get("errors"), list):
            parts = []
            for error in data["errors"]:
                if isinstance(error, dict):
                    field = error.get("field")
                    message = str(error.get("message") or "")
                    parts.append(f"{field}: {message}" if field else message)
            if parts:
                return "; ".join(parts)
        return super().describe_error(response)
