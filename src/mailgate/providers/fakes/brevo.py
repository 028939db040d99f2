"""A local Brevo transactional API: `POST /v3/smtp/email`, 201 `{"messageId": "<...>"}`.

Enforces what the real one does for the requests mailgate makes: the
`api-key` header, the JSON shape, a body (`htmlContent` or `textContent`),
string-only header values, attachment names on Brevo's extension allow-list
(Brevo takes the content type from the name), and Brevo's idempotency key
(`headers.idempotencyKey`: a repeat within 30 minutes answers the first
`messageId` again and is not sent twice). Like Brevo, it drops a display
name that mixes non-ASCII characters with RFC 5322 specials. Errors are
`{"code", "message"}`; a 429 carries `x-sib-ratelimit-*` headers.

With `webhook_url` set it posts each message's events as Brevo's
transactional webhook does: one JSON object per event (`delivered`,
`deferred`, `hard_bounce`, `soft_bounce`, `spam`, `unique_opened`, `click`,
`unsubscribed`) with `message-id`, `X-Mailin-custom`, `ts_epoch` in
milliseconds, authorised with the `webhook_username` / `webhook_password`
basic-auth pair Brevo takes from the webhook URL.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

MAX_BYTES = 20 * 1024 * 1024
MAX_RECIPIENTS = 2000
IDEMPOTENCY_TTL_SECONDS = 30 * 60
DEFAULT_RESET_SECONDS = "10"
"""`x-sib-ratelimit-reset` on a 429 when the behaviour names no wait."""

# From Brevo's documented allow-list for attachment extensions.
ALLOWED_EXTENSIONS = frozenset(
    "xlsx xls ods docx docm doc csv pdf txt gif jpg jpeg png tif tiff rtf bmp cgm css shtml "
    "html htm zip xml ppt pptx tar ez ics mobi msg pub eps odt mp3 m4a m4v wma ogg flac wav "
    "aif aifc aiff mp4 mov avi mkv mpeg mpg wmv pkpass xlsm".split()
)

_ERRORS = {
    400: ("invalid_parameter", "Invalid parameter"),
    401: ("unauthorized", "Key not found"),
    402: ("not_enough_credits", "You don't have enough credits to send this email"),
    403: ("permission_denied", "Unable to send email. Your SMTP account is not yet activated."),
    404: ("document_not_found", "Not found"),
    # The 429 body is not documented; the headers are what Brevo promises.
    429: ("too_many_requests", "Too many requests"),
    500: ("internal_error", "Internal server error"),
}
_SPECIALS = frozenset('()<>[]:;@\\,."')


class FakeBrevo(FakeProvider):
    def __init__(
        self,
        api_key: str,
        *,
        keep: int | None = None,
        idempotency_ttl: float = IDEMPOTENCY_TTL_SECONDS,
        webhook_username: str | None = None,
        webhook_password: str | None = None,
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.webhook_username = webhook_username or f"brevo-{secrets.token_hex(4)}"
        self.webhook_password = webhook_password or secrets.token_urlsafe(24)
        """The basic-auth pair the events are posted with (as in Brevo's webhook URL)."""
        self.idempotency_ttl = idempotency_ttl
        self._answered: dict[str, tuple[str, float]] = {}
        """idempotencyKey -> (messageId, when it expires)."""

    def routes(self) -> list[Route]:
        return [
            Route("/v3/smtp/email", self._send, methods=["POST"]),
            Route("/v3/account", self._account, methods=["GET"]),
        ]

    def reset(self) -> None:
        super().reset()
        self._answered.clear()

    def _failure(self, status: int) -> Response:
        if status in (502, 503, 504):  # a front proxy's page, not Brevo's JSON
            return PlainTextResponse(f"{status} Service Unavailable", status_code=status)
        code, message = _ERRORS.get(status, ("bad_request", "error"))
        response = _error(status, self.behaviour.error or code, message)
        if status == 429:
            reset = self.behaviour.retry_after or DEFAULT_RESET_SECONDS
            response.headers["x-sib-ratelimit-limit"] = "1000"
            response.headers["x-sib-ratelimit-remaining"] = "0"
            response.headers["x-sib-ratelimit-reset"] = reset
        return response

    async def _account(self, request: Request) -> Response:
        if request.headers.get("api-key") != self.api_key:
            return _error(401, "unauthorized", "Key not found")
        failure = await self.misbehave(request, self._failure)
        return failure or JSONResponse(
            {
                "email": "owner@example.com",
                "companyName": "Example",
                "plan": [{"type": "payAsYouGo", "credits": 10000, "creditsType": "sendLimit"}],
                "relay": {"enabled": True, "data": {"relay": "smtp-relay.brevo.com", "port": 587}},
            }
        )

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        if request.headers.get("api-key") != self.api_key:
            return _error(401, "unauthorized", "Key not found")
        failure = await self.misbehave(request, self._failure)
        if failure is not None:
            if "retry-after" in failure.headers:
                del failure.headers["retry-after"]  # Brevo speaks x-sib-ratelimit-reset
            return failure
        raw = await request.body()
        if len(raw) > MAX_BYTES:
            return _error(400, "invalid_parameter", "Message size exceeds the allowed limit")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "bad_request", "Malformed JSON")
        problem = _validate(body)
        if problem is not None:
            return _error(400, *problem)
        headers = body.get("headers") or {}
        key = headers.get("idempotencyKey")
        now = time.monotonic()
        self._forget_expired(now)
        earlier = self._answered.get(key) if key is not None else None
        if earlier is not None and earlier[1] > now:
            return JSONResponse({"messageId": earlier[0]}, status_code=201)
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        message_id = f"<{stamp}.{secrets.randbelow(10**12):012d}@smtp-relay.mailin.fr>"
        if key is not None:
            self._answered[key] = (message_id, now + self.idempotency_ttl)
        custom = _custom(headers.get("X-Mailin-custom"))
        mailgate_id = custom.get("mailgate_id") or headers.get("X-Mailgate-Id")
        recipients = [a["email"] for kind in ("to", "cc", "bcc") for a in body.get(kind) or []]
        self.record(message_id, mailgate_id, _as_delivered(body), recipients=recipients)
        return JSONResponse({"messageId": message_id}, status_code=201)

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One POST per event, a second apart, each a Brevo webhook object."""
        pair = f"{self.webhook_username}:{self.webhook_password}".encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {base64.b64encode(pair).decode()}",
        }
        start = time.time()
        return [
            SignedPost(dict(headers), json.dumps(_event(outcome, start + i)).encode())
            for i, outcome in enumerate(happened)
        ]

    def _forget_expired(self, now: float) -> None:
        """Drop expired keys, oldest first (cheap: keys expire in the order they came)."""
        while self._answered:
            oldest = next(iter(self._answered))
            if self._answered[oldest][1] > now:
                return
            del self._answered[oldest]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _custom(value: Any) -> dict[str, Any]:
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _as_delivered(body: dict[str, Any]) -> dict[str, Any]:
    """The body with the display names Brevo would drop removed (its known bug)."""

    def fix(address: dict[str, Any]) -> dict[str, Any]:
        name = address.get("name")
        if isinstance(name, str) and not name.isascii() and any(c in _SPECIALS for c in name):
            return {k: v for k, v in address.items() if k != "name"}
        return address

    out = dict(body)
    out["sender"] = fix(body["sender"])
    for kind in ("to", "cc", "bcc"):
        if body.get(kind):
            out[kind] = [fix(a) for a in body[kind]]
    return out


def _validate(body: Any) -> tuple[str, str] | None:
    """The first problem Brevo would report, as (code, message), or None."""
    if not isinstance(body, dict):
        return "bad_request", "Malformed JSON"
    sender = body.get("sender")
    if not isinstance(sender, dict) or not sender.get("email"):
        return "missing_parameter", "sender is missing"
    if "@" not in str(sender["email"]):
        return "invalid_parameter", "valid sender email required"
    if not body.get("to"):
        return "missing_parameter", "to is missing"
    total = 0
    for kind in ("to", "cc", "bcc"):
        for address in body.get(kind) or []:
            if not isinstance(address, dict) or "@" not in str(address.get("email", "")):
                return "invalid_parameter", f"email is not valid in {kind}"
            total += 1
    if total > MAX_RECIPIENTS:
        return "invalid_parameter", "Maximum number of recipients exceeded"
    reply_to = body.get("replyTo")
    if reply_to is not None and (not isinstance(reply_to, dict) or "@" not in reply_to["email"]):
        return "invalid_parameter", "valid replyTo email required"
    if not body.get("subject") and not body.get("templateId"):
        return "missing_parameter", "subject is missing"
    if not body.get("htmlContent") and not body.get("textContent") and not body.get("templateId"):
        return "missing_parameter", "Either of htmlContent or textContent is required"
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or any(not isinstance(v, str) for v in headers.values()):
        return "invalid_parameter", "headers values must be strings"
    tags = body.get("tags") or []
    if not isinstance(tags, list) or any(not isinstance(t, str) for t in tags):
        return "invalid_parameter", "tags must be an array of strings"
    for attachment in body.get("attachment") or []:
        name = str(attachment.get("name") or "")
        if not name or not (attachment.get("content") or attachment.get("url")):
            return "missing_parameter", "attachment name and content or url are required"
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if extension not in ALLOWED_EXTENSIONS:
            return "invalid_parameter", f"Unsupported file extension in attachment: {name}"
    return None


WEBHOOK_ID = 1234567
"""Brevo's `id` in an event: the webhook's (or account's) id, the same in every event."""
_LINK = re.compile(r"""https?://[^\s"'<>]+""")

# outcome (kind, bounce) -> (Brevo event, reason)
_EVENTS: dict[tuple[str, str | None], tuple[str, str | None]] = {
    ("delivered", None): ("delivered", None),
    ("deferred", None): ("deferred", "421 4.7.0 Try again later"),
    ("bounced", "hard"): ("hard_bounce", "550 5.1.1 RecipientError: mailbox unavailable"),
    ("bounced", "soft"): ("soft_bounce", "452 4.2.2 Mailbox full"),
    ("complained", None): ("spam", None),
    ("opened", None): ("unique_opened", None),
    ("clicked", None): ("click", None),
    ("unsubscribed", None): ("unsubscribed", None),
}


def _event(outcome: Outcome, when: float) -> dict[str, Any]:
    """The webhook object Brevo posts for one outcome."""
    body = outcome.received.fields
    bounce = (outcome.bounce or "hard") if outcome.kind == "bounced" else None
    if (outcome.kind, bounce) not in _EVENTS:
        raise ValueError(f"no Brevo event for outcome {outcome.kind!r}")
    name, reason = _EVENTS[(outcome.kind, bounce)]
    seconds = int(when)
    event: dict[str, Any] = {
        "event": name,
        "email": outcome.recipient,
        "id": WEBHOOK_ID,
        # `date` is in the account's time zone (CET/CEST at Brevo); the fake's is UTC.
        "date": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "ts": seconds,
        "message-id": outcome.received.provider_message_id,
        "ts_event": seconds,
        "subject": body.get("subject") or "",
        "sending_ip": "192.0.2.40",
        "ts_epoch": int(when * 1000),
    }
    headers = body.get("headers") or {}
    if isinstance(headers.get("X-Mailin-custom"), str):
        event["X-Mailin-custom"] = headers["X-Mailin-custom"]
    tags = body.get("tags")
    if tags:
        event["tags"] = list(tags)
        event["tag"] = json.dumps(list(tags), separators=(",", ":"))
    if reason is not None:
        event["reason"] = reason
    if name == "click":
        event["link"] = _link(body.get("htmlContent"), body.get("textContent"))
    return event


def _link(html: Any, text: Any) -> str:
    """The first link in the message, as a recipient would click it."""
    for part in (html, text):
        found = _LINK.search(part) if isinstance(part, str) else None
        if found:
            return found.group(0)
    return "https://example.com/"
