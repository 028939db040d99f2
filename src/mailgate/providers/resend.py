"""Resend Emails API (`POST /emails`, JSON, bearer key), with an idempotency key.

Our message id is the `Idempotency-Key` (Resend keeps keys 24 h: a repeat
after an ambiguous timeout returns the first send's id and sends nothing),
the `X-Mailgate-Id` header and a `mailgate_id` tag (tags come back in every
webhook). The provider's id is the answer's `id`.

Resend's tags are `{name, value}` pairs of ASCII letters, digits, `_` and
`-` (at most 256 each), so each of our tags becomes `{name: <tag>, value:
"true"}` with any other character replaced by `_`. Metadata, which has no
such limits in mailgate, travels losslessly as JSON in an `X-Metadata` header.

Display names work around Resend's address parser (as django-anymail does):
it refuses a quoted display name and an RFC 2047-encoded one in `from`, so
`from` is sent as a bare `Name <addr>`, and other addresses whose name needs
quoting or is not ASCII get an RFC 2047 encoded word instead of quotes.

Errors are `{statusCode, name, message}`; the class follows the status,
refined by `name`: a 409 is about our idempotency key, a 429 is either a rate
limit (wait `retry-after`) or a used-up quota (fail over for a while), a 451
is a message Resend's security checks refused.
"""

from __future__ import annotations

import json
import re
from email.charset import QP, Charset
from typing import Any

from mailgate.config import ResendSettings
from mailgate.errors import (
    MessageRejected,
    ProviderError,
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
    seconds_header,
)

MAX_TAG_LENGTH = 256
ID_TAG = "mailgate_id"
_UNSAFE_TAG = re.compile(r"[^A-Za-z0-9_-]")
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_QUOTA = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP


def tag_name(tag: str) -> str:
    """A tag as Resend accepts it: other characters become `_`, at most 256."""
    return _UNSAFE_TAG.sub("_", tag)[:MAX_TAG_LENGTH] or "_"


def _sender(address: Address) -> str:
    """`Name <addr>` unquoted and unencoded: the only named form Resend takes in `from`."""
    return f"{address.name} <{address.email}>" if address.name else address.email


def _recipient(address: Address) -> str:
    """A plain name, or an RFC 2047 encoded word where RFC 5322 would quote it."""
    name = address.name
    if not name:
        return address.email
    if not name.isascii() or _SPECIALS.search(name):
        name = _UTF8_QP.header_encode(name)
    return f"{name} <{address.email}>"


class ResendProvider(HttpProvider):
    type = "resend"

    def __init__(
        self, settings: ResendSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self._headers = {
            "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        headers = {**email.headers, "X-Mailgate-Id": message_id}
        if email.metadata:
            headers["X-Metadata"] = json.dumps(dict(email.metadata), separators=(",", ":"))
        tags: dict[str, str] = {}
        for tag in email.tags:
            tags.setdefault(tag_name(tag), "true")
        tags[ID_TAG] = tag_name(message_id)
        body: dict[str, Any] = {
            "from": _sender(email.sender),
            "to": [_recipient(a) for a in email.to],
            "subject": email.subject,
            "headers": headers,
            "tags": [{"name": name, "value": value} for name, value in tags.items()],
        }
        if email.cc:
            body["cc"] = [_recipient(a) for a in email.cc]
        if email.bcc:
            body["bcc"] = [_recipient(a) for a in email.bcc]
        if email.reply_to:
            body["reply_to"] = [_recipient(a) for a in email.reply_to]
        # Without `text`, Resend derives a plain-text part from `html`.
        if email.text is not None:
            body["text"] = email.text
        if email.html is not None:
            body["html"] = email.html
        if email.attachments:
            body["attachments"] = [
                {"filename": a.filename, "content": a.content, "content_type": a.content_type}
                for a in email.attachments
            ]
        return HttpRequest(
            "POST",
            f"{self.base_url}/emails",
            headers={**self._headers, "Idempotency-Key": message_id},
            json=body,
        )

    def probe_request(self) -> HttpRequest:
        """The account's domains: cheap, and a bad key is a 401 or 403."""
        return HttpRequest("GET", f"{self.base_url}/domains", headers=self._headers)

    def check_probe(self, response: HttpResponse) -> None:
        """As `HttpProvider.check_probe`, but a sending-only key passes.

        Such a key (the one mailgate needs) may not list domains and gets a
        401 `restricted_api_key`, which still proves Resend knows the key.
        """
        if _error_name(response) != "restricted_api_key":
            super().check_probe(response)

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        if not isinstance(data, dict) or not data.get("id"):
            raise self.not_a_success(response, "an id")
        return SendResult(provider_message_id=str(data["id"]))

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict) and data.get("message"):
            name = data.get("name")
            return f"{name}: {data['message']}" if name else str(data["message"])
        return super().describe_error(response)

    def retry_after(self, response: HttpResponse) -> float | None:
        """`retry-after`, else `ratelimit-reset` (seconds until the window resets)."""
        if _error_name(response) in _QUOTA:
            # Waiting seconds does not help: pause the provider as long as
            # mailgate allows and let the others carry the mail meanwhile.
            return MAX_RETRY_AFTER_SECONDS
        wait = parse_retry_after(response.headers)
        return wait if wait is not None else seconds_header(response.headers, "ratelimit-reset")

    def classify_error(self, response: HttpResponse) -> ProviderError:
        status, detail, name = response.status, self.describe_error(response), _error_name(response)
        if status == 409:
            if name == "concurrent_idempotent_requests":
                # An earlier attempt with this key is still running at Resend and
                # will most likely send the message: ambiguous, not a slowdown of
                # the whole provider (which is what ProviderThrottled would mean).
                return ProviderUnavailable(self.name, detail, status_code=409, ambiguous=True)
            # invalid_idempotent_request: this key came with another body before.
            return MessageRejected(self.name, detail, status_code=409)
        if status == 451:  # security_error: Resend will not send this message
            return MessageRejected(self.name, detail, status_code=451)
        return super().classify_error(response)


def _error_name(response: HttpResponse) -> str:
    """Resend's error `name` (`rate_limit_exceeded`, ...), or "" when the body has none."""
    data = response.json()
    return str(data.get("name") or "") if isinstance(data, dict) else ""
