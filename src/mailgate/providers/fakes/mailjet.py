"""A local Mailjet Send API v3.1: `POST /v3.1/send`, `{"Messages": [...]}`, per-message results.

Basic auth `key:secret`. Each message in the array is checked on its own,
as Mailjet does: the valid ones are sent and answered with a per-recipient
`MessageID` (a large int64) and `MessageUUID`; the invalid ones get
`{"Status": "error", "Errors": [...]}`, and the call answers 400 when any
message failed, even though the others were sent. Errors about the call
itself (credentials, malformed JSON, outage) use Mailjet's global shape
`{"ErrorIdentifier", "ErrorCode", "StatusCode", "ErrorMessage"}`; a 429 is a
bare HTML page with no reset header, as Mailjet sends it. `SandboxMode`
validates without sending. Codes not in Mailjet's published table are
marked below as this fake's own guesses.

With `webhook_url` set it posts each message's events as Mailjet's Event API
does (`sent`, `bounce`, `blocked`, `spam`, `open`, `click`, `unsub`, each
with the recipient's own `MessageID`, `CustomID` and `Payload`): one JSON
object per request, or, with `group_events` (Event API version 2), one
array of them; authorised with the `webhook_username` / `webhook_password`
basic-auth pair Mailjet takes from the webhook URL.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from collections.abc import Collection
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailgate.message import decoded_size
from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

MAX_MESSAGES = 50
MAX_RECIPIENTS_PER_FIELD = 50
MAX_SUBJECT = 255
MAX_ATTACHMENT_BYTES = 15 * 1024 * 1024

# Headers with a dedicated property, or Mailjet's own: refused in `Headers` (send-0011).
FORBIDDEN_HEADERS = frozenset(
    h.lower()
    for h in (
        "From", "Sender", "Subject", "To", "Cc", "Bcc", "Reply-To", "Return-Path",
        "Delivered-To", "DKIM-Signature", "DomainKey-Status", "Received-SPF",
        "Authentication-Results", "Received", "X-Mailjet-Prio", "X-Mailjet-Debug",
        "User-Agent", "X-Mailer", "X-MJ-CustomID", "X-MJ-EventPayload", "X-MJ-Vars",
        "X-MJ-TemplateErrorDeliver", "X-MJ-TemplateErrorReporting", "X-MJ-TemplateLanguage",
        "X-Mailjet-TrackOpen", "X-Mailjet-TrackClick", "X-MJ-TemplateID", "X-MJ-WorkflowID",
        "X-Feedback-Id", "X-Mailjet-Segmentation", "List-Id", "X-MJ-MID", "X-MJ-ErrorMessage",
        "Date", "X-CSA-Complaints", "Message-Id", "X-Mailjet-Campaign",
        "X-MJ-StatisticsContactsListID",
    )
)  # fmt: skip

_CODE_STATUS = {
    "mj-0001": 401,
    "mj-0015": 401,
    "send-0006": 403,
    "send-0007": 403,
    "send-0008": 403,
}
_MESSAGES = {
    "mj-0001": "API key suspended.",
    "mj-0013": '"nobody@" is an invalid email address.',
    "mj-0015": (
        "API key authentication/authorization failure. You may be unauthorized to access "
        "the API or your API key may be expired. Visit API keys management section to "
        "check your keys."
    ),
    "send-0003": 'At least "HTMLPart", "TextPart" or "TemplateID" must be provided.',
    "send-0008": '"ada@example.com" is not an authorized sender email address',
}
_TOO_MANY = (
    "<html><body><h1>429 Too Many Requests</h1>"
    "You have sent too many requests in a given amount of time.</body></html>"
)

Problem = tuple[str, str, list[str]]
"""(ErrorCode, ErrorMessage, ErrorRelatedTo) for one message."""


def _error(
    code: str, message: str, related: list[str], status: int | None = None
) -> dict[str, Any]:
    return {
        "ErrorIdentifier": str(uuid.uuid4()),
        "ErrorCode": code,
        "StatusCode": status or _CODE_STATUS.get(code, 400),
        "ErrorMessage": message,
        "ErrorRelatedTo": related,
    }


def _global(status: int, code: str, message: str) -> JSONResponse:
    body = {
        "ErrorIdentifier": str(uuid.uuid4()),
        "ErrorCode": code,
        "StatusCode": status,
        "ErrorMessage": message,
    }
    return JSONResponse(body, status_code=status)


class FakeMailjet(FakeProvider):
    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        keep: int | None = None,
        senders: Collection[str] | None = None,
        webhook_username: str | None = None,
        webhook_password: str | None = None,
        group_events: bool = False,
    ) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.api_secret = api_secret
        self.webhook_username = webhook_username or f"mailjet-{secrets.token_hex(4)}"
        self.webhook_password = webhook_password or secrets.token_urlsafe(24)
        """The basic-auth pair the events are posted with (as in Mailjet's webhook URL)."""
        self.group_events = group_events
        """Post all of a message's events as one JSON array (Event API version 2)."""
        self.senders = {s.lower() for s in senders} if senders is not None else None
        """Validated sender addresses; None: any sender is accepted."""

    def routes(self) -> list[Route]:
        return [
            Route("/v3.1/send", self._send, methods=["POST"]),
            Route("/v3/REST/myprofile", self._profile, methods=["GET"]),
        ]

    def _authorised(self, request: Request) -> bool:
        pair = f"{self.api_key}:{self.api_secret}".encode()
        return request.headers.get("authorization") == f"Basic {base64.b64encode(pair).decode()}"

    async def _profile(self, request: Request) -> Response:
        if not self._authorised(request):
            return _global(401, "mj-0015", _MESSAGES["mj-0015"])
        failure = await self.misbehave(request, self._failure)
        profile = {"ID": 1, "CompanyName": "Example", "Country": "FR"}
        return failure or JSONResponse({"Count": 1, "Data": [profile], "Total": 1})

    def _failure(self, status: int) -> Response:
        """A failure in Mailjet's words; status 200 answers a message-level error with 200."""
        code = self.behaviour.error
        if status == 401:
            code = code or "mj-0015"
            return _global(401, code, _MESSAGES.get(code, "Unauthorized"))
        if status == 429:
            return HTMLResponse(_TOO_MANY, status_code=429)
        if status == 500:
            return _global(500, code or "", "Internal Server Error")
        if status >= 500:
            return HTMLResponse(f"<html><body><h1>{status}</h1></body></html>", status_code=status)
        code = code or ("send-0008" if status == 403 else "mj-0013")
        status_code = _CODE_STATUS.get(code, status if status >= 400 else 400)
        error = _error(code, _MESSAGES.get(code, "error"), [], status_code)
        return JSONResponse(
            {"Messages": [{"Status": "error", "Errors": [error]}]}, status_code=status
        )

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        if not self._authorised(request):
            return _global(401, "mj-0015", _MESSAGES["mj-0015"])
        failure = await self.misbehave(request, self._failure)
        if failure is not None:
            if "retry-after" in failure.headers:
                del failure.headers["retry-after"]  # Mailjet gives no wait time
            return failure
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _global(
                400, "mj-0002", "Malformed JSON, please review the syntax and properties types."
            )
        messages = body.get("Messages")
        if not isinstance(messages, list) or not messages:
            return _global(400, "mj-0003", 'Missing mandatory property "Messages".')  # guess
        if len(messages) > MAX_MESSAGES:
            return _global(400, "mj-0007", "Too many messages, 50 at most.")  # guess
        sandbox = body.get("SandboxMode") is True
        results = [self._one(m, sandbox) for m in messages]
        failed = any(r["Status"] == "error" for r in results)
        return JSONResponse({"Messages": results}, status_code=400 if failed else 200)

    def _one(self, message: Any, sandbox: bool) -> dict[str, Any]:
        problem = _validate(message) if isinstance(message, dict) else ("mj-0004", "", [])
        if problem is None and self.senders is not None:
            sender = str(message["From"]["Email"]).lower()
            if sender not in self.senders:
                problem = (
                    "send-0008",
                    f'"{sender}" is not an authorized sender email address',
                    ["From"],
                )
        if problem is not None:
            return {"Status": "error", "Errors": [_error(*problem)]}
        result: dict[str, Any] = {"Status": "success"}
        if message.get("CustomID"):
            result["CustomID"] = message["CustomID"]
        # Each recipient has its own MessageID: the first one's plus its position,
        # so the events can name each recipient's id again from the message alone.
        first_id = 2**56 + secrets.randbelow(2**62)
        for kind in ("To", "Cc", "Bcc"):
            receipts: list[dict[str, Any]] = []
            for recipient in message.get(kind) or []:
                number = 0 if sandbox else first_id + len(receipts) + _offset(message, kind)
                receipts.append(
                    {
                        "Email": recipient["Email"],
                        "MessageUUID": "" if sandbox else _message_uuid(number),
                        "MessageID": number,
                        "MessageHref": f"https://api.mailjet.com/v3/REST/message/{number}",
                    }
                )
            result[kind] = receipts
        if not sandbox:
            self.record(
                str(first_id), message.get("CustomID"), message, recipients=_recipients(message)
            )
        return result

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """Mailjet's event objects, a second apart: one per POST, or one array when grouped."""
        pair = f"{self.webhook_username}:{self.webhook_password}".encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {base64.b64encode(pair).decode()}",
        }
        start = int(time.time())
        events = [_event(outcome, start + i) for i, outcome in enumerate(happened)]
        if self.group_events:
            return [SignedPost(headers, json.dumps(events).encode())] if events else []
        return [SignedPost(dict(headers), json.dumps(event).encode()) for event in events]


def _validate(message: dict[str, Any]) -> Problem | None:
    """The first problem Mailjet would report for one message, or None."""
    sender = message.get("From")
    if not isinstance(sender, dict) or not sender.get("Email"):
        return "mj-0003", 'Missing mandatory property "From.Email".', ["From"]
    if "@" not in str(sender["Email"]):
        return "mj-0013", f'"{sender["Email"]}" is an invalid email address.', ["From.Email"]
    if not message.get("To"):
        return "mj-0003", 'Missing mandatory property "To".', ["To"]
    for kind in ("To", "Cc", "Bcc"):
        recipients = message.get(kind) or []
        if len(recipients) > MAX_RECIPIENTS_PER_FIELD:
            return "send-0015", "Too many recipients, 50 at most per field.", [kind]
        for i, recipient in enumerate(recipients):
            email = str(recipient.get("Email", "")) if isinstance(recipient, dict) else ""
            if "@" not in email:
                return "mj-0013", f'"{email}" is an invalid email address.', [f"{kind}[{i}].Email"]
    reply_to = message.get("ReplyTo")
    if reply_to is not None and "@" not in str(reply_to.get("Email", "")):
        return "mj-0013", "ReplyTo is an invalid email address.", ["ReplyTo.Email"]
    if len(str(message.get("Subject") or "")) > MAX_SUBJECT:
        return "mj-0005", "Subject is too long, 255 characters at most.", ["Subject"]  # guess
    if not any(message.get(k) for k in ("TextPart", "HTMLPart", "TemplateID")):
        return "send-0003", _MESSAGES["send-0003"], ["TextPart", "HTMLPart", "TemplateID"]
    headers = message.get("Headers") or {}
    for name, value in headers.items():
        if name.lower() in FORBIDDEN_HEADERS:
            return (
                "send-0011",
                f'The header "{name}" cannot be set in Headers.',
                [f"Headers.{name}"],
            )
        if not isinstance(value, str):
            return "mj-0004", "Header values must be strings.", [f"Headers.{name}"]  # guess
    for key in ("CustomID", "EventPayload", "CustomCampaign"):
        if key in message and not isinstance(message[key], str):
            return "mj-0004", f"{key} must be a string.", [key]  # guess
    total = 0
    for i, attachment in enumerate(message.get("Attachments") or []):
        if not all(attachment.get(k) for k in ("ContentType", "Filename", "Base64Content")):
            return (
                "mj-0003",
                "Attachments need ContentType, Filename and Base64Content.",
                [f"Attachments[{i}]"],
            )
        total += decoded_size(attachment["Base64Content"])
    if total > MAX_ATTACHMENT_BYTES:
        return "", "Attachments exceed 15 MB in total.", ["Attachments"]  # code unknown
    return None


_UUIDS = uuid.UUID("7c3a4f0e-2b1d-4e6a-9f58-0d1c2b3a4f5e")
"""Namespace of the fake's `MessageUUID`s, derived from each recipient's MessageID."""
_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/124.0"
_LINK = re.compile(r"""https?://[^\s"'<>]+""")


def _message_uuid(number: int) -> str:
    return str(uuid.uuid5(_UUIDS, str(number)))


def _entries(message: dict[str, Any]) -> list[str]:
    """Every To, Cc and Bcc address in order, as the send answer lists them."""
    return [
        str(recipient.get("Email", ""))
        for kind in ("To", "Cc", "Bcc")
        for recipient in message.get(kind) or []
    ]


def _offset(message: dict[str, Any], kind: str) -> int:
    """How many recipients the fields before `kind` hold."""
    order = ("To", "Cc", "Bcc")
    return sum(len(message.get(k) or []) for k in order[: order.index(kind)])


def _recipients(message: dict[str, Any]) -> list[str]:
    """The addresses mail goes to: each once (Mailjet counts a repeated address once)."""
    seen: set[str] = set()
    out = []
    for email in _entries(message):
        if email.lower() not in seen:
            seen.add(email.lower())
            out.append(email)
    return out


def _event(outcome: Outcome, when: int) -> dict[str, Any]:
    """The Event API object Mailjet posts for one outcome."""
    message = outcome.received.fields
    lowered = [e.lower() for e in _entries(message)]
    number = int(outcome.received.provider_message_id) + lowered.index(outcome.recipient.lower())
    event: dict[str, Any] = {
        "time": when,
        "MessageID": number,
        "Message_GUID": _message_uuid(number),
        "email": outcome.recipient,
        "mj_campaign_id": 0,
        "mj_contact_id": int.from_bytes(outcome.recipient.lower().encode()[:6], "big"),
        "customcampaign": message.get("CustomCampaign") or "",
        "CustomID": message.get("CustomID") or "",
        "Payload": message.get("EventPayload") or "",
    }
    engaged = {"ip": "192.0.2.10", "geo": "FR", "agent": _AGENT}
    match outcome.kind:
        case "delivered":
            event |= {
                "event": "sent",
                "mj_message_id": str(number),
                "smtp_reply": "sent (250 2.0.0 OK 1714000000 queued as 4VX1)",
            }
        case "deferred":
            # Mailjet has no deferral event: a greylisting is a soft bounce it retries.
            event |= {
                "event": "bounce",
                "blocked": False,
                "hard_bounce": False,
                "error_related_to": "domain",
                "error": "greylisted",
            }
        case "bounced" if outcome.bounce == "soft":
            event |= {
                "event": "bounce",
                "blocked": False,
                "hard_bounce": False,
                "error_related_to": "recipient",
                "error": "quota exceeded",
            }
        case "bounced":
            event |= {
                "event": "bounce",
                "blocked": True,
                "hard_bounce": True,
                "error_related_to": "recipient",
                "error": "user unknown",
            }
        case "complained":
            event |= {"event": "spam", "source": "JMRPP"}
        case "opened":
            event |= {"event": "open", **engaged}
        case "clicked":
            link = _link(message.get("HTMLPart"), message.get("TextPart"))
            event |= {"event": "click", "url": link, **engaged}
        case "unsubscribed":
            event |= {"event": "unsub", "mj_list_id": 0, **engaged}
        case _:
            raise ValueError(f"no Mailjet event for outcome {outcome.kind!r}")
    return event


def _link(html: Any, text: Any) -> str:
    """The first link in the message, as a recipient would click it."""
    for body in (html, text):
        found = _LINK.search(body) if isinstance(body, str) else None
        if found:
            return found.group(0)
    return "https://example.com/"
