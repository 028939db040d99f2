"""Postmark Email API (`POST /email`, JSON, `X-Postmark-Server-Token`), and its batch.

Addresses travel as RFC 5322 strings (`To`/`Cc`/`Bcc` comma-separated,
display names quoted or RFC 2047-encoded as Postmark's parser expects).
Postmark keeps one `Tag` per message, so the first tag goes as `Tag` and
every tag, in order, as `mailgate_tags` in `Metadata` (a JSON list, so no
tag is lost whatever it contains); metadata is `Metadata` plus
`mailgate_id` (returned in every webhook), and the `X-Mailgate-Id` header.
The provider's id is the answer's `MessageID`.

Postmark explains its errors with its own `ErrorCode` (in a 422, or per
message in a batch answer), and that code, not the HTTP status, decides the
class: 10 is a bad token; 400/401/405/412/413 are sender-signature or account
problems an operator must fix (`ProviderAuthError`: the breaker opens and
mail fails over); 100 is maintenance; 429 is throttling; the rest are about
the message. Postmark documents no idempotency key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from email.utils import formataddr
from enum import IntEnum
from typing import Any

from mailgate.config import PostmarkSettings
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
    parse_retry_after,
)

MAX_BATCH = 500
"""Messages Postmark takes in one `/email/batch` call."""
TOKEN_HEADER = "X-Postmark-Server-Token"
"""Where Postmark's send API takes the server token (name and value case-insensitive)."""


class ErrorCode(IntEnum):
    """Postmark's API `ErrorCode`s about sending (`reference/providers.md`, section 4F).

    One list for this adapter, which reads them, and the drop-in API
    (`mailgate.compat.postmark`), which answers with them.
    """

    OK = 0
    BAD_TOKEN = 10
    MAINTENANCE = 100
    INVALID_EMAIL_REQUEST = 300
    SENDER_SIGNATURE_NOT_FOUND = 400
    SENDER_SIGNATURE_NOT_CONFIRMED = 401
    INVALID_JSON = 402
    INCOMPATIBLE_JSON = 403
    NOT_ALLOWED_TO_SEND = 405
    INACTIVE_RECIPIENT = 406
    JSON_REQUIRED = 409
    TOO_MANY_BATCH_MESSAGES = 410
    FORBIDDEN_ATTACHMENT_TYPE = 411
    ACCOUNT_PENDING = 412
    ACCOUNT_MAY_NOT_SEND = 413
    RATE_LIMITED = 429


_REJECTED = frozenset(
    {
        ErrorCode.INVALID_EMAIL_REQUEST,
        ErrorCode.INVALID_JSON,
        ErrorCode.INCOMPATIBLE_JSON,
        ErrorCode.INACTIVE_RECIPIENT,
        ErrorCode.JSON_REQUIRED,
        ErrorCode.TOO_MANY_BATCH_MESSAGES,
        ErrorCode.FORBIDDEN_ATTACHMENT_TYPE,
    }
)
"""Codes about the message (or a recipient Postmark has suppressed): nobody else should try."""
_ACCOUNT = frozenset(
    {
        ErrorCode.BAD_TOKEN,
        ErrorCode.SENDER_SIGNATURE_NOT_FOUND,
        ErrorCode.SENDER_SIGNATURE_NOT_CONFIRMED,
        ErrorCode.NOT_ALLOWED_TO_SEND,
        ErrorCode.ACCOUNT_PENDING,
        ErrorCode.ACCOUNT_MAY_NOT_SEND,
    }
)
"""Bad token, unknown or unconfirmed sender signature, no credits, account pending or
barred: the same for every message until an operator acts, so fail over and alert."""
_MAINTENANCE = ErrorCode.MAINTENANCE
_BAD_TOKEN = ErrorCode.BAD_TOKEN
_RATE_LIMITED = ErrorCode.RATE_LIMITED


def _address(address: Address) -> str:
    return formataddr((address.name or "", address.email), charset="utf-8")


def _addresses(addresses: Sequence[Address]) -> str:
    return ", ".join(_address(a) for a in addresses)


class PostmarkProvider(HttpProvider):
    type = "postmark"

    def __init__(
        self, settings: PostmarkSettings, *, timeout: float, max_connections: int = 100
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self.message_stream = settings.message_stream
        self._headers = {
            TOKEN_HEADER: settings.api_key.get_secret_value(),
            "Accept": "application/json",
        }

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        return HttpRequest(
            "POST",
            f"{self.base_url}/email",
            headers=self._headers,
            json=self._message(message_id, email),
        )

    def probe_request(self) -> HttpRequest:
        """The server the token belongs to: cheap, and a bad token is a 401."""
        return HttpRequest("GET", f"{self.base_url}/server", headers=self._headers)

    def _message(self, message_id: str, email: Email) -> dict[str, Any]:
        """One message in Postmark's shape (the same for `/email` and `/email/batch`)."""
        body: dict[str, Any] = {
            "From": _address(email.sender),
            "To": _addresses(email.to),
            "Subject": email.subject,
            "MessageStream": self.message_stream,
            "Headers": [
                *({"Name": name, "Value": value} for name, value in email.headers.items()),
                {"Name": "X-Mailgate-Id", "Value": message_id},
            ],
            "Metadata": {**email.metadata, "mailgate_id": message_id},
        }
        if email.cc:
            body["Cc"] = _addresses(email.cc)
        if email.bcc:
            body["Bcc"] = _addresses(email.bcc)
        if email.reply_to:
            body["ReplyTo"] = _addresses(email.reply_to)
        if email.text is not None:
            body["TextBody"] = email.text
        if email.html is not None:
            body["HtmlBody"] = email.html
        if email.tags:
            body["Tag"] = email.tags[0]  # Postmark keeps one tag per message...
            body["Metadata"]["mailgate_tags"] = json.dumps(list(email.tags))  # ...so all go here
        if email.attachments:
            body["Attachments"] = [
                {"Name": a.filename, "Content": a.content, "ContentType": a.content_type}
                for a in email.attachments
            ]
        return body

    def parse_success(self, response: HttpResponse) -> SendResult:
        answer = response.json()
        if not isinstance(answer, dict):
            raise self.not_a_success(response, "a MessageID")
        outcome = self._outcome(answer, status=response.status, headers=response.headers)
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def _outcome(
        self, answer: Any, *, status: int | None, headers: Mapping[str, str]
    ) -> SendResult | ProviderError:
        """What one message's answer (`{ErrorCode, Message, MessageID}`) means.

        A 2xx is only a success when its `ErrorCode` is 0 (or absent, as
        Postmark leaves it during service delays) and it names a `MessageID`.
        """
        code = _error_code(answer) if isinstance(answer, dict) else None
        if code:
            detail = _describe(answer) or f"ErrorCode {code}"
            return self._classify_code(code, detail, status_code=status, headers=headers) or (
                MessageRejected(self.name, detail, status_code=status)
            )
        if not isinstance(answer, dict) or not answer.get("MessageID"):
            return ProviderUnavailable(
                self.name,
                f"answer without a MessageID (is base_url right?): {answer!r:.200}",
                status_code=status,
            )
        return SendResult(provider_message_id=str(answer["MessageID"]))

    def classify_error(self, response: HttpResponse) -> ProviderError:
        data = response.json()
        code = _error_code(data) if isinstance(data, dict) else None
        # API codes explain a 422; elsewhere the HTTP status says more, except
        # for a bad token and maintenance, whatever status they come with.
        if code and (response.status == 422 or code in (_BAD_TOKEN, _MAINTENANCE)):
            classified = self._classify_code(
                code,
                self.describe_error(response),
                status_code=response.status,
                headers=response.headers,
            )
            if classified is not None:
                return classified
        return super().classify_error(response)

    def _classify_code(
        self, code: int, detail: str, *, status_code: int | None, headers: Mapping[str, str]
    ) -> ProviderError | None:
        """The class a Postmark `ErrorCode` means, or None for codes not listed here."""
        if code in _ACCOUNT:
            return ProviderAuthError(self.name, detail, status_code=status_code)
        if code in _REJECTED:
            return MessageRejected(self.name, detail, status_code=status_code)
        if code == _MAINTENANCE:
            return ProviderUnavailable(self.name, detail, status_code=status_code)
        if code == _RATE_LIMITED:
            return ProviderThrottled(
                self.name, detail, status_code=status_code, retry_after=parse_retry_after(headers)
            )
        return None

    def describe_error(self, response: HttpResponse) -> str:
        data = response.json()
        if isinstance(data, dict) and (described := _describe(data)):
            return described
        content_type = response.header("Content-Type") or ""
        if "html" in content_type.lower() or response.text.lstrip().startswith("<"):
            # Postmark's own errors are JSON; an HTML page comes from a network
            # security layer in front of the API (Postmark support, "Getting a
            # 403 that doesn't look like a Postmark error?").
            return f"HTTP {response.status} HTML page from in front of Postmark's API"
        return super().describe_error(response)

    async def send_batch(
        self, items: Sequence[tuple[str, Email]]
    ) -> list[SendResult | ProviderError]:
        """Send up to 500 messages in one `POST /email/batch`; one outcome per item, in order.

        Postmark answers 200 with a result per message, each with its own
        `ErrorCode`, so each item gets its own `SendResult` or error class.
        A failure of the whole request (bad token, 5xx, timeout, connection)
        is the same error object for every item. Raises `ValueError` for more
        than 500 items: splitting is the caller's choice.
        """
        if len(items) > MAX_BATCH:
            raise ValueError(f"Postmark takes at most {MAX_BATCH} messages per batch")
        if not items:
            return []
        request = HttpRequest(
            "POST",
            f"{self.base_url}/email/batch",
            headers=self._headers,
            json=[self._message(message_id, email) for message_id, email in items],
        )
        whole: ProviderError
        try:
            response = await self._perform(request)
        except ProviderError as exc:
            whole = exc
        else:
            if response.status < 300:
                return self._batch_outcomes(response, len(items))
            whole = self.classify_error(response)
            if response.status == 413 and len(items) > 1:
                # Over 50 MB together says nothing about each message.
                whole = ProviderUnavailable(
                    self.name,
                    f"batch too large, send fewer messages at once: {whole.detail}",
                    status_code=413,
                )
        return [whole for _ in items]

    def _batch_outcomes(
        self, response: HttpResponse, count: int
    ) -> list[SendResult | ProviderError]:
        answers = response.json()
        if not isinstance(answers, list):
            error: ProviderError = ProviderUnavailable(
                self.name,
                f"batch answer is not a list (is base_url right?): {response.text[:200]}",
                status_code=response.status,
            )
            return [error for _ in range(count)]
        if len(answers) != count:
            # Some were probably taken, but which ones cannot be told.
            error = ProviderUnavailable(
                self.name,
                f"batch answer has {len(answers)} results for {count} messages",
                status_code=response.status,
                ambiguous=True,
            )
            return [error for _ in range(count)]
        return [self._outcome(a, status=None, headers=response.headers) for a in answers]


def _error_code(data: Mapping[str, Any]) -> int | None:
    value = data.get("ErrorCode")
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _describe(data: Mapping[str, Any]) -> str | None:
    """`ErrorCode n: Message` from a Postmark answer, or None when it has no message."""
    message = str(data.get("Message") or "").strip()
    if not message:
        return None
    code = _error_code(data)
    return f"ErrorCode {code}: {message}" if code else message
