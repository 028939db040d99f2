"""A local SparkPost Transmissions API: `POST /api/v1/transmissions`, JSON, raw key.

Enforces what the real one does for the requests mailgate makes (the key,
bare or as basic auth; content and recipients present; headers SparkPost
sets itself refused; at most 10 tags per recipient; metadata and content
sizes) and answers in SparkPost's forms: 200 `{"results": {"id", ...}}`,
with `rcpt_to_errors` and a code-2000 warning when recipients were refused,
and errors as `{"errors": [{"message", "description", "code"}]}`.
`Behaviour.error` picks the code an error answer carries (e.g. `"7001"`
with status 400, `"2103"` with 420); `rejected` lists addresses the fake
refuses as SparkPost refuses invalid recipients.

With `webhook_url` set it posts each message's events as SparkPost's
webhooks do: one batch, a JSON array of `{"msys": {"message_event" |
"track_event" | "unsubscribe_event": {...}}}` with a unique `event_id` each
and an `X-MessageSystems-Batch-ID` header, authorised with the webhook's
basic-auth pair (`webhook_username` / `webhook_password`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

MAX_CONTENT_BYTES = 20 * 1024 * 1024
MAX_METADATA_BYTES = 10 * 1024
MAX_TAGS_PER_RECIPIENT = 10
RESTRICTED_HEADERS = frozenset(
    {"from", "to", "subject", "reply-to", "content-type", "content-transfer-encoding"}
)

# code -> (message, description) for the codes the fake answers with.
_CODES: dict[str, tuple[str, str | None]] = {
    "1300": ("invalid data format/type/length", None),
    "1400": ("required field is missing", None),
    "1500": ("Failed to update database", "an internal error occurred"),
    "1502": ("Server resources unavailable", "retry later"),
    "1900": ("Message generation module not available", "retry later"),
    "2101": ("Exceed Sending Limit (hourly)", None),
    "2102": ("Exceed Sending Limit (daily)", None),
    "2103": ("Exceed Sending Limit (sandbox)", "the sandbox domain allows 5 messages"),
    "3002": ("Invalid header", None),
    "7000": ("Sending domain blacklisted", None),
    "7001": ("Invalid Sending/Tracking Domain", "unconfigured or unverified sending domain"),
}
_DEFAULT_CODES = {400: "1300", 420: "2101", 422: "1400", 500: "1500", 503: "1900"}
_STATUS_MESSAGES = {
    401: "Unauthorized.",
    403: "Forbidden.",
    404: "invalid URI",
    413: "Request entity too large",
    429: "Too many requests",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


def _error(status: int, code: str | None = None, description: str | None = None) -> JSONResponse:
    if code is None and status not in _STATUS_MESSAGES:
        code = _DEFAULT_CODES.get(status, "1300")
    if code is None:
        error: dict[str, str] = {"message": _STATUS_MESSAGES[status]}
    else:
        message, default = _CODES.get(code, ("error", None))
        error = {"message": message, "code": code}
        if description or default:
            error["description"] = description or str(default)
    return JSONResponse({"errors": [error]}, status_code=status)


class FakeSparkPost(FakeProvider):
    def __init__(
        self,
        api_key: str,
        *,
        keep: int | None = None,
        webhook_username: str | None = None,
        webhook_password: str | None = None,
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.webhook_username = webhook_username or f"sparkpost-{secrets.token_hex(4)}"
        self.webhook_password = webhook_password or secrets.token_urlsafe(24)
        """The webhook's `auth_credentials` (`auth_type` basic) the batches are posted with."""
        self.rejected: set[str] = set()
        """Recipient addresses refused at validation (the rest are accepted)."""
        self.account_readable = True
        """False: the key may only send, and the account record answers 403."""

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/transmissions", self._send, methods=["POST"]),
            Route("/api/v1/account", self._account, methods=["GET"]),
        ]

    async def _account(self, request: Request) -> Response:
        """The health probe reads this; a key without Account: Read gets a 403."""
        if not self._authorized(request):
            return _error(401)
        if not self.account_readable:
            return _error(403)
        return JSONResponse(
            {"results": {"customer_id": 123456, "status": "active", "subscription": {}}}
        )

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        basic = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        return given in (self.api_key, basic)

    def _misbehaving(self, status: int) -> Response:
        return _error(status, self.behaviour.error)

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        if not self._authorized(request):
            return _error(401)
        failure = await self.misbehave(request, self._misbehaving)
        if failure is not None:
            return failure
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "1300", "problems parsing request as json")
        problem = _validate(body)
        if problem is not None:
            return _error(*problem)
        if _content_size(body["content"]) > MAX_CONTENT_BYTES:
            return _error(422, "1300", "content is larger than 20 MB")
        recipients = body["recipients"]
        rcpt_to_errors = [
            {
                "message": "invalid data format/type/length",
                "description": f"invalid recipient address {r['address']['email']}",
                "code": "1300",
            }
            for r in recipients
            if r["address"]["email"].lower() in {a.lower() for a in self.rejected}
        ]
        accepted = len(recipients) - len(rcpt_to_errors)
        transmission_id = str(secrets.randbelow(9 * 10**16) + 10**16)
        results: dict[str, Any] = {
            "total_rejected_recipients": len(rcpt_to_errors),
            "total_accepted_recipients": accepted,
            "id": transmission_id,
        }
        answer: dict[str, Any] = {"results": results}
        if rcpt_to_errors:
            results["rcpt_to_errors"] = rcpt_to_errors
            answer["errors"] = [
                {"message": "transmission created, but with validation errors", "code": "2000"}
            ]
        if accepted:
            metadata = body.get("metadata") or {}
            refused = {e.lower() for e in self.rejected}
            self.record(
                transmission_id,
                metadata.get("mailgate_id"),
                body,
                recipients=[
                    r["address"]["email"]
                    for r in recipients
                    if r["address"]["email"].lower() not in refused
                ],
            )
        return JSONResponse(answer)

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One batch of all the outcomes, a second apart, as SparkPost's webhook posts it."""
        if not happened:
            return []
        pair = f"{self.webhook_username}:{self.webhook_password}".encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {base64.b64encode(pair).decode()}",
            "User-Agent": "SparkPost",
            "X-MessageSystems-Batch-ID": uuid.uuid4().hex,
        }
        start = time.time()
        batch = [_event(outcome, start + i) for i, outcome in enumerate(happened)]
        return [SignedPost(headers, json.dumps(batch).encode())]


def _validate(body: Any) -> tuple[int, str, str] | None:
    """The first problem SparkPost would report, as (status, code, description), or None."""
    if not isinstance(body, dict):
        return 400, "1300", "the request body must be a JSON object"
    content = body.get("content")
    if not isinstance(content, dict):
        return 422, "1400", "content is a required field"
    sender = content.get("from")
    sender_email = sender.get("email") if isinstance(sender, dict) else sender
    if not isinstance(sender_email, str) or "@" not in sender_email:
        return 422, "1400", "content.from is a required field"
    if not content.get("subject"):
        return 422, "1400", "content.subject is a required field"
    if not content.get("text") and not content.get("html"):
        return 422, "1400", "at least one of content.text or content.html is required"
    headers = content.get("headers") or {}
    if not isinstance(headers, dict) or any(not isinstance(v, str) for v in headers.values()):
        return 422, "1300", "content.headers must map names to strings"
    for name in headers:
        if name.lower() in RESTRICTED_HEADERS:
            return 422, "3002", f"content.headers may not set {name}"
    for i, attachment in enumerate(content.get("attachments") or []):
        if not all(attachment.get(k) for k in ("name", "type", "data")):
            return 422, "1400", f"content.attachments[{i}] needs name, type and data"
        try:
            base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            return 422, "1300", f"content.attachments[{i}].data is not base64"
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        return 422, "1400", "recipients or list_id required"
    for i, recipient in enumerate(recipients):
        address = recipient.get("address") if isinstance(recipient, dict) else None
        if not isinstance(address, dict) or not isinstance(address.get("email"), str):
            return 422, "1400", f"recipients[{i}].address.email is a required field"
        if len(recipient.get("tags") or []) > MAX_TAGS_PER_RECIPIENT:
            return 422, "1300", f"recipients[{i}].tags: at most 10 tags per recipient"
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        return 422, "1300", "metadata must be a JSON object"
    if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
        return 422, "1300", "metadata is larger than 10 KB"
    return None


def _content_size(content: dict[str, Any]) -> int:
    """Bytes of text, html and decoded attachments: what SparkPost's 20 MB limit counts."""
    size = sum(len(str(content.get(key) or "").encode()) for key in ("text", "html"))
    for attachment in content.get("attachments") or []:
        size += len(attachment["data"]) * 3 // 4
    return size


_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/124.0"
_LINK = re.compile(r"""https?://[^\s"'<>]+""")
_GEO = {"country": "US", "region": "MD", "city": "Columbia", "latitude": 39.1749}

# (type, bounce_class, error_code, reason) for the outcomes that carry an SMTP reply.
_FAILURES: dict[tuple[str, str | None], tuple[str, str, str, str]] = {
    ("deferred", None): ("delay", "21", "421", "421 4.7.0 Try again later"),
    ("bounced", "soft"): ("bounce", "22", "452", "452 4.2.2 Mailbox full"),
    ("bounced", "hard"): (
        "bounce",
        "10",
        "550",
        "550 5.1.1 The email account that you tried to reach does not exist",
    ),
}


def _event(outcome: Outcome, when: float) -> dict[str, Any]:
    """`{"msys": {<class>: event}}` for one outcome, with SparkPost's fields."""
    body = outcome.received.fields
    content = body.get("content") or {}
    sender = content.get("from")
    sender_email = sender.get("email") if isinstance(sender, dict) else str(sender)
    entry = next(
        (
            r
            for r in body.get("recipients") or []
            if r["address"]["email"].lower() == outcome.recipient.lower()
        ),
        {"address": {"email": outcome.recipient}},
    )
    event: dict[str, Any] = {
        "event_id": str(secrets.randbelow(9 * 10**16) + 10**16),
        "timestamp": str(int(when)),
        "transmission_id": outcome.received.provider_message_id,
        "message_id": secrets.token_hex(10),
        "customer_id": "1",
        "campaign_id": body.get("campaign_id") or "",
        "rcpt_to": outcome.recipient.lower(),
        "raw_rcpt_to": outcome.recipient,
        "rcpt_meta": {**(body.get("metadata") or {}), **(entry.get("metadata") or {})},
        "rcpt_tags": list(entry.get("tags") or []),
        "friendly_from": sender_email,
        "msg_from": f"msprvs1=bounce@{str(sender_email).rpartition('@')[2]}",
        "subject": content.get("subject") or "",
        "injection_time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "ip_pool": "default",
        "sending_ip": "192.0.2.25",
        "routing_domain": outcome.recipient.rpartition("@")[2].lower(),
        "transactional": "1",
    }
    rcpt_type = _recipient_type(entry, content, outcome.recipient)
    if rcpt_type is not None:
        event["rcpt_type"] = rcpt_type
    engaged = {"user_agent": _AGENT, "ip_address": "192.0.2.10", "geo_ip": _GEO}
    event_class = "message_event"
    match outcome.kind:
        case "delivered":
            event |= {"type": "delivery", "queue_time": "1200", "num_retries": "0"}
        case "deferred" | "bounced":
            key = (outcome.kind, None if outcome.kind == "deferred" else outcome.bounce or "hard")
            kind, bounce_class, code, reason = _FAILURES[key]
            event |= {
                "type": kind,
                "bounce_class": bounce_class,
                "error_code": code,
                "raw_reason": reason,
                "reason": reason,
                "num_retries": "1" if kind == "delay" else "0",
            }
        case "complained":
            event |= {
                "type": "spam_complaint",
                "fbtype": "abuse",
                "report_by": "server.mail.example.net",
                "report_to": "abuse.example.com",
            }
        case "opened":
            event_class = "track_event"
            event |= {"type": "open", **engaged}
        case "clicked":
            event_class = "track_event"
            link = _link(content.get("html"), content.get("text"))
            event |= {
                "type": "click",
                "target_link_url": link,
                "target_link_name": "link",
                **engaged,
            }
        case "unsubscribed":
            event_class = "unsubscribe_event"
            event |= {"type": "list_unsubscribe", "mailfrom": event["msg_from"]}
        case _:
            raise ValueError(f"no SparkPost event for outcome {outcome.kind!r}")
    return {"msys": {event_class: event}}


def _recipient_type(entry: dict[str, Any], content: dict[str, Any], email: str) -> str | None:
    """`cc` or `bcc` for a recipient not on the To line (SparkPost omits it for To)."""
    header_to = str(entry["address"].get("header_to") or email).lower()
    if email.lower() in header_to:
        return None
    cc = str((content.get("headers") or {}).get("Cc") or "").lower()
    return "cc" if email.lower() in cc else "bcc"


def _link(html: Any, text: Any) -> str:
    """The first link in the message, as a recipient would click it."""
    for body in (html, text):
        found = _LINK.search(body) if isinstance(body, str) else None
        if found:
            return found.group(0)
    return "https://example.com/"
