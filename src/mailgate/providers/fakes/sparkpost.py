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
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider

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
    def __init__(self, api_key: str, *, keep: int | None = None) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
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
            self.record(transmission_id, metadata.get("mailgate_id"), body)
        return JSONResponse(answer)


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
