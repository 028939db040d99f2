"""A local Mandrill `POST /api/1.0/messages/send.json`: key in the body, per-recipient results.

Checks the `key` in the JSON body and validates what the real one does for
the requests mailgate makes (sender, typed recipients, string headers, tags
not starting with `_`, attachments); answers 200 with one `{email, status,
_id, reject_reason, queued_reason}` per recipient (`invalid` for an address
that is not one), and API errors as Mandrill does: HTTP 500 with
`{"status": "error", "code", "name", "message"}`. `Behaviour.error` names
the error (`Invalid_Key`, `ValidationError`, `ServiceUnavailable`,
`GeneralError`, ...); without a name the fake answers a bare status in
plain text, as a front proxy would. `rejects` is Mandrill's rejection list
(lower-case address → reject reason); `verified_domains`, when set, refuses
other sender domains as `unsigned`.

Its webhook posts one form field, `mandrill_events` (a JSON array of every
event of a taken message, slashes escaped as Mandrill's PHP does), signed
like Mandrill's: base64 HMAC-SHA1(`webhook_key`, the webhook URL as
registered, which is `webhook_url`, + "mandrill_events" + the JSON). Events
name each recipient's own `_id`, as Mandrill's do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

_ERRORS: dict[str, tuple[int, str]] = {
    "Invalid_Key": (-1, "Invalid API key"),
    "ValidationError": (-2, "Validation error: the message is not valid"),
    "GeneralError": (-1, "An unexpected error occurred processing the request"),
    "ServiceUnavailable": (-99, "The service is temporarily unavailable"),
    "PaymentRequired": (-1, "This feature is only available for paid accounts"),
    "Unknown_Subaccount": (12, "No subaccount exists with the id given"),
    "PoorReputation": (-1, "The account's reputation is too low to send"),
}
_PLAIN = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _api_error(name: str, message: str | None = None, status: int = 500) -> JSONResponse:
    code, default = _ERRORS.get(name, (-1, name))
    return JSONResponse(
        {"status": "error", "code": code, "name": name, "message": message or default},
        status_code=status,
    )


RECIPIENT_IDS_KEPT = 10_000
"""Messages whose per-recipient `_id`s the fake remembers for its events (oldest forgotten)."""


class FakeMandrill(FakeProvider):
    def __init__(
        self, api_key: str, *, keep: int | None = None, webhook_key: str | None = None
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.webhook_key = webhook_key or secrets.token_urlsafe(16)[:22]
        """The webhook's "authentication key" (not the API key): what `webhook_secret` takes."""
        self._recipient_ids: dict[str, dict[str, str]] = {}
        """Taken message's id → lower-case recipient → that recipient's own `_id`."""
        self.rejects: dict[str, str] = {}
        """Mandrill's rejection list: address → reject_reason (`hard-bounce`, `unsub`, ...)."""
        self.verified_domains: set[str] | None = None
        """Sender domains set up for sending; None: every domain is."""

    def routes(self) -> list[Route]:
        return [
            Route("/api/1.0/messages/send.json", self._send, methods=["POST"]),
            Route("/api/1.0/users/ping.json", self._ping, methods=["POST"]),
        ]

    async def _ping(self, request: Request) -> Response:
        """The health probe: "PONG!" for a known key."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _api_error("ValidationError", "You must specify a valid JSON request body")
        if not isinstance(body, dict) or body.get("key") != self.api_key:
            return _api_error("Invalid_Key")
        return JSONResponse("PONG!")

    def _misbehaving(self, status: int) -> Response:
        if self.behaviour.error is not None:
            return _api_error(self.behaviour.error, status=status)
        return PlainTextResponse(_PLAIN.get(status, "Error"), status_code=status)

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _api_error("ValidationError", "You must specify a valid JSON request body")
        if not isinstance(body, dict) or not body.get("key"):
            return _api_error("Invalid_Key", "You must specify a key value")
        if body["key"] != self.api_key:
            return _api_error("Invalid_Key")
        failure = await self.misbehave(request, self._misbehaving)
        if failure is not None:
            return failure
        message = body.get("message")
        if not isinstance(message, dict):
            return _api_error("ValidationError", "Validation error: message is required")
        problem = _validate(message)
        if problem is not None:
            return _api_error("ValidationError", f"Validation error: {problem}")
        results = [self._result(message["from_email"], r["email"]) for r in message["to"]]
        taken = [r for r in results if r["status"] == "sent"]
        if taken:
            metadata = message.get("metadata") or {}
            provider_id = str(taken[0]["_id"])
            self._remember(provider_id, {r["email"].lower(): str(r["_id"]) for r in taken})
            # Only the recipients Mandrill took have a life to report; the refused ones
            # were answered `rejected` or `invalid` just now.
            self.record(
                provider_id,
                metadata.get("mailgate_id"),
                message,
                recipients=[r["email"] for r in taken],
            )
        return JSONResponse(results)

    def _remember(self, provider_id: str, ids: dict[str, str]) -> None:
        self._recipient_ids[provider_id] = ids
        while len(self._recipient_ids) > RECIPIENT_IDS_KEPT:
            del self._recipient_ids[next(iter(self._recipient_ids))]

    def _recipient_id(self, provider_id: str, recipient: str) -> str:
        """The recipient's own `_id` (made up, once, for a message recorded without them)."""
        ids = self._recipient_ids.get(provider_id)
        if ids is None:
            ids = {}
            self._remember(provider_id, ids)
        if recipient.lower() not in ids:
            taken = provider_id in ids.values()
            ids[recipient.lower()] = secrets.token_hex(16) if taken else provider_id
        return ids[recipient.lower()]

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One batch of every event, as Mandrill posts them, signed over `webhook_url`."""
        if not happened:
            return []
        now = int(time.time())
        events = [self._event(outcome, now) for outcome in happened]
        # Mandrill's JSON escapes "/" (PHP's json_encode); a valid escape, kept as posted.
        payload = json.dumps(events, separators=(",", ":")).replace("/", "\\/")
        signed = (self.webhook_url or "") + "mandrill_events" + payload
        mac = hmac.new(self.webhook_key.encode(), signed.encode(), hashlib.sha1).digest()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Mandrill-Webhook/1.0",
            "X-Mandrill-Signature": base64.b64encode(mac).decode(),
        }
        body = urlencode({"mandrill_events": payload}).encode()
        return [SignedPost(headers=headers, body=body)]

    def _event(self, outcome: Outcome, now: int) -> dict[str, Any]:
        message = outcome.received.fields
        event_id = self._recipient_id(outcome.received.provider_message_id, outcome.recipient)
        msg: dict[str, Any] = {
            "ts": int(outcome.received.at),
            "subject": message.get("subject"),
            "email": outcome.recipient,
            "sender": message.get("from_email"),
            "tags": list(message.get("tags") or []),
            "opens": [],
            "clicks": [],
            "state": "sent",
            "metadata": dict(message.get("metadata") or {}),
            "_id": event_id,
            "_version": secrets.token_urlsafe(16)[:22],
        }
        event: dict[str, Any] = {"event": "send", "msg": msg, "_id": event_id, "ts": now}
        agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Firefox/120.0"
        match outcome.kind, outcome.bounce:
            case "delivered", _:
                pass
            case "deferred", _:
                msg["state"] = "deferred"
                msg["smtp_events"] = [
                    {
                        "ts": now,
                        "type": "deferred",
                        "diag": "452 4.2.2 Mailbox full",
                        "source_ip": "192.0.2.10",
                        "destination_ip": "192.0.2.20",
                        "size": 0,
                    }
                ]
                event["event"] = "deferral"
            case "bounced", "soft":
                msg |= {
                    "state": "soft-bounced",
                    "bounce_description": "mailbox_full",
                    "bgtools_code": 22,
                    "diag": "smtp;552 5.2.2 Over Quota",
                }
                event["event"] = "soft_bounce"
            case "bounced", _:
                msg |= {
                    "state": "bounced",
                    "bounce_description": "bad_mailbox",
                    "bgtools_code": 10,
                    "diag": "smtp;550 5.1.1 The email account that you tried to reach does "
                    "not exist.",
                }
                event["event"] = "hard_bounce"
            case "complained", _:
                event["event"] = "spam"
            case "opened", _:
                msg["opens"] = [{"ts": now}]
                event |= {"event": "open", "ip": "192.0.2.1", "user_agent": agent}
            case "clicked", _:
                msg["opens"] = [{"ts": now}]
                msg["clicks"] = [{"ts": now, "url": "https://example.com/"}]
                event |= {
                    "event": "click",
                    "ip": "192.0.2.1",
                    "user_agent": agent,
                    "url": "https://example.com/",
                }
            case "unsubscribed", _:
                event["event"] = "unsub"
            case _:
                raise ValueError(f"unknown outcome {outcome.kind!r}")
        event["ts"] = event.pop("ts")  # Mandrill writes `ts` last
        return event

    def _result(self, sender: str, email: str) -> dict[str, Any]:
        domain = sender.rpartition("@")[2].lower()
        reason = self.rejects.get(email.lower())
        if self.verified_domains is not None and domain not in self.verified_domains:
            reason = "unsigned"
        if "@" not in email:
            return {"email": email, "status": "invalid", "reject_reason": None}
        if reason is not None:
            return {"email": email, "status": "rejected", "reject_reason": reason}
        return {
            "email": email,
            "status": "sent",
            "_id": secrets.token_hex(16),
            "reject_reason": None,
            "queued_reason": None,
        }


def _validate(message: dict[str, Any]) -> str | None:
    """The first problem Mandrill's ValidationError would name, or None."""
    sender = message.get("from_email")
    if not isinstance(sender, str) or "@" not in sender:
        return "message.from_email must be a valid email address"
    recipients = message.get("to")
    if not isinstance(recipients, list) or not recipients:
        return "message.to must have at least one recipient"
    for i, recipient in enumerate(recipients):
        if not isinstance(recipient, dict) or not isinstance(recipient.get("email"), str):
            return f"message.to[{i}].email is required"
        if recipient.get("type", "to") not in ("to", "cc", "bcc"):
            return f"message.to[{i}].type must be one of to, cc, bcc"
    headers = message.get("headers") or {}
    if not isinstance(headers, dict) or any(not isinstance(v, str) for v in headers.values()):
        return "message.headers must map names to strings"
    if not isinstance(message.get("metadata") or {}, dict):
        return "message.metadata must be an object"
    for tag in message.get("tags") or []:
        if not isinstance(tag, str) or tag.startswith("_"):
            return f"message.tags: {tag!r} is reserved (tags starting with _ are Mandrill's)"
    for i, attachment in enumerate(message.get("attachments") or []):
        if not all(attachment.get(k) for k in ("type", "name", "content")):
            return f"message.attachments[{i}] needs type, name and content"
        try:
            base64.b64decode(attachment["content"], validate=True)
        except (binascii.Error, ValueError):
            return f"message.attachments[{i}].content is not base64"
    return None
