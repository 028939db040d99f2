"""A local SendGrid v3 Mail Send: `POST /v3/mail/send`, 202 with `X-Message-Id`.

Enforces what the real one does for the requests mailgate makes (bearer
key, JSON shape, recipient limits and duplicates, string-only headers and
custom args, size) and answers errors in SendGrid's `{"errors": [...]}` form.

Its Signed Event Webhook posts one JSON array per taken message (a
`processed` event per recipient, then each outcome), signed with ECDSA
P-256 over timestamp + body like SendGrid's; `webhook_public_key` is the
verification key as SendGrid's UI shows it (what `webhook_secret` takes).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

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
    def __init__(
        self,
        api_key: str,
        *,
        keep: int | None = None,
        webhook_private_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.webhook_private_key = webhook_private_key or ec.generate_private_key(ec.SECP256R1())
        """What signs the event webhook (SendGrid keeps its own; a new one per fake)."""
        der = self.webhook_private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.webhook_public_key = base64.b64encode(der).decode()
        """The verification key: base64 DER SubjectPublicKeyInfo, no PEM armour."""

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
        recipients = [
            str(address["email"])
            for p in body["personalizations"]
            for kind in ("to", "cc", "bcc")
            for address in p.get(kind) or []
        ]
        self.record(message_id, custom_args.get("mailgate_id"), body, recipients=recipients)
        return Response(status_code=202, headers={"X-Message-Id": message_id})

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One batch, as SendGrid posts them: a JSON array ending in CRLF, signed."""
        if not happened:
            return []
        now = int(time.time())
        events: list[dict[str, Any]] = []
        processed: set[tuple[str, str]] = set()
        for outcome in happened:
            pair = (outcome.received.provider_message_id, outcome.recipient)
            if pair not in processed:
                processed.add(pair)
                events.append(_event("processed", outcome, now))
            events.append(_outcome_event(outcome, now))
        body = (json.dumps(events, separators=(",", ":")) + "\r\n").encode()
        timestamp = str(now)
        signature = self.webhook_private_key.sign(
            timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }
        return [SignedPost(headers=headers, body=body)]


def _event(name: str, outcome: Outcome, now: int, **fields: Any) -> dict[str, Any]:
    """An event with the fields every SendGrid event has, custom args as top-level keys."""
    body = outcome.received.fields
    provider_id = outcome.received.provider_message_id
    event: dict[str, Any] = {
        "email": outcome.recipient,
        "timestamp": now,
        "event": name,
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(36)).decode(),
        "sg_message_id": f"{provider_id}.filterdrecv-fake-1-{secrets.token_hex(4).upper()}-0.0",
        "smtp-id": f"<{provider_id}@ismtpd0001p1fake.sendgrid.net>",
    }
    if body.get("categories"):
        event["category"] = list(body["categories"])
    return {**(body.get("custom_args") or {}), **event, **fields}


def _outcome_event(outcome: Outcome, now: int) -> dict[str, Any]:
    agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
    match outcome.kind, outcome.bounce:
        case "delivered", _:
            return _event("delivered", outcome, now, response="250 2.0.0 OK", tls=1)
        case "deferred", _:
            return _event("deferred", outcome, now, response="452 4.2.2 Mailbox full", attempt="1")
        case "bounced", "soft":
            return _event(
                "bounce",
                outcome,
                now,
                type="blocked",
                status="4.2.2",
                reason="452 4.2.2 Mailbox full",
                bounce_classification="Mailbox Unavailable",
            )
        case "bounced", _:
            return _event(
                "bounce",
                outcome,
                now,
                type="bounce",
                status="5.1.1",
                reason="550 5.1.1 The email account that you tried to reach does not exist.",
                bounce_classification="Invalid Address",
            )
        case "complained", _:
            return _event("spamreport", outcome, now)
        case "opened", _:
            return _event("open", outcome, now, useragent=agent, ip="192.0.2.1")
        case "clicked", _:
            return _event(
                "click",
                outcome,
                now,
                url="https://example.com/",
                url_offset={"index": 0, "type": "html"},
                useragent=agent,
                ip="192.0.2.1",
            )
        case "unsubscribed", _:
            return _event("unsubscribe", outcome, now)
    raise ValueError(f"unknown outcome {outcome.kind!r}")


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
