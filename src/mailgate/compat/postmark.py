"""Postmark's Email API as a drop-in: `POST /email` and `POST /email/batch`.

Code written against Postmark (postmarker, django-anymail's Postmark
backend, a hand-rolled JSON call) switches to mailgate by pointing its base
URL at mailgate and sending a mailgate key with the `send` scope as the
`X-Postmark-Server-Token`. Each Postmark message becomes one `MessageIn`
and goes through the one accept path (`common.Ingress`): the same key
checks, tenant rules, quotas and group commit as `POST /v1/messages`.

What is translated, and why (docs/drop-in.md has the table of every field):

- `From`, `To`, `Cc`, `Bcc` and `ReplyTo` are RFC 5322 address lists in one
  string; they are split at top-level commas (not inside quotes or angle
  brackets) and each address is checked by mailgate's own parser, so an
  error names the one bad address as Postmark does ("Invalid 'To' address:
  '...'", which django-anymail reads to mark that recipient invalid).
  RFC 2047 encoded display names are decoded; any line break or control
  character refuses the whole field (header injection).
- `Tag` is mailgate's one tag; `Metadata` its metadata; `MessageStream`
  is kept as the metadata key `message_stream` (mailgate has no streams:
  each provider sends through its own configured stream).
- `Headers` `[{Name, Value}]` become mailgate's headers; a name given twice
  is refused rather than one value dropped.
- Attachments keep `Name`, `Content` and `ContentType`. A `ContentID` (an
  inline part) is refused: mailgate's message has no Content-ID, and sending
  it as an ordinary attachment would break the HTML's `cid:` reference.
- `TrackOpens: true` and `TrackLinks` other than "None" are refused: mailgate
  cannot ask a provider to track one message; the tracking the operator
  set on the providers' accounts is what happens to every message.
- Template fields (`TemplateId`, `TemplateAlias`, `TemplateModel`,
  `InlineCss`) and any field Postmark's `/email` does not have are refused,
  naming the field: nothing a caller sends is silently dropped.
- A JSON `null` is an absent field (postmarker sends every unset field so).

Answers are Postmark's: `200 {"To", "SubmittedAt", "MessageID", "ErrorCode":
0, "Message": "OK"}` with mailgate's message id as `MessageID`; refusals
are `{"ErrorCode", "Message"}` with 401 (bad key), 422 (the message), 413
(too large), 429 (rate limit) or 503 (the store cannot commit). The batch
answers 200 with one such object per message, in order, as Postmark does.
Neither Postmark nor this API has an idempotency key.
"""

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mailgate.api.context import ApiContext
from mailgate.compat.common import SCOPE, Ingress
from mailgate.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    RequestError,
    SenderNotAllowed,
    StoreUnavailable,
    TenantDisabled,
    Unauthorized,
)
from mailgate.message import rfc3339
from mailgate.providers.postmark import MAX_BATCH, TOKEN_HEADER, ErrorCode
from mailgate.store import Accepted, NewMessage

log = logging.getLogger(__name__)

STREAM_KEY = "message_stream"
"""The metadata key `MessageStream` is kept under."""

FIELDS = frozenset(
    {
        "From", "To", "Cc", "Bcc", "ReplyTo", "Subject", "Tag", "HtmlBody", "TextBody",
        "Headers", "TrackOpens", "TrackLinks", "Attachments", "Metadata", "MessageStream",
    }
)  # fmt: skip
"""Every field of a Postmark `/email` message."""
TEMPLATE_FIELDS = ("TemplateId", "TemplateAlias", "TemplateModel", "InlineCss")
"""Fields of Postmark's template endpoints, which mailgate does not serve."""
_ATTACHMENT_FIELDS = frozenset({"Name", "Content", "ContentType", "ContentID"})
_TRACK_LINKS = frozenset({"HtmlAndText", "HtmlOnly", "TextOnly"})
_ADDRESS_FIELDS = ("From", "To", "Cc", "Bcc", "ReplyTo")
_STRING_FIELDS = (*_ADDRESS_FIELDS, "Subject", "Tag", "HtmlBody", "TextBody", "MessageStream")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ANGLE = re.compile(r"^(?P<name>[^<>]*)<(?P<email>[^<>]*)>\s*$")
_MAILGATE_FIELD = re.compile(
    r"^(?P<head>[a-z_]+)(?:\[(?P<index>\d+)\])?(?:\.(?P<rest>.+))?$", re.DOTALL
)

# mailgate's `MessageIn` field -> Postmark's, for naming the field in a refusal.
_POSTMARK_NAMES = {
    "from": "From", "to": "To", "cc": "Cc", "bcc": "Bcc", "reply_to": "ReplyTo",
    "subject": "Subject", "text": "TextBody", "html": "HtmlBody", "headers": "Headers",
    "attachments": "Attachments", "tags": "Tag", "metadata": "Metadata",
}  # fmt: skip
_ATTACHMENT_NAMES = {"filename": "Name", "content": "Content", "content_type": "ContentType"}


class _Refused(InvalidRequest):
    """A refusal worded by this module, with the Postmark `ErrorCode` it answers with."""

    def __init__(self, message: str, *, field: str, error_code: ErrorCode) -> None:
        super().__init__(message, field=field)
        self.error_code = error_code


def _invalid(message: str, field: str) -> _Refused:
    return _Refused(message, field=field, error_code=ErrorCode.INVALID_EMAIL_REQUEST)


def _incompatible(field: str, expected: str) -> _Refused:
    return _Refused(
        f"Incompatible JSON input: '{field}' must be {expected}.",
        field=field,
        error_code=ErrorCode.INCOMPATIBLE_JSON,
    )


@dataclass
class _Translated:
    """One Postmark message as `MessageIn` fields, with what a refusal has to quote."""

    fields: dict[str, Any]
    to: str
    """`To` as given: the success answer repeats it."""
    addresses: dict[str, list[str]] = field(default_factory=dict)
    """Each address field's addresses as given, by Postmark field name, in order."""
    stream: bool = False
    """Whether `MessageStream` was given (it is kept as metadata)."""


def split_addresses(value: str) -> list[str]:
    """The addresses of an RFC 5322 address list, split at commas outside quotes and `<>`."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    angle = 0
    for char in value:
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle += 1
        elif char == ">":
            angle = max(0, angle - 1)
        elif char == "," and not angle:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _address(text: str) -> str | dict[str, str]:
    """An address as `MessageIn` takes it; RFC 2047 encoded display names decoded."""
    match = _ANGLE.match(text) if "=?" in text else None
    if match is None:
        return text
    name = match["name"].strip()
    try:
        decoded = str(make_header(decode_header(name.strip('"'))))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return text  # not valid encoded words: mailgate's parser judges it as written
    return {"email": match["email"].strip(), "name": decoded}


def _addresses(raw: Mapping[str, Any], key: str, out: _Translated) -> list[str | dict[str, str]]:
    value = raw.get(key)
    if value is None:
        return []
    if _CONTROL.search(value):
        raise _invalid(
            f"Invalid '{key}' address: it must not contain line breaks or control characters.",
            key,
        )
    given = split_addresses(value)
    out.addresses[key] = given
    return [_address(a) for a in given]


def _headers(value: Any) -> dict[str, Any]:
    if not isinstance(value, list):
        raise _incompatible("Headers", "an array of {Name, Value} objects")
    headers: dict[str, Any] = {}
    seen: set[str] = set()
    for i, header in enumerate(value):
        where = f"Headers[{i}]"
        if not isinstance(header, dict) or set(header) - {"Name", "Value"}:
            raise _incompatible(where, "an object {Name, Value}")
        name, text = header.get("Name"), header.get("Value")
        if not isinstance(name, str) or not isinstance(text, str):
            raise _incompatible(where, "an object whose Name and Value are strings")
        if name.lower() in seen:
            raise _invalid(
                f"Invalid '{where}': header {name!r} is given twice; mailgate keeps one value "
                "per header, join the values with ', '.",
                where,
            )
        seen.add(name.lower())
        headers[name] = text
    return headers


def _attachments(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _incompatible("Attachments", "an array of {Name, Content, ContentType} objects")
    attachments: list[dict[str, Any]] = []
    for i, attachment in enumerate(value):
        where = f"Attachments[{i}]"
        if not isinstance(attachment, dict):
            raise _incompatible(where, "an object {Name, Content, ContentType}")
        unknown = sorted(set(attachment) - _ATTACHMENT_FIELDS)
        if unknown:
            raise _invalid(f"Unknown field '{where}.{unknown[0]}'.", f"{where}.{unknown[0]}")
        if attachment.get("ContentID"):
            raise _invalid(
                f"'{where}.ContentID': mailgate does not send inline attachments (it has no "
                "Content-ID), and as an ordinary attachment the HTML's cid: reference would "
                "break. Link the image, or send it without ContentID.",
                f"{where}.ContentID",
            )
        out: dict[str, Any] = {}
        for postmark, mailgate in (
            ("Name", "filename"),
            ("Content", "content"),
            ("ContentType", "content_type"),
        ):
            given = attachment.get(postmark)
            if given is None:
                continue
            if not isinstance(given, str):
                raise _incompatible(f"{where}.{postmark}", "a string")
            out[mailgate] = given
        if "filename" not in out or "content" not in out:
            raise _invalid(f"'{where}': attachments must have a Name and a Content.", where)
        attachments.append(out)
    return attachments


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _incompatible("Metadata", "an object of strings")
    for key, text in value.items():
        if not isinstance(text, str):
            raise _invalid(
                f"Invalid metadata content: the value of '{key}' must be a string.", "Metadata"
            )
    return dict(value)


def _tracking(raw: Mapping[str, Any]) -> None:
    """Refuse a request to track this message; accept one that asks for no tracking."""
    opens = raw.get("TrackOpens")
    if opens is not None and not isinstance(opens, bool):
        raise _incompatible("TrackOpens", "true or false")
    if opens:
        raise _invalid(
            "'TrackOpens': mailgate cannot turn on open tracking for one message (tracking is "
            "set on the providers' accounts). Send TrackOpens false, or leave it out.",
            "TrackOpens",
        )
    links = raw.get("TrackLinks")
    if links is None or links == "None":
        return
    if links in _TRACK_LINKS:
        raise _invalid(
            f"'TrackLinks': mailgate cannot turn on link tracking ({links}) for one message "
            '(tracking is set on the providers\' accounts). Send "None", or leave it out.',
            "TrackLinks",
        )
    raise _invalid(
        f"'TrackLinks' must be None, HtmlAndText, HtmlOnly or TextOnly, not {links!r}.",
        "TrackLinks",
    )


def translate(raw: Mapping[str, Any]) -> _Translated:
    """One Postmark message as the fields `MessageIn` takes; raises a `RequestError`."""
    for key, value in raw.items():
        if value is None:
            continue
        if key in TEMPLATE_FIELDS:
            raise _invalid(
                f"'{key}': mailgate does not keep templates; /email/withTemplate is not "
                "served. Render the message and send Subject, HtmlBody and TextBody.",
                key,
            )
        if key not in FIELDS:
            raise _invalid(
                f"Unknown field '{key}': mailgate refuses what it does not know rather than "
                "drop it.",
                key,
            )
    for key in _STRING_FIELDS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _incompatible(key, "a string")
    _tracking(raw)
    out = _Translated(fields={}, to=raw.get("To") or "")
    fields = out.fields
    senders = _addresses(raw, "From", out)
    if len(senders) > 1:
        raise _invalid(
            f"Invalid 'From' address: '{raw['From']}'. mailgate sends from one address.", "From"
        )
    if senders:
        fields["from"] = senders[0]
    fields["to"] = _addresses(raw, "To", out)
    if not fields["to"]:
        raise _invalid("Zero recipients specified", "To")
    for key, name in (("Cc", "cc"), ("Bcc", "bcc"), ("ReplyTo", "reply_to")):
        if given := _addresses(raw, key, out):
            fields[name] = given
    if raw.get("Subject") is not None:
        fields["subject"] = raw["Subject"]
    if raw.get("TextBody"):
        fields["text"] = raw["TextBody"]
    if raw.get("HtmlBody"):
        fields["html"] = raw["HtmlBody"]
    if "text" not in fields and "html" not in fields:
        raise _invalid("Provide either email TextBody or HtmlBody or both.", "TextBody")
    if raw.get("Tag"):
        fields["tags"] = [raw["Tag"]]
    if raw.get("Headers") is not None:
        fields["headers"] = _headers(raw["Headers"])
    if raw.get("Attachments") is not None:
        fields["attachments"] = _attachments(raw["Attachments"])
    metadata = _metadata(raw["Metadata"]) if raw.get("Metadata") is not None else {}
    stream = raw.get("MessageStream")
    if stream is not None:
        if metadata.get(STREAM_KEY, stream) != stream:
            raise _invalid(
                f"'MessageStream' is {stream!r} but Metadata.{STREAM_KEY} is "
                f"{metadata[STREAM_KEY]!r}; mailgate keeps the stream as that metadata key.",
                "MessageStream",
            )
        metadata[STREAM_KEY] = stream
        out.stream = True
    if metadata:
        fields["metadata"] = metadata
    return out


def _postmark_field(error: RequestError, message: _Translated | None) -> tuple[str, str | None]:
    """The Postmark field a mailgate refusal is about, and the address it quotes (if one)."""
    found = _MAILGATE_FIELD.match(error.field or "")
    if found is None or found["head"] not in _POSTMARK_NAMES:
        return error.field or "body", None
    name = _POSTMARK_NAMES[found["head"]]
    index = int(found["index"]) if found["index"] is not None else None
    rest = found["rest"]
    if name == "Metadata" and rest == STREAM_KEY and message is not None and message.stream:
        return "MessageStream", None
    if name == "Attachments" and index is not None:
        part = _ATTACHMENT_NAMES.get(rest or "")
        return f"{name}[{index}]" + (f".{part}" if part else ""), None
    if name == "Headers" and rest:
        return name, None
    if name in _ADDRESS_FIELDS and message is not None:
        given = message.addresses.get(name, [])
        if name == "From" and given:
            return name, given[0]
        if index is not None and index < len(given):
            return name, given[index]
    return name, None


def _describe(error: RequestError, message: _Translated | None) -> str:
    """A mailgate refusal in Postmark's words, naming Postmark's field."""
    reason = error.message
    if error.field and reason.startswith(f"{error.field}: "):
        reason = reason[len(error.field) + 2 :]
    name, address = _postmark_field(error, message)
    if address is not None:
        # Postmark's wording: django-anymail reads the address out of it.
        return f"Invalid '{name}' address: '{address}'.\n{reason}"
    return f"'{name}': {reason}"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


def _refusal(error: RequestError, message: _Translated | None = None) -> _Answer:
    """A refusal as Postmark answers it: its HTTP status and `{ErrorCode, Message}`."""

    def answer(status: int, code: ErrorCode, text: str) -> _Answer:
        return _Answer(status, {"ErrorCode": int(code), "Message": text}, error.headers)

    if isinstance(error, _Refused):
        return answer(422, error.error_code, error.message)
    if isinstance(error, Unauthorized):
        return answer(
            401,
            ErrorCode.BAD_TOKEN,
            f"The mailgate key in the {TOKEN_HEADER} header is missing, unknown or revoked. "
            "Send a mailgate key with the send scope.",
        )
    if isinstance(error, TenantDisabled):
        return answer(422, ErrorCode.ACCOUNT_MAY_NOT_SEND, f"This account may not send: {error}.")
    if isinstance(error, SenderNotAllowed):
        sender = message.addresses.get("From", [""])[0] if message else ""
        return answer(
            422,
            ErrorCode.SENDER_SIGNATURE_NOT_FOUND,
            f"The 'From' address you supplied ({sender}) is not a Sender Signature on your "
            f"account: {error.message}.",
        )
    if isinstance(error, Forbidden):
        return answer(
            401, ErrorCode.BAD_TOKEN, f"The mailgate key in the {TOKEN_HEADER} header: {error}."
        )
    if isinstance(error, RateLimited):
        return answer(429, ErrorCode.RATE_LIMITED, f"Rate limit exceeded: {error}.")
    if isinstance(error, QuotaExceeded):
        return answer(422, ErrorCode.NOT_ALLOWED_TO_SEND, f"Not allowed to send: {error}.")
    if isinstance(error, PayloadTooLarge):
        return answer(413, ErrorCode.INVALID_EMAIL_REQUEST, _describe(error, message))
    return answer(422, ErrorCode.INVALID_EMAIL_REQUEST, _describe(error, message))


_UNAVAILABLE = _Answer(
    503,
    {
        "ErrorCode": int(ErrorCode.MAINTENANCE),
        "Message": "mailgate cannot store messages right now; nothing was accepted. "
        "Try again shortly.",
    },
    {"Retry-After": "1"},
)


def _respond(answer: _Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=dict(answer.headers))


def _accepted(message: _Translated, item: NewMessage) -> dict[str, Any]:
    return {
        "To": message.to,
        "SubmittedAt": rfc3339(item.created_at),
        "MessageID": item.id,
        "ErrorCode": int(ErrorCode.OK),
        "Message": "OK",
    }


async def _body(request: Request) -> Any:
    """The request's JSON; raises Postmark's "JSON required" or "invalid JSON" refusals."""
    raw = await request.body()
    if not raw.strip():
        raise _Refused("JSON data required.", field="body", error_code=ErrorCode.JSON_REQUIRED)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise _Refused(
            f"Received invalid JSON input: {exc}.", field="body", error_code=ErrorCode.INVALID_JSON
        ) from None


def router(ctx: ApiContext) -> APIRouter:
    """Postmark's `/email` and `/email/batch`, in front of mailgate's accept path."""
    ingress = Ingress(ctx)
    routes = APIRouter()

    def refuse(error: RequestError, message: _Translated | None = None) -> _Answer:
        ingress.refused(error)
        return _refusal(error, message)

    @routes.post("/email", summary="Send a message (Postmark's Email API)", openapi_extra=SCOPE)
    async def send(request: Request) -> JSONResponse:
        """Store one Postmark message and answer as Postmark does, with mailgate's id."""
        message: _Translated | None = None
        try:
            caller = await ingress.caller(request.headers.get(TOKEN_HEADER), field=TOKEN_HEADER)
            body = await _body(request)
            if not isinstance(body, dict):
                raise _incompatible("body", "a JSON object (one message)")
            message = translate(body)
            item = await ingress.accept(caller, message.fields)
        except RequestError as exc:
            return _respond(refuse(exc, message))
        except StoreUnavailable as exc:
            log.warning("postmark drop-in answering 503: %s", exc)
            return _respond(_UNAVAILABLE)
        return JSONResponse(_accepted(message, item))

    @routes.post(
        "/email/batch",
        summary="Send up to 500 messages (Postmark's batch Email API)",
        openapi_extra=SCOPE,
    )
    async def send_batch(request: Request) -> JSONResponse:
        """Each message validated and answered on its own; the valid ones stored in one group.

        Postmark answers 200 whatever each message's fate, with its
        `ErrorCode` per message in request order; so does this route.
        """
        try:
            caller = await ingress.caller(request.headers.get(TOKEN_HEADER), field=TOKEN_HEADER)
            body = await _body(request)
            if not isinstance(body, list):
                raise _incompatible("body", "a JSON array of messages")
            if len(body) > MAX_BATCH:
                raise _Refused(
                    f"Too many batch messages: {len(body)} (at most {MAX_BATCH}).",
                    field="body",
                    error_code=ErrorCode.TOO_MANY_BATCH_MESSAGES,
                )
        except RequestError as exc:
            return _respond(refuse(exc))
        except StoreUnavailable as exc:
            log.warning("postmark drop-in answering 503: %s", exc)
            return _respond(_UNAVAILABLE)
        answers: list[dict[str, Any]] = [{} for _ in body]
        ready: list[tuple[int, _Translated, NewMessage]] = []
        for index, raw in enumerate(body):
            message: _Translated | None = None
            try:
                if not isinstance(raw, dict):
                    raise _incompatible(f"[{index}]", "a JSON object (one message)")
                message = translate(raw)
                ready.append((index, message, ingress.prepare(caller, message.fields)))
            except RequestError as exc:
                answers[index] = refuse(exc, message).body
        try:
            outcomes: Sequence[Accepted | RequestError] = await ingress.accept_prepared(
                [item for _, _, item in ready]
            )
        except StoreUnavailable as exc:
            log.warning("postmark drop-in answering 503: %s", exc)
            return _respond(_UNAVAILABLE)
        for (index, message, item), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, RequestError):
                answers[index] = refuse(outcome, message).body
            else:
                answers[index] = _accepted(message, item)
        return JSONResponse(answers)

    return routes
