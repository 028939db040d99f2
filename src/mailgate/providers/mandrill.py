"""Mandrill (Mailchimp Transactional) `POST /api/1.0/messages/send.json`, JSON.

The API key travels in the body (`"key"`), never in a header. Recipients are
one `to[]` list typed `to`/`cc`/`bcc`, with `preserve_recipients` on so
everyone sees the To and Cc lines the caller wrote (Mandrill's account
default sends each recipient a copy naming only them). Reply-To is a header;
tags are `tags`; metadata, with our message id as `mailgate_id`, is
`metadata` (it comes back as `msg.metadata` in every webhook event).

Mandrill answers 200 with one result per recipient. The message counts as
sent when any recipient is `sent`, `queued` or `scheduled`, and its id is
the first such recipient's `_id` (each recipient has its own; webhooks are
matched by `metadata.mailgate_id`). When every recipient was refused, the
reasons decide: a sender or account problem (`invalid-sender`, `unsigned`,
`test-mode-limit`) fails over, a recipient problem rejects the message.

API errors come as HTTP 500 (sometimes 400) with
`{"status": "error", "code", "name", "message"}` and are classified by
`name`, not by status. Mandrill has no throttling answer of its own: over
its hourly quota it accepts the message into its backlog (`queued`), which
is a send; only a front door's plain 429 throttles.
"""

from __future__ import annotations

from typing import Any

from mailgate.config import MandrillSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)
from mailgate.message import Email
from mailgate.providers.base import HttpProvider, HttpRequest, HttpResponse, SendResult

ACCEPTED = frozenset({"sent", "queued", "scheduled"})
FAILOVER_REASONS = frozenset({"invalid-sender", "unsigned", "test-mode-limit"})
"""Refusals about our sender or account at Mandrill: another provider may take it."""
PERMANENT_REASONS = frozenset(
    {"hard-bounce", "soft-bounce", "spam", "unsub", "custom", "invalid", "rule"}
)
"""Refusals about the recipient (Mandrill's rejection list, rules, bad address)."""
AUTH_ERRORS = frozenset({"Invalid_Key", "PaymentRequired", "Unknown_Subaccount", "PoorReputation"})
"""Error names meaning this account cannot send now: open the breaker, fail over."""


class MandrillProvider(HttpProvider):
    type = "mandrill"

    def __init__(
        self, settings: MandrillSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self._key = settings.api_key.get_secret_value()
        self._headers = {"Accept": "application/json"}

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        recipients = [
            {**address.to_json(), "type": kind}
            for kind, addresses in (("to", email.to), ("cc", email.cc), ("bcc", email.bcc))
            for address in addresses
        ]
        headers = dict(email.headers)
        if email.reply_to:
            headers["Reply-To"] = ", ".join(a.formatted() for a in email.reply_to)
        headers["X-Mailgate-Id"] = message_id
        message: dict[str, Any] = {
            "from_email": email.sender.email,
            "to": recipients,
            "subject": email.subject,
            "headers": headers,
            "metadata": {**email.metadata, "mailgate_id": message_id},
            "preserve_recipients": True,
        }
        if email.sender.name:
            message["from_name"] = email.sender.name
        if email.text is not None:
            message["text"] = email.text
        if email.html is not None:
            message["html"] = email.html
        if email.tags:
            message["tags"] = list(email.tags)
        if email.attachments:
            message["attachments"] = [
                {"type": a.content_type, "name": a.filename, "content": a.content}
                for a in email.attachments
            ]
        return HttpRequest(
            "POST",
            f"{self.base_url}/api/1.0/messages/send.json",
            headers=self._headers,
            json={"key": self._key, "message": message},
        )

    def probe_request(self) -> HttpRequest:
        """`users/ping.json`: answers "PONG!" for a known key, `Invalid_Key` otherwise."""
        return HttpRequest(
            "POST",
            f"{self.base_url}/api/1.0/users/ping.json",
            headers=self._headers,
            json={"key": self._key},
        )

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        results = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
        if not results:
            raise self.not_a_success(response, "per-recipient results")
        accepted = [r for r in results if r.get("status") in ACCEPTED]
        if not accepted:
            raise self._refused(results)
        ids = [str(r["_id"]) for r in accepted if r.get("_id")]
        return SendResult(provider_message_id=ids[0] if ids else None)

    def _refused(self, results: list[dict[str, Any]]) -> ProviderError:
        """Every recipient was refused: whose fault decides where the message goes."""
        reasons = [str(r.get("reject_reason") or r.get("status") or "unknown") for r in results]
        detail = "every recipient refused: " + "; ".join(
            f"{r.get('email')}: {r.get('status')} ({reason})"
            for r, reason in zip(results, reasons, strict=True)
        )
        if any(reason in FAILOVER_REASONS for reason in reasons):
            return ProviderAuthError(self.name, detail, status_code=200)
        if all(reason in PERMANENT_REASONS for reason in reasons):
            return MessageRejected(self.name, detail, status_code=200)
        # A reason Mandrill has added since: let the next provider decide.
        return ProviderUnavailable(self.name, detail, status_code=200)

    def describe_error(self, response: HttpResponse) -> str:
        name, message = _error(response)
        if name is not None:
            return f"{name}: {message}" if message else name
        return super().describe_error(response)

    def classify_error(self, response: HttpResponse) -> ProviderError:
        name, _ = _error(response)
        if name is None:
            return super().classify_error(response)
        status, detail = response.status, self.describe_error(response)
        if name in AUTH_ERRORS:
            return ProviderAuthError(self.name, detail, status_code=status)
        if name == "ValidationError":
            return MessageRejected(self.name, detail, status_code=status)
        # GeneralError is Mandrill's catch-all for its own failures, which may
        # come after the message was queued; any other name (ServiceUnavailable,
        # one about templates or pools mailgate never uses) refused the call.
        return ProviderUnavailable(
            self.name, detail, status_code=status, ambiguous=name == "GeneralError"
        )


def _error(response: HttpResponse) -> tuple[str | None, str]:
    """Mandrill's error `name` and `message`, or (None, "") when the body is not one."""
    data = response.json()
    if isinstance(data, dict) and data.get("status") == "error" and data.get("name"):
        return str(data["name"]), str(data.get("message") or "")
    return None, ""
