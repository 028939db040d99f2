"""SparkPost Transmissions API (`POST /api/v1/transmissions`, JSON, raw key).

SparkPost has no cc or bcc fields: every address is a `recipients[]` entry
whose `header_to` carries the visible To line, the visible Cc line goes in
`content.headers.Cc`, and a bcc recipient is named in no header. Tags become
every recipient's `tags` (they come back as `rcpt_tags` in each event);
metadata, with our message id as `mailgate_id`, is the transmission's
`metadata` (`rcpt_meta` in events). The provider's id is `results.id`, the
transmission id the webhooks carry as `transmission_id`.

Quirks handled here: a 200 that rejected every recipient is a refused
message; 400 code 7000/7001 (the sending domain is not usable at SparkPost)
and 420 code 2103 (the sandbox allowance is spent) are this account's
problem, not the message's; other 420s are sending limits that pause the
provider for an hour; a 429 without `Retry-After` waits five seconds.
"""

from __future__ import annotations

from typing import Any

from mailgate.config import SparkPostSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email
from mailgate.providers.base import (
    MAX_RETRY_AFTER_SECONDS,
    HttpProvider,
    HttpRequest,
    HttpResponse,
    SendResult,
    parse_retry_after,
)

THROTTLE_DEFAULT_SECONDS = 5.0
"""Wait after a 429 without `Retry-After`: the top of SparkPost's advised 1-5 s.

The router sends through the next provider meanwhile, so waiting a little
longer costs nothing, while coming back too soon only earns another 429.
"""

SENDING_LIMIT_PAUSE_SECONDS = MAX_RETRY_AFTER_SECONDS
"""Pause after a 420 (sending limit). SparkPost does not say when the limit
frees up; the hourly window (code 2101) has surely rolled over after an
hour, and longer limits are then probed once an hour rather than hammered."""

_ACCOUNT_CODES = frozenset({"7000", "7001"})
"""400 codes about the sending domain (blocked, unverified): fail over."""
_SANDBOX_SPENT = "2103"
_BUSY = "1502"
"""400 "server resources unavailable": SparkPost asks to retry later."""


def _recipient(address: Address, header_to: str, tags: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"email": address.email, "header_to": header_to}
    if address.name:
        entry["name"] = address.name
    recipient: dict[str, Any] = {"address": entry}
    if tags:
        recipient["tags"] = tags
    return recipient


class SparkPostProvider(HttpProvider):
    type = "sparkpost"

    def __init__(
        self, settings: SparkPostSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self._headers = {
            "Authorization": settings.api_key.get_secret_value(),
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        header_to = ", ".join(a.formatted() for a in email.to)
        tags = list(email.tags)
        headers = {**email.headers, "X-Mailgate-Id": message_id}
        if email.cc:
            headers["Cc"] = ", ".join(a.formatted() for a in email.cc)
        content: dict[str, Any] = {
            "from": email.sender.to_json(),
            "subject": email.subject,
            "headers": headers,
        }
        if email.text is not None:
            content["text"] = email.text
        if email.html is not None:
            content["html"] = email.html
        if email.reply_to:
            content["reply_to"] = ", ".join(a.formatted() for a in email.reply_to)
        if email.attachments:
            content["attachments"] = [
                {"name": a.filename, "type": a.content_type, "data": a.content}
                for a in email.attachments
            ]
        body = {
            "recipients": [
                _recipient(a, header_to, tags) for a in (*email.to, *email.cc, *email.bcc)
            ],
            "content": content,
            "metadata": {**email.metadata, "mailgate_id": message_id},
        }
        return HttpRequest(
            "POST", f"{self.base_url}/api/v1/transmissions", headers=self._headers, json=body
        )

    def probe_request(self) -> HttpRequest:
        """The account record: cheap, and an unknown key is a 401."""
        return HttpRequest("GET", f"{self.base_url}/api/v1/account", headers=self._headers)

    def check_probe(self, response: HttpResponse) -> None:
        """As `HttpProvider.check_probe`, but a key that may only send passes.

        Such a key (all mailgate needs) gets a 403 on the account record,
        which still proves SparkPost knows it; an unknown key is a 401.
        """
        if response.status != 403:
            super().check_probe(response)

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, dict) or not results.get("id"):
            raise self.not_a_success(response, "a transmission id")
        accepted = results.get("total_accepted_recipients")
        rejected = results.get("total_rejected_recipients")
        if accepted == 0 and isinstance(rejected, int) and rejected > 0:
            # Nobody will get it. A partial rejection (some accepted) is a send:
            # the accepted recipients get the message whatever mailgate does next.
            errors = _errors(results.get("rcpt_to_errors"))
            detail = "; ".join(errors) or "every recipient was rejected"
            raise MessageRejected(
                self.name, f"{rejected} recipient(s) rejected: {detail}", status_code=200
            )
        return SendResult(provider_message_id=str(results["id"]))

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict):
            errors = _errors(data.get("errors"))
            if errors:
                return "; ".join(errors)
        return super().describe_error(response)

    def classify_error(self, response: HttpResponse) -> ProviderError:
        status, detail = response.status, self.describe_error(response)
        codes = _codes(response)
        if status == 400 and codes & _ACCOUNT_CODES:
            # The sending domain is blocked or not verified here; another
            # provider may well take the very same message.
            return ProviderAuthError(self.name, detail, status_code=status)
        if status == 400 and _BUSY in codes:
            return ProviderUnavailable(self.name, detail, status_code=status)
        if status == 420:
            if _SANDBOX_SPENT in codes:
                # The sandbox's lifetime allowance never comes back: only an
                # operator (a verified sending domain) makes this account usable.
                return ProviderAuthError(self.name, detail, status_code=status)
            return ProviderThrottled(
                self.name, detail, status_code=status, retry_after=SENDING_LIMIT_PAUSE_SECONDS
            )
        return super().classify_error(response)

    def retry_after(self, response: HttpResponse) -> float | None:
        wait = parse_retry_after(response.headers)
        return THROTTLE_DEFAULT_SECONDS if wait is None else wait


def _errors(values: Any) -> list[str]:
    """`message: description (code N)` for each of SparkPost's error objects."""
    if not isinstance(values, list):
        return []
    out = []
    for error in values:
        if not isinstance(error, dict):
            continue
        text = str(error.get("message") or "error")
        if error.get("description"):
            text += f": {error['description']}"
        if error.get("code"):
            text += f" (code {error['code']})"
        out.append(text)
    return out


def _codes(response: HttpResponse) -> set[str]:
    data = response.json()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e["code"]) for e in errors if isinstance(e, dict) and e.get("code") is not None}
