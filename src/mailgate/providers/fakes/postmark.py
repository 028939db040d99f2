"""A local Postmark Email API: `POST /email` and `POST /email/batch`.

Checks the `X-Postmark-Server-Token` header (401 with ErrorCode 10 when
wrong), validates as Postmark does for the requests mailgate makes, and
answers 200 `{To, SubmittedAt, MessageID, ErrorCode: 0, Message: "OK"}`, or
422 `{ErrorCode, Message}`. The batch answers 200 with one such object per
message, in order, whatever each one's fate. `inactive` holds suppressed
recipients (406 when every recipient is one, an "OK, but" otherwise);
`sender_signatures`, when set, the confirmed senders and domains (400 for
anyone else).

With `webhook_url` set it posts each message's events as Postmark does: one
JSON object per event (`RecordType` Delivery, Bounce, SpamComplaint, Open,
Click, SubscriptionChange), with the `webhook_username` / `webhook_password`
basic-auth pair Postmark takes from the webhook URL.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost

MAX_BYTES = 10 * 1024 * 1024
MAX_BATCH_BYTES = 50 * 1024 * 1024
MAX_BATCH = 500
MAX_RECIPIENTS = 50
MAX_TAG = 1000
FORBIDDEN_EXTENSIONS = frozenset(
    {"bat", "bin", "chm", "com", "cpl", "exe", "hta", "jse", "lnk", "msi", "pif", "reg", "scr"}
    | {"vbe", "vbs", "wsf", "wsh"}
)

_CODE_MESSAGES = {
    10: "Request does not contain a valid Server token.",
    100: "The service is undergoing maintenance. Please try again later.",
    300: "Invalid email request.",
    400: "The 'From' address you supplied is not a Sender Signature on your account.",
    401: "The sender signature has not been confirmed.",
    402: "Received invalid JSON input.",
    403: "Incompatible JSON input.",
    405: "Not allowed to send: your account has run out of credits.",
    406: "You tried to send to a recipient that has been marked as inactive.",
    409: "JSON data required.",
    410: "Too many batch messages.",
    411: "Forbidden attachment type.",
    412: "Account is pending approval.",
    413: "This account may not send.",
    429: "Rate limit exceeded.",
}
_STATUS_MESSAGES = {
    413: "Request entity too large.",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _answer(code: int, message: str | None = None) -> dict[str, Any]:
    return {"ErrorCode": code, "Message": message or _CODE_MESSAGES.get(code, "Error.")}


class FakePostmark(FakeProvider):
    def __init__(
        self,
        server_token: str,
        *,
        keep: int | None = None,
        webhook_username: str | None = None,
        webhook_password: str | None = None,
    ) -> None:
        super().__init__(keep=keep)
        self.server_token = server_token
        self.webhook_username = webhook_username or f"postmark-{secrets.token_hex(4)}"
        self.webhook_password = webhook_password or secrets.token_urlsafe(24)
        """The basic-auth pair the events are posted with (as in Postmark's webhook URL)."""
        self.inactive: set[str] = set()
        """Lower-cased addresses Postmark suppressed after a hard bounce or complaint."""
        self.sender_signatures: set[str] | None = None
        """Confirmed sender addresses or domains; None accepts any sender."""

    def routes(self) -> list[Route]:
        return [
            Route("/email", self._send, methods=["POST"]),
            Route("/email/batch", self._batch, methods=["POST"]),
            Route("/server", self._server, methods=["GET"]),
        ]

    async def _server(self, request: Request) -> Response:
        """The server the token belongs to (what a health probe reads)."""
        if not self._authorized(request):
            return self._error(401)
        failure = await self.misbehave(request, self._error)
        return failure or JSONResponse({"ID": 1, "Name": "mailgate", "DeliveryType": "Live"})

    def reset(self) -> None:
        super().reset()
        self.inactive.clear()
        self.sender_signatures = None

    def _error(self, status: int) -> Response:
        """An error as Postmark words it: its ErrorCode when the behaviour names one."""
        if self.behaviour.error is not None:
            return JSONResponse(_answer(int(self.behaviour.error)), status_code=status)
        if status == 401:
            return JSONResponse(_answer(10), status_code=401)
        if status == 403:  # the network security layer in front of the API, not the API
            page = "<html><head><title>403 Forbidden</title></head><body>403</body></html>"
            return HTMLResponse(page, status_code=403)
        if status in (422, 429):
            return JSONResponse(_answer(300 if status == 422 else 429), status_code=status)
        return JSONResponse({"Message": _STATUS_MESSAGES.get(status, "Error.")}, status_code=status)

    def _authorized(self, request: Request) -> bool:
        token = request.headers.get("x-postmark-server-token") or ""
        return token.lower() == self.server_token.lower()  # values are case-insensitive

    async def _admit(self, request: Request, max_bytes: int) -> Response | Any:
        """The checks every send request meets first: an error `Response`, or the JSON body."""
        self.requests += 1
        if not self._authorized(request):
            return self._error(401)
        failure = await self.misbehave(request, self._error)
        if failure is not None:
            return failure
        raw = await request.body()
        if len(raw) > max_bytes:
            return self._error(413)
        try:
            return json.loads(raw)
        except ValueError:
            return JSONResponse(_answer(402), status_code=422)

    async def _send(self, request: Request) -> Response:
        body = await self._admit(request, MAX_BYTES)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return JSONResponse(_answer(403), status_code=422)
        answer = self._take(body)
        return JSONResponse(answer, status_code=422 if answer["ErrorCode"] else 200)

    async def _batch(self, request: Request) -> Response:
        messages = await self._admit(request, MAX_BATCH_BYTES)
        if isinstance(messages, Response):
            return messages
        if not isinstance(messages, list):
            return JSONResponse(_answer(403), status_code=422)
        if len(messages) > MAX_BATCH:
            message = f"Too many batch messages: {len(messages)} (at most {MAX_BATCH})."
            return JSONResponse(_answer(410, message), status_code=422)
        answers = [self._take(m) if isinstance(m, dict) else _answer(403) for m in messages]
        return JSONResponse(answers)

    def _take(self, message: dict[str, Any]) -> dict[str, Any]:
        """Validate one message and take it: Postmark's per-message answer."""
        problem = self._validate(message)
        if problem is not None:
            return _answer(*problem)
        addresses = [
            address
            for key in ("To", "Cc", "Bcc")
            if message.get(key)
            for _, address in getaddresses([message[key]])
        ]
        recipients = [address.lower() for address in addresses]
        inactive = [r for r in recipients if r in self.inactive]
        if inactive and len(inactive) == len(recipients):
            return _answer(
                406,
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {', '.join(inactive)}. Inactive recipients "
                "are ones that have generated a hard bounce or a spam complaint.",
            )
        text = "OK"
        if inactive:
            text = (
                "Message OK, but will not deliver to these inactive addresses: "
                f"{', '.join(inactive)}. Inactive recipients are ones that have "
                "generated a hard bounce or a spam complaint."
            )
        message_id = str(uuid.uuid4())
        metadata = message.get("Metadata") or {}
        self.record(
            message_id,
            metadata.get("mailgate_id"),
            message,
            recipients=[a for a in addresses if a.lower() not in self.inactive],
        )
        return {
            "To": message.get("To"),
            "SubmittedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "MessageID": message_id,
            "ErrorCode": 0,
            "Message": text,
        }

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One POST per event, a second apart, each a Postmark webhook object."""
        pair = f"{self.webhook_username}:{self.webhook_password}".encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Basic {base64.b64encode(pair).decode()}",
            "User-Agent": "Postmark",
        }
        start = time.time()
        return [
            SignedPost(dict(headers), json.dumps(_event(outcome, start + i)).encode())
            for i, outcome in enumerate(happened)
        ]

    def _validate(self, message: dict[str, Any]) -> tuple[int, str] | None:
        """The first problem Postmark would report, as (ErrorCode, Message), or None."""
        for key in ("From", "To", "Cc", "Bcc", "ReplyTo", "Subject", "TextBody", "HtmlBody"):
            if key in message and not isinstance(message[key], str):
                return 403, f"Incompatible JSON input: '{key}' must be a string."
        senders = getaddresses([message.get("From") or ""])
        if len(senders) != 1 or "@" not in senders[0][1]:
            return 300, f"Invalid 'From' address: '{message.get('From') or ''}'."
        sender = senders[0][1].lower()
        if self.sender_signatures is not None and not (
            {sender, sender.rpartition("@")[2]} & self.sender_signatures
        ):
            return 400, (
                f"The 'From' address you supplied ({sender}) is not a Sender Signature on "
                "your account. Please add and confirm this address in order to be able to "
                "use it in the 'From' field of your messages."
            )
        if not message.get("To"):
            return 300, "Zero recipients specified"
        recipients = 0
        for key in ("To", "Cc", "Bcc", "ReplyTo"):
            addresses = getaddresses([message[key]]) if message.get(key) else []
            for _, address in addresses:
                if "@" not in address:
                    return 300, (
                        f"Error parsing '{key}': Illegal email address '{address}'. "
                        "It must contain the '@' symbol."
                    )
            if key != "ReplyTo":
                recipients += len(addresses)
        if recipients > MAX_RECIPIENTS:
            return 300, f"Maximum of {MAX_RECIPIENTS} recipients allowed per email message"
        if not message.get("TextBody") and not message.get("HtmlBody"):
            return 300, "Provide either email TextBody or HtmlBody or both."
        tag = message.get("Tag")
        if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_TAG):
            return 300, f"The 'Tag' must be a string of at most {MAX_TAG} characters."
        metadata = message.get("Metadata") or {}
        if not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values()):
            return 300, "Invalid metadata content. Values must be strings."
        for header in message.get("Headers") or []:
            if not isinstance(header, dict) or not all(
                isinstance(header.get(part), str) for part in ("Name", "Value")
            ):
                return 403, "Incompatible JSON input: 'Headers' must be [{Name, Value}]."
        for attachment in message.get("Attachments") or []:
            if not isinstance(attachment, dict):
                return 403, "Incompatible JSON input: 'Attachments' must be objects."
            name = str(attachment.get("Name") or "")
            if not name or not attachment.get("Content"):
                return 300, "Attachments must have a Name and a Content."
            if name.rpartition(".")[2].lower() in FORBIDDEN_EXTENSIONS:
                return 411, f"Forbidden attachment type: '{name}'."
        return None


SERVER_ID = 23
"""The Postmark server the fake's events name (`ServerID`)."""
_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
)
_CLIENT = {"Name": "Chrome 124.0", "Company": "Google", "Family": "Chrome"}
_OS = {"Name": "Windows 10", "Company": "Microsoft Corporation", "Family": "Windows"}
_LINK = re.compile(r"""https?://[^\s"'<>]+""")

# Bounce Type -> (TypeCode, Name, Description, Details), in Postmark's words.
_BOUNCES: dict[str, tuple[int, str, str, str]] = {
    "HardBounce": (
        1,
        "Hard bounce",
        "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
    ),
    "Transient": (
        2,
        "Message delayed",
        "The server could not temporarily deliver your message "
        "(ex: Message is delayed due to network troubles).",
        "smtp;421 4.7.0 Try again later, closing connection.",
    ),
    "SoftBounce": (
        4096,
        "Soft bounce",
        "Unable to temporarily deliver this email.",
        "smtp;452 4.2.2 The email account that you tried to reach is over quota.",
    ),
}


def _event(outcome: Outcome, when: float) -> dict[str, Any]:
    """The webhook object Postmark posts for one outcome."""
    message = outcome.received.fields
    at = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
    at = at.replace("+00:00", "Z")
    common: dict[str, Any] = {
        "MessageID": outcome.received.provider_message_id,
        "ServerID": SERVER_ID,
        "MessageStream": message.get("MessageStream") or "outbound",
        "Tag": message.get("Tag") or "",
        "Metadata": dict(message.get("Metadata") or {}),
    }
    recipient = outcome.recipient
    match outcome.kind:
        case "delivered":
            return {
                "RecordType": "Delivery",
                **common,
                "Recipient": recipient,
                "DeliveredAt": at,
                "Details": "smtp;250 2.0.0 OK",
            }
        case "deferred" | "bounced":
            bounce_type = "Transient" if outcome.kind == "deferred" else "SoftBounce"
            if outcome.kind == "bounced" and outcome.bounce != "soft":
                bounce_type = "HardBounce"
            code, name, description, details = _BOUNCES[bounce_type]
            return {
                "RecordType": "Bounce",
                **common,
                **_bounce_record(message, recipient, at),
                "Type": bounce_type,
                "TypeCode": code,
                "Name": name,
                "Description": description,
                "Details": details,
                "Inactive": bounce_type == "HardBounce",
                "CanActivate": True,
            }
        case "complained":
            return {
                "RecordType": "SpamComplaint",
                **common,
                **_bounce_record(message, recipient, at),
                "Type": "SpamComplaint",
                "TypeCode": 512,
                "Name": "Spam complaint",
                "Description": "The subscriber explicitly marked this email as spam.",
                "Details": "",
                "Inactive": True,
                "CanActivate": False,
            }
        case "opened":
            return {
                "RecordType": "Open",
                **common,
                "FirstOpen": True,
                "Client": _CLIENT,
                "OS": _OS,
                "Platform": "Desktop",
                "UserAgent": _USER_AGENT,
                "ReadSeconds": 5,
                "Geo": {},
                "Recipient": recipient,
                "ReceivedAt": at,
            }
        case "clicked":
            return {
                "RecordType": "Click",
                **common,
                "ClickLocation": "HTML",
                "Client": _CLIENT,
                "OS": _OS,
                "Platform": "Desktop",
                "UserAgent": _USER_AGENT,
                "OriginalLink": _link(message.get("HtmlBody"), message.get("TextBody")),
                "Geo": {},
                "Recipient": recipient,
                "ReceivedAt": at,
            }
        case "unsubscribed":
            return {
                "RecordType": "SubscriptionChange",
                **common,
                "Recipient": recipient,
                "Origin": "Recipient",
                "SuppressSending": True,
                "SuppressionReason": "ManualSuppression",
                "ChangedAt": at,
            }
        case _:
            raise ValueError(f"no Postmark event for outcome {outcome.kind!r}")


def _bounce_record(message: dict[str, Any], recipient: str, at: str) -> dict[str, Any]:
    """The fields every bounce record has (bounces and spam complaints alike)."""
    return {
        "ID": secrets.randbelow(9 * 10**9) + 10**9,
        "Email": recipient,
        "From": message.get("From") or "",
        "BouncedAt": at,
        "DumpAvailable": False,
        "Subject": message.get("Subject") or "",
        "Content": "",
    }


def _link(html: Any, text: Any) -> str:
    """The first link in the message, as a recipient would click it."""
    for body in (html, text):
        found = _LINK.search(body) if isinstance(body, str) else None
        if found:
            return found.group(0)
    return "https://example.com/"
