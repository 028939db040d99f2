"""A local SendGrid v3 Mail Send: `POST /v3/mail/send`, 202 with `X-Message-Id`.

Enforces what the real one does for the requests mailgate makes (bearer
key, JSON shape, recipient limits and duplicates, string-only headers and
custom args, size) and answers errors in SendGrid's `{"errors": [...]}` form.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider

MAX_BYTES = 30 * 1024 * 1024
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000

_ERROR_MESSAGES = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    413: "The JSON payload you have included in your request is too large.",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


def _error(status: int, message: str | None = None, field: str | None = None) -> JSONResponse:
    message = message or _ERROR_MESSAGES.get(status, "error")
    return JSONResponse(
        {"errors": [{"message": message, "field": field, "help": None}]}, status_code=status
    )


class FakeSendGrid(FakeProvider):
    def __init__(self, api_key: str, *, keep: int | None = None) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key

    def routes(self) -> list[Route]:
        return [
            Route("/v3/mail/send", self._send, methods=["POST"]),
            Route("/v3/scopes", self._scopes, methods=["GET"]),
        ]

    async def _scopes(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401)
        failure = await self.misbehave(request, _error)
        return failure or JSONResponse({"scopes": ["mail.send"]})

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401)
        failure = await self.misbehave(request, _error)
        if failure is not None:
            return failure
        raw = await request.body()
        if len(raw) > MAX_BYTES:
            return _error(413)
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "Bad Request")
        problem = _validate(body)
        if problem is not None:
            return _error(400, *problem)
        message_id = secrets.token_urlsafe(16)[:22]
        custom_args = body.get("custom_args") or {}
        self.record(message_id, custom_args.get("mailgate_id"), body)
        return Response(status_code=202, headers={"X-Message-Id": message_id})


def _validate(body: Any) -> tuple[str, str | None] | None:
    """The first problem SendGrid would report, as (message, field), or None."""
    if not isinstance(body, dict):
        return "Bad Request", "body"
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return "The from object must be provided for every email send.", "from"
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return (
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        )
    seen: set[str] = set()
    total = 0
    for i, p in enumerate(personalizations):
        if not p.get("to"):
            return (
                "The to array is required for all personalization objects.",
                f"personalizations.{i}.to",
            )
        for kind in ("to", "cc", "bcc"):
            for address in p.get(kind) or []:
                email = str(address.get("email", "")).lower()
                if "@" not in email:
                    return "Does not contain a valid address.", f"personalizations.{i}.{kind}"
                if email in seen:
                    return (
                        "Each email address in the personalization block should be unique "
                        "between to, cc, and bcc.",
                        f"personalizations.{i}.{kind}",
                    )
                seen.add(email)
                total += 1
    if total > MAX_RECIPIENTS:
        return "The total number of recipients must be no more than 1000.", "personalizations"
    if not body.get("subject") and not body.get("template_id"):
        return "The subject is required.", "subject"
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return "The content value must be a string at least one character in length.", "content"
    types = [c.get("type") for c in content]
    if "text/plain" in types and types[0] != "text/plain":
        return "If present, text/plain content must be first.", "content"
    for key in ("headers", "custom_args"):
        values = body.get(key) or {}
        if any(not isinstance(v, str) for v in values.values()):
            return "Bad Request", None  # SendGrid's own vague answer to non-string values
    if len(json.dumps(body.get("custom_args") or {})) > MAX_CUSTOM_ARGS_BYTES:
        return "custom_args must total less than 10000 bytes", "custom_args"
    for i, attachment in enumerate(body.get("attachments") or []):
        if not attachment.get("filename") or not attachment.get("content"):
            return "The attachment filename and content are required.", f"attachments.{i}"
    return None
