"""A local Resend Emails API: `POST /emails`, 200 `{"id": "<uuid>"}`.

Bearer key (401 `missing_api_key` without one, 403 `invalid_api_key` for a
wrong one), errors as `{statusCode, name, message}`, and Resend's
`Idempotency-Key` store: for 24 h a repeat with the same key and body gets
the first answer again and sends nothing; the same key with another body
is a 409 `invalid_idempotent_request`; while the first request is still
being handled, a 409 `concurrent_idempotent_requests`.

Also reproduces the address quirks django-anymail reports (a quoted display
name is refused, an RFC 2047 one in `from` is a 451 `security_error`), the
tag character rules and, with `verified_domains` set, the 403
`validation_error` for a sender domain that is not verified.

With `webhook_url` set, each taken message's events are posted as Resend
posts them through Svix: `{type, created_at, data}` signed with the
`whsec_` secret `webhook_secret` (`svix-id`, `svix-timestamp`,
`svix-signature`). One post per simulated outcome, its `data.to` naming
that outcome's recipient (real Resend reports once per email, with the
email's whole `to` list; for one recipient the two are the same).
Resend has no unsubscribe event, so none is posted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

IDEMPOTENCY_TTL = 24 * 3600.0
MAX_RECIPIENTS = 50
MAX_ATTACHMENT_BYTES = 40 * 1024 * 1024
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_ADDRESS = re.compile(r"^\s*(?:(?P<name>[^<>]*?)\s*<(?P<bracketed>[^<>]+)>|(?P<bare>[^<>\s]+))\s*$")

_FORMAT = (
    "The email address needs to follow the `email@example.com` or "
    "`Name <email@example.com>` format."
)
_VERIFY = "Please, add and verify your domain on https://resend.com/domains"
_TAG_RULE = "Tags should only contain ASCII letters, numbers, underscores, or dashes."

_NAMES = {
    400: "validation_error",
    401: "missing_api_key",
    403: "invalid_api_key",
    404: "not_found",
    409: "invalid_idempotent_request",
    422: "validation_error",
    429: "rate_limit_exceeded",
    451: "security_error",
    500: "internal_server_error",
}
_MESSAGES = {
    "missing_api_key": "Missing API key in the authorization header.",
    "invalid_api_key": "API key is invalid",
    "validation_error": "Invalid request.",
    "missing_required_field": "Missing required field.",
    "invalid_idempotent_request": (
        "Same idempotency key used with a different request payload. "
        "Change your idempotency key or payload."
    ),
    "concurrent_idempotent_requests": (
        "Same idempotency key used while the original request is still in progress. "
        "Try the request again later."
    ),
    "rate_limit_exceeded": "Too many requests. You can only make 2 requests per second.",
    "daily_quota_exceeded": "You have reached your daily email sending quota.",
    "monthly_quota_exceeded": "You have reached your monthly email sending quota.",
    "security_error": "The email payload contain invalid characters.",
    "internal_server_error": "An unexpected error occurred.",
    "application_error": "An unexpected error occurred.",
}


def _error(status: int, name: str | None = None, message: str | None = None) -> Response:
    if status in (502, 503, 504):  # from the edge in front of the API: not JSON
        return PlainTextResponse(f"error code: {status}", status_code=status)
    name = name or _NAMES.get(status, "application_error")
    body = {"statusCode": status, "name": name, "message": message or _MESSAGES.get(name, name)}
    response = JSONResponse(body, status_code=status)
    if name == "rate_limit_exceeded":
        response.headers.update(
            {
                "ratelimit-limit": "2",
                "ratelimit-remaining": "0",
                "ratelimit-reset": "1",
                "retry-after": "1",
            }
        )
    return response


@dataclass
class _Key:
    """One idempotency key: the body it came with and, once answered, the id given."""

    digest: str
    at: float
    message_id: str | None = None


_EVENT_TYPES = {
    "delivered": "email.delivered",
    "deferred": "email.delivery_delayed",
    "bounced": "email.bounced",
    "complained": "email.complained",
    "opened": "email.opened",
    "clicked": "email.clicked",
}
_BOUNCES = {
    "hard": {
        "type": "Permanent",
        "subType": "General",
        "message": "The recipient's email provider sent a hard bounce message, and Resend "
        "suppressed the address.",
    },
    "soft": {
        "type": "Transient",
        "subType": "General",
        "message": "The recipient's email provider sent a general bounce message.",
    },
}
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_webhook_secret() -> str:
    """A Svix endpoint secret: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _svix_id() -> str:
    """A Svix message id (`msg_` and 27 base62 characters, as Svix's KSUIDs look)."""
    return "msg_" + "".join(secrets.choice(_BASE62) for _ in range(27))


def _iso(when: float) -> str:
    return (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class FakeResend(FakeProvider):
    def __init__(
        self, api_key: str, *, keep: int | None = None, webhook_secret: str | None = None
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.webhook_secret = webhook_secret or new_webhook_secret()
        """The Svix endpoint secret the events are signed with (`whsec_<base64>`)."""
        self.keys: dict[str, _Key] = {}
        """Idempotency keys seen in the last 24 h."""
        self.verified_domains: set[str] | None = None
        """Domains allowed in `from`; None allows any."""
        self.full_access = False
        """Whether the key may do more than send (mailgate's needs only "sending access")."""

    def routes(self) -> list[Route]:
        return [
            Route("/emails", self._send, methods=["POST"]),
            Route("/domains", self._domains, methods=["GET"]),
        ]

    def _refused(self, request: Request) -> Response | None:
        """401 without a key, 403 with a wrong one; None when the key is right."""
        authorization = request.headers.get("authorization")
        if not authorization:
            return _error(401, "missing_api_key")
        if authorization != f"Bearer {self.api_key}":
            return _error(403, "invalid_api_key")
        return None

    async def _domains(self, request: Request) -> Response:
        """The account's domains (what a health probe reads); a sending-only key may not."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        failure = await self.misbehave(request, self._misbehaviour)
        if failure is not None:
            return failure
        if not self.full_access:
            return _error(
                401, "restricted_api_key", "This API key is restricted to only send emails"
            )
        return JSONResponse(
            {"data": [{"name": d, "status": "verified"} for d in self.verified_domains or ()]}
        )

    def reset(self) -> None:
        super().reset()
        self.keys.clear()
        self.verified_domains = None
        self.full_access = False

    def _misbehaviour(self, status: int) -> Response:
        return _error(status, self.behaviour.error)

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        refused = self._refused(request)
        if refused is not None:
            return refused
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "validation_error", "Invalid JSON body.")
        key = request.headers.get("idempotency-key")
        if key is None:
            response, _ = await self._take(request, body)
            return response
        if not 1 <= len(key) <= 256:
            return _error(400, "invalid_idempotency_key", "Key must be 1-256 characters.")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        known = self.keys.get(key)
        if known is not None and time.time() - known.at <= IDEMPOTENCY_TTL:
            if known.digest != digest:
                return _error(409, "invalid_idempotent_request")
            if known.message_id is None:
                return _error(409, "concurrent_idempotent_requests")
            return JSONResponse({"id": known.message_id})  # the first answer; nothing sent
        entry = self.keys[key] = _Key(digest, time.time())
        message_id: str | None = None
        try:
            response, message_id = await self._take(request, body)
        finally:
            if message_id is not None:
                entry.message_id = message_id
            elif self.keys.get(key) is entry:
                del self.keys[key]  # only a send is remembered: a failed request may be retried
        return response

    async def _take(self, request: Request, body: Any) -> tuple[Response, str | None]:
        failure = await self.misbehave(request, self._misbehaviour)
        if failure is not None:
            return failure, None
        problem = self._validate(body)
        if problem is not None:
            return _error(*problem), None
        message_id = str(uuid.uuid4())
        tags = {t["name"]: t.get("value") for t in body.get("tags") or []}
        mailgate_id = tags.get("mailgate_id") or (body.get("headers") or {}).get("X-Mailgate-Id")
        recipients = [
            address
            for field in ("to", "cc", "bcc")
            for _, address in getaddresses(_listed(body.get(field)))
        ]
        self.record(message_id, mailgate_id, body, recipients=recipients)
        return JSONResponse({"id": message_id}), message_id

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """Svix-signed `email.*` events, one per outcome (none for `unsubscribed`)."""
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        posts = []
        for outcome in happened:
            event_type = _EVENT_TYPES.get(outcome.kind)
            if event_type is None:
                continue
            fields = outcome.received.fields
            now = time.time()
            data: dict[str, Any] = {
                "email_id": outcome.received.provider_message_id,
                "created_at": _iso(outcome.received.at),
                "from": fields.get("from"),
                "to": [outcome.recipient],
                "subject": fields.get("subject"),
                "headers": [
                    {"name": name, "value": value}
                    for name, value in (fields.get("headers") or {}).items()
                ],
                "tags": {t["name"]: t.get("value") for t in fields.get("tags") or []},
            }
            if outcome.kind == "bounced":
                data["bounce"] = _BOUNCES[outcome.bounce or "hard"]
            elif outcome.kind == "clicked":
                data["click"] = {
                    "ipAddress": "198.51.100.7",
                    "link": "https://example.com/welcome",
                    "timestamp": _iso(now),
                    "userAgent": "Mozilla/5.0 (fake mailbox)",
                }
            elif outcome.kind == "opened":
                data["open"] = {
                    "ipAddress": "198.51.100.7",
                    "timestamp": _iso(now),
                    "userAgent": "Mozilla/5.0 (fake mailbox)",
                }
            body = json.dumps(
                {"type": event_type, "created_at": _iso(now), "data": data},
                separators=(",", ":"),
            ).encode()
            msg_id, stamp = _svix_id(), str(int(now))
            signed = f"{msg_id}.{stamp}.".encode() + body
            signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            posts.append(
                SignedPost(
                    headers={
                        "content-type": "application/json",
                        "svix-id": msg_id,
                        "svix-timestamp": stamp,
                        "svix-signature": f"v1,{signature}",
                    },
                    body=body,
                )
            )
        return posts

    def _validate(self, body: Any) -> tuple[int, str, str] | None:
        """The first problem Resend would report, as (status, name, message), or None."""
        if not isinstance(body, dict):
            return 422, "validation_error", "Invalid request body."
        for field in ("from", "to", "subject"):
            if not body.get(field):
                return 422, "missing_required_field", f"Missing `{field}` field."
        if body.get("html") is None and body.get("text") is None:
            return 422, "missing_required_field", "Missing `html` or `text` field."
        problem = _check_address("from", body["from"])
        if problem is not None:
            return problem
        domain = str(body["from"]).rpartition("@")[2].rstrip(">").strip().lower()
        if self.verified_domains is not None and domain not in self.verified_domains:
            message = f"The {domain} domain is not verified. {_VERIFY}"
            return 403, "validation_error", message
        for field in ("to", "cc", "bcc", "reply_to"):
            values = body.get(field) or []
            values = [values] if isinstance(values, str) else values
            if field == "to" and len(values) > MAX_RECIPIENTS:
                return 422, "validation_error", "Too many recipients in `to` (max 50)."
            for value in values:
                if (problem := _check_address(field, value)) is not None:
                    return problem
        headers = body.get("headers") or {}
        if not isinstance(headers, dict) or any(not isinstance(v, str) for v in headers.values()):
            return 422, "validation_error", "`headers` values must be strings."
        if not all(_tag_ok(tag) for tag in body.get("tags") or []):
            return 422, "validation_error", _TAG_RULE
        total = 0
        for attachment in body.get("attachments") or []:
            try:
                total += len(base64.b64decode(attachment.get("content") or "", validate=True))
            except (binascii.Error, ValueError):
                return 422, "invalid_attachment", "Attachment content must be base64."
            if not attachment.get("filename"):
                return 422, "invalid_attachment", "Attachment `filename` is required."
        if total > MAX_ATTACHMENT_BYTES:
            return 422, "invalid_attachment", "Attachments must total at most 40MB."
        return None


def _listed(value: Any) -> list[str]:
    """`to`, `cc` or `bcc` as a list (Resend takes a string or an array)."""
    if isinstance(value, str):
        return [value]
    return [v for v in value or [] if isinstance(v, str)] if isinstance(value, list) else []


def _check_address(field: str, value: Any) -> tuple[int, str, str] | None:
    """Resend's parser, as django-anymail describes it: no quoted display names, no
    RFC 2047 in `from` (a 451), and no comma in the sender's bare name."""
    match = _ADDRESS.match(value) if isinstance(value, str) else None
    name = (match.group("name") or "") if match else ""
    address = (match.group("bracketed") or match.group("bare")) if match else ""
    if field == "from" and name.startswith("=?"):
        return 451, "security_error", _MESSAGES["security_error"]
    if "@" not in address or name.startswith('"') or (field == "from" and "," in name):
        return 422, "validation_error", f"Invalid `{field}` field. {_FORMAT}"
    return None


def _tag_ok(tag: Any) -> bool:
    """A `{name, value?}` pair of ASCII letters, digits, `_` and `-`, at most 256 each."""
    if not isinstance(tag, dict):
        return False
    parts = [tag.get("name"), *([tag["value"]] if "value" in tag else [])]
    return all(isinstance(part, str) and _TAG.match(part) for part in parts)
