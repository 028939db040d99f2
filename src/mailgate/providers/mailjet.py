"""Mailjet Send API v3.1 (`POST /v3.1/send`, JSON, basic auth `key:secret`).

One message per call (`{"Messages": [message]}`), so one call's outcome is
one message's outcome. Our message id travels as `CustomID` (Mailjet returns
it in every event) and as the `X-Mailgate-Id` header. Mailjet has one
grouping field, `CustomCampaign`, which gets the first tag; every tag and
the metadata travel together in `EventPayload`, a JSON string Mailjet hands
back as `Payload` in events: `{"tags": [...], "metadata": {...}}`.

Mailjet answers with one `MessageID` (an int64) and one `MessageUUID` per
recipient; mailgate keeps the first `To` recipient's `MessageID`, as a
decimal string, the id Mailjet's message API and dashboard look up.

Quirks handled here: a message's result carries its own `Status`, so a 200
whose message says `"error"` is not a send, and a 400 is read message by
message. Per-message errors are classified by their `ErrorCode` and
`StatusCode` rather than the HTTP status: `mj-0001`/`mj-0015` (key
suspended, bad credentials) and `send-0006`/`send-0007`/`send-0008` (sender
not permitted, not validated, not authorised) send mail elsewhere; other
`send-00xx`/`mj-00xx` validation errors reject the message.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from mailgate.config import MailjetSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email
from mailgate.providers.base import (
    HttpProvider,
    HttpRequest,
    HttpResponse,
    SendResult,
)

AUTH_CODES = frozenset({"mj-0001", "mj-0015"})
"""The API key is suspended or the credentials are wrong."""
SENDER_CODES = frozenset({"send-0006", "send-0007", "send-0008"})
"""The sender is not permitted, not validated or not authorised on this Mailjet account."""

_TAGS = re.compile(r"<[^>]+>")


def _address(address: Address) -> dict[str, str]:
    return (
        {"Email": address.email, "Name": address.name} if address.name else {"Email": address.email}
    )


class MailjetProvider(HttpProvider):
    type = "mailjet"

    def __init__(
        self, settings: MailjetSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        pair = f"{settings.api_key.get_secret_value()}:{settings.api_secret.get_secret_value()}"
        self._headers = {
            "Authorization": f"Basic {base64.b64encode(pair.encode()).decode()}",
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        message: dict[str, Any] = {
            "From": _address(email.sender),
            "To": [_address(a) for a in email.to],
            "Subject": email.subject,
            "Headers": {**email.headers, "X-Mailgate-Id": message_id},
            "CustomID": message_id,
        }
        if email.cc:
            message["Cc"] = [_address(a) for a in email.cc]
        if email.bcc:
            message["Bcc"] = [_address(a) for a in email.bcc]
        if email.reply_to:
            # Mailjet takes one ReplyTo and refuses a Reply-To header (send-0011).
            message["ReplyTo"] = _address(email.reply_to[0])
        if email.text is not None:
            message["TextPart"] = email.text
        if email.html is not None:
            message["HTMLPart"] = email.html
        if email.attachments:
            message["Attachments"] = [
                {"ContentType": a.content_type, "Filename": a.filename, "Base64Content": a.content}
                for a in email.attachments
            ]
        if email.tags:
            message["CustomCampaign"] = email.tags[0]
        if email.tags or email.metadata:
            message["EventPayload"] = json.dumps(
                {"tags": list(email.tags), "metadata": dict(email.metadata)},
                separators=(",", ":"),
            )
        return HttpRequest(
            "POST",
            f"{self.base_url}/v3.1/send",
            headers=self._headers,
            json={"Messages": [message]},
        )

    def probe_request(self) -> HttpRequest:
        """The account's profile: cheap, and wrong or suspended credentials are a 401."""
        return HttpRequest("GET", f"{self.base_url}/v3/REST/myprofile", headers=self._headers)

    def parse_success(self, response: HttpResponse) -> SendResult:
        message = _first_message(response)
        if message is None:
            raise self.not_a_success(response, "Mailjet's Messages result")
        if message.get("Status") != "success":
            raise self._message_error(message, response)
        return SendResult(provider_message_id=_message_id(message))

    def describe_error(self, response: HttpResponse) -> str:
        message = _first_message(response)
        if message is not None and message.get("Errors"):
            return _describe_errors(message["Errors"])
        data = response.json()
        if isinstance(data, dict) and data.get("ErrorMessage"):
            code, text = data.get("ErrorCode"), str(data["ErrorMessage"])
            detail = f"{code}: {text}" if code else text
            if data.get("ErrorIdentifier"):
                detail += f" (ErrorIdentifier {data['ErrorIdentifier']})"
            return detail
        text = " ".join(_TAGS.sub(" ", response.text).split())  # 429s come as an HTML page
        return text or f"HTTP {response.status}"

    def classify_error(self, response: HttpResponse) -> ProviderError:
        message = _first_message(response)
        if message is not None and message.get("Status") == "error":
            return self._message_error(message, response)
        data = response.json()
        if isinstance(data, dict) and data.get("ErrorCode") in AUTH_CODES:
            return ProviderAuthError(
                self.name, self.describe_error(response), status_code=response.status
            )
        return super().classify_error(response)

    def _message_error(self, message: dict[str, Any], response: HttpResponse) -> ProviderError:
        """Our one message failed: classify by its errors, not by the HTTP status.

        An error that is the provider's side (credentials, sender, rate, outage)
        wins over validation errors, so a message is rejected for good only
        when every error is about the message itself.
        """
        errors = [e for e in message.get("Errors") or [] if isinstance(e, dict)]
        detail = _describe_errors(errors) or f"HTTP {response.status}: message Status error"
        codes = {str(e.get("ErrorCode") or "") for e in errors}
        statuses = {s for e in errors if isinstance(s := e.get("StatusCode"), int)}
        if codes & AUTH_CODES or 401 in statuses:
            return ProviderAuthError(self.name, detail, status_code=401)
        if codes & SENDER_CODES or 403 in statuses:
            return ProviderAuthError(self.name, detail, status_code=403)
        if 429 in statuses:
            return ProviderThrottled(self.name, detail, retry_after=self.retry_after(response))
        server = sorted(s for s in statuses if s >= 500)
        if server:
            status = server[0]
            return ProviderUnavailable(
                self.name, detail, status_code=status, ambiguous=status in (500, 504)
            )
        status = min(statuses) if statuses else response.status
        return MessageRejected(self.name, detail, status_code=status)


def _first_message(response: HttpResponse) -> dict[str, Any] | None:
    """Our message's result (`Messages[0]`), when the body has Mailjet's per-message form."""
    data = response.json()
    if not isinstance(data, dict) or not isinstance(data.get("Messages"), list):
        return None
    messages = data["Messages"]
    return messages[0] if messages and isinstance(messages[0], dict) else None


def _message_id(message: dict[str, Any]) -> str | None:
    """The first recipient's `MessageID` (exact: JSON ints stay ints), else its UUID."""
    for kind in ("To", "Cc", "Bcc"):
        for recipient in message.get(kind) or []:
            if isinstance(recipient, dict):
                if recipient.get("MessageID") is not None:
                    return str(recipient["MessageID"])
                if recipient.get("MessageUUID"):
                    return str(recipient["MessageUUID"])
    return None


def _describe_errors(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        code, text = error.get("ErrorCode"), str(error.get("ErrorMessage") or "")
        part = f"{code}: {text}" if code else text
        related = error.get("ErrorRelatedTo")
        if isinstance(related, list) and related:
            part += f" [{', '.join(str(r) for r in related)}]"
        parts.append(part)
    return "; ".join(parts)
