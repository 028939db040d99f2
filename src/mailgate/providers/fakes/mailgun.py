"""A local Mailgun v3 Messages API: `POST /v3/{domain}/messages`, multipart form.

Basic auth `api:<key>`, repeated fields, `h:`/`o:`/`v:` prefixes, file parts
named `attachment`; answers 200 `{"id": "<...@domain>", "message": "Queued.
Thank you."}`, and errors as Mailgun does: `{"message": ...}`, a bare
"Forbidden" for a bad key, 404 for an unknown domain.

Its webhooks post one current-format JSON event per request, each signed
with HMAC-SHA256(`webhook_signing_key`, timestamp + a fresh 50-character
token) like Mailgun's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from email.utils import formatdate, getaddresses
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

MAX_BYTES = 25 * 1024 * 1024

_ERROR_MESSAGES = {
    400: "'to' parameter is not a valid address. please check documentation",
    403: "Domain is not allowed to send",
    413: "request entity too large",
    429: "Too many requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FakeMailgun(FakeProvider):
    def __init__(
        self,
        api_key: str,
        domain: str,
        *,
        keep: int | None = None,
        webhook_signing_key: str | None = None,
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.domain = domain
        self.webhook_signing_key = webhook_signing_key or secrets.token_hex(16)
        """The "HTTP webhook signing key" (not the API key): what `webhook_secret` takes."""

    def routes(self) -> list[Route]:
        return [
            Route("/v3/{domain}/messages", self._send, methods=["POST"]),
            Route("/v3/domains/{domain}", self._domain, methods=["GET"]),
        ]

    async def _domain(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self._error(401)
        if request.path_params["domain"] != self.domain:
            return JSONResponse({"message": "Domain not found"}, status_code=404)
        failure = await self.misbehave(request, self._error)
        return failure or JSONResponse({"domain": {"name": self.domain, "state": "active"}})

    def _error(self, status: int) -> Response:
        if status == 401:
            return PlainTextResponse("Forbidden", status_code=401)
        if status == 420:
            later = formatdate(time.time() + 3600, usegmt=True)
            message = (
                f"Domain {self.domain} is not allowed to send: recipient limit exceeded, "
                f"try again after {later}"
            )
            return JSONResponse({"message": message}, status_code=420)
        return JSONResponse({"message": _ERROR_MESSAGES.get(status, "error")}, status_code=status)

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self._error(401)
        if request.path_params["domain"] != self.domain:
            return JSONResponse(
                {"message": f"Domain not found: {request.path_params['domain']}"}, status_code=404
            )
        failure = await self.misbehave(request, self._error)
        if failure is not None:
            return failure
        if int(request.headers.get("content-length") or 0) > MAX_BYTES:
            return self._error(413)
        form = await request.form(max_files=1000, max_fields=10_000, max_part_size=MAX_BYTES)
        fields: dict[str, Any] = {}
        attachments = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                attachments.append(
                    {
                        "field": key,
                        "filename": value.filename,
                        "content_type": value.content_type,
                        "content": base64.b64encode(data).decode(),
                    }
                )
            else:
                fields.setdefault(key, []).append(value)
        await form.close()
        problem = _validate(fields)
        if problem is not None:
            return JSONResponse({"message": problem}, status_code=400)
        fields["attachments"] = attachments
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        message_id = f"{stamp}.{secrets.token_hex(8)}@{self.domain}"
        recipients = [
            address
            for kind in ("to", "cc", "bcc")
            for _, address in getaddresses(fields.get(kind, []))
            if address
        ]
        self.record(
            message_id,
            (fields.get("v:mailgate_id") or [None])[0],
            fields,
            recipients=recipients,
        )
        return JSONResponse({"id": f"<{message_id}>", "message": "Queued. Thank you."})

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One request per event, each with its own token, as Mailgun posts them."""
        return [self._signed(_event_data(outcome)) for outcome in happened]

    def _signed(self, event_data: dict[str, Any]) -> SignedPost:
        timestamp = str(int(time.time()))
        token = secrets.token_hex(25)
        signature = hmac.new(
            self.webhook_signing_key.encode(), (timestamp + token).encode(), hashlib.sha256
        ).hexdigest()
        payload = {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event_data,
        }
        headers = {"Content-Type": "application/json", "User-Agent": "mailgun/treq-16.12.0"}
        return SignedPost(headers=headers, body=json.dumps(payload).encode())


_OVER_QUOTA = "4.2.2 The email account that you tried to reach is over quota."
_CLIENT = {
    "client-type": "browser",
    "client-os": "Windows",
    "device-type": "desktop",
    "client-name": "Firefox",
    "user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Firefox/120.0",
}


def _event_data(outcome: Outcome) -> dict[str, Any]:
    """The `event-data` Mailgun posts for one outcome."""
    fields = outcome.received.fields
    domain = outcome.recipient.rpartition("@")[2]
    data: dict[str, Any] = {
        "id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
        "timestamp": time.time(),
        "log-level": "info",
        "recipient": outcome.recipient,
        "recipient-domain": domain,
        "tags": list(fields.get("o:tag", [])),
        "user-variables": {k[2:]: v[0] for k, v in fields.items() if k.startswith("v:")},
        "envelope": {"transport": "smtp", "targets": outcome.recipient},
        "message": {
            "headers": {
                "message-id": outcome.received.provider_message_id,
                "from": (fields.get("from") or [""])[0],
                "to": ", ".join(fields.get("to", [])),
                "subject": (fields.get("subject") or [""])[0],
            },
            "attachments": [],
        },
        "flags": {"is-authenticated": True, "is-test-mode": False},
    }
    match outcome.kind, outcome.bounce:
        case "delivered", _:
            status = {"code": 250, "message": "OK", "description": "", "attempt-no": 1}
            data |= {"event": "delivered", "delivery-status": status}
        case "deferred", _:
            status = {
                "code": 452,
                "message": _OVER_QUOTA,
                "description": "",
                "attempt-no": 1,
                "retry-seconds": 600,
            }
            data |= {
                "event": "failed",
                "log-level": "warn",
                "severity": "temporary",
                "reason": "generic",
                "delivery-status": status,
            }
        case "bounced", "soft":
            # Mailgun gave up retrying a temporary failure: permanent, reason "old".
            status = {"code": 452, "message": _OVER_QUOTA, "description": "", "attempt-no": 8}
            data |= {
                "event": "failed",
                "log-level": "error",
                "severity": "permanent",
                "reason": "old",
                "delivery-status": status,
            }
        case "bounced", _:
            status = {
                "code": 550,
                "message": "5.1.1 The email account that you tried to reach does not exist.",
                "description": "",
                "attempt-no": 1,
                "bounce-code": "5.1.1",
            }
            data |= {
                "event": "failed",
                "log-level": "error",
                "severity": "permanent",
                "reason": "bounce",
                "delivery-status": status,
            }
        case "complained", _:
            data |= {"event": "complained", "log-level": "warn"}
        case "opened", _:
            data |= {"event": "opened", "ip": "192.0.2.1", "client-info": _CLIENT}
        case "clicked", _:
            data |= {
                "event": "clicked",
                "ip": "192.0.2.1",
                "url": "https://example.com/",
                "client-info": _CLIENT,
            }
        case "unsubscribed", _:
            data |= {"event": "unsubscribed", "ip": "192.0.2.1", "client-info": _CLIENT}
        case _:
            raise ValueError(f"unknown outcome {outcome.kind!r}")
    return data


def _validate(fields: dict[str, list[str]]) -> str | None:
    """The first problem Mailgun would report, or None."""
    for key in ("from", "to"):
        if key not in fields:
            return f"{key} parameter is missing"
        for _, address in getaddresses(fields[key]):
            if "@" not in address:
                return f"'{key}' parameter is not a valid address. please check documentation"
    if "subject" not in fields:
        return "subject parameter is missing"
    if "text" not in fields and "html" not in fields and "template" not in fields:
        return "Need at least one of 'text' or 'html' parameters specified"
    return None
