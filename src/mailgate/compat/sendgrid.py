"""SendGrid v3 Mail Send, served by mailgate: `POST /v3/mail/send`.

Code written for SendGrid (its `sendgrid` SDK, django-anymail's SendGrid
backend, plain HTTP) sends through mailgate by pointing its base URL at
`<mailgate>/compat/sendgrid` and using a mailgate key with the `send` scope
as the API key. mailgate then adds failover, history and its tenant rules.

What the route does, and why:

- Each personalization becomes one mailgate message, because that is what
  SendGrid makes of it: its own to/cc/bcc, and its own `subject`,
  `headers`, `custom_args`, `send_at` and `from` over the message-level ones.
  The request stands or falls as a whole, as at SendGrid: every message is
  validated before any is stored, and all are stored in one group commit.
- Fields map onto `MessageIn` (docs/drop-in.md has the table); the one
  accept path then applies the same validation, tenant rules, quota and
  group commit as `/v1/messages`. A refusal names SendGrid's own field
  (`personalizations.0.to.1`, `attachments.0.content`, `custom_args.k`).
- A field asking for something mailgate does not do (templates, unsubscribe
  groups, batch ids, tracking or mail settings it cannot honour, inline
  parts) is refused with a 400 naming it, never silently dropped: the
  message would otherwise go out other than the caller asked. Only
  `ip_pool_name`, a choice among the SendGrid account's own IPs, is ignored.
- `mail_settings.sandbox_mode` is honoured: the request is checked (key,
  fields, tenant rules) and answered `200` with nothing stored or sent.
- The answer is SendGrid's: `202`, an empty body, and `X-Message-Id`. That
  is the first message's mailgate id; with several personalizations,
  `X-Mailgate-Message-Ids` lists every message's id in order. Refusals are
  SendGrid's `{"errors": [{"message", "field", "help"}]}` with SendGrid's
  status: 400 invalid, 401 unknown key, 403 a key without `send`, a disabled
  tenant or a sender outside the tenant's domains, 413 too large, 429 the
  tenant's rate limit or daily quota (with `Retry-After`), 503 store down.
- SendGrid has no idempotency key, and this route does not invent one: a
  repeated request is a new message, as it would be at SendGrid.
"""

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mailgate.api.context import ApiContext
from mailgate.compat.common import SCOPE, Ingress
from mailgate.errors import (
    InvalidRequest,
    RequestError,
    StoreUnavailable,
    Unauthorized,
)
from mailgate.providers.sendgrid import MAX_PERSONALIZATIONS, SEND_PATH, error_body
from mailgate.store import NewMessage

log = logging.getLogger(__name__)

MESSAGE_IDS_HEADER = "X-Mailgate-Message-Ids"
"""Every message's id, in personalization order, when a request made several."""

_TOP_LEVEL = frozenset(
    {
        "personalizations", "from", "reply_to", "reply_to_list", "subject", "content",
        "attachments", "template_id", "sections", "headers", "categories", "custom_args",
        "send_at", "batch_id", "asm", "ip_pool_name", "mail_settings", "tracking_settings",
    }
)  # fmt: skip
_PERSONALIZATION = frozenset(
    {
        "to", "cc", "bcc", "from", "subject", "headers", "substitutions",
        "dynamic_template_data", "custom_args", "send_at",
    }
)  # fmt: skip
_ADDRESS_KEYS = frozenset({"email", "name"})
_ATTACHMENT_KEYS = frozenset({"content", "filename", "type", "disposition", "content_id"})
_BODY_TYPES = {"text/plain": "text", "text/html": "html"}
_MAIL_SETTINGS_OFF = frozenset(
    {
        "bypass_list_management", "bypass_spam_management", "bypass_bounce_management",
        "bypass_unsubscribe_management", "footer", "spam_check", "bcc",
    }
)  # fmt: skip
"""Mail settings that are fine switched off (what mailgate does anyway), refused on."""

_UNSUPPORTED = {
    "template_id": "mailgate has no templates: send the rendered subject and content",
    "sections": "mailgate has no templates or substitutions: send the rendered content",
    "batch_id": (
        "mailgate has no batch ids: each message has its own id (X-Message-Id); "
        "cancel a scheduled one with POST /v1/messages/{id}/cancel"
    ),
    "asm": (
        "mailgate has no unsubscribe groups; dropping them would mail people who left the group"
    ),
    "tracking_settings": (
        "mailgate does not set open or click tracking: it delivers through whichever "
        "provider is up, so set tracking in each provider's account"
    ),
    "substitutions": "mailgate has no templates or substitutions: send the rendered content",
    "dynamic_template_data": "mailgate has no templates: send the rendered subject and content",
}
"""Fields naming a feature mailgate does not have, and why they are refused."""


def router(ctx: ApiContext) -> APIRouter:
    ingress = Ingress(ctx)
    api = APIRouter()

    @api.post(
        SEND_PATH,
        status_code=202,
        summary="Send mail as SendGrid's v3 Mail Send does",
        response_class=Response,
        openapi_extra=SCOPE,
    )
    async def mail_send(request: Request) -> Response:
        """Store one message per personalization; answer as SendGrid does (docs/drop-in.md)."""
        try:
            return await _send(ingress, request)
        except RequestError as error:
            ingress.refused(error)
            return _refusal(error)
        except StoreUnavailable as exc:
            log.warning("answering 503: %s", exc)
            body = error_body("the store is unavailable; try again", None)
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    return api


async def _send(ingress: Ingress, request: Request) -> Response:
    caller = await ingress.caller(_secret(request))
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    mail = read_mail(body)
    prepared: list[NewMessage] = []
    for message in mail.messages:
        try:
            prepared.append(ingress.prepare(caller, message.fields))
        except RequestError as error:
            raise message.where.translate(error) from None
    if mail.sandbox:
        return Response(status_code=200)
    # One answer for the whole request: its messages take the daily quota all or none.
    outcomes = await ingress.accept_prepared(prepared, together=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, RequestError):
            raise mail.messages[index].where.translate(outcome)
    ids = [item.id for item in prepared]
    headers = {"X-Message-Id": ids[0]}
    if len(ids) > 1:
        headers[MESSAGE_IDS_HEADER] = ", ".join(ids)
    return Response(status_code=202, headers=headers)


def _secret(request: Request) -> str:
    """The key, where SendGrid's clients send theirs: `Authorization: Bearer <key>`."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("authorization required: send 'Authorization: Bearer <mailgate key>'")
    return secret.strip()


def _refusal(error: RequestError) -> JSONResponse:
    """A refusal in SendGrid's shape and status; auth and limits name no field, as there."""
    named = None if error.status_code in (401, 429) else error.field
    return JSONResponse(
        error_body(error.message, named), status_code=error.status_code, headers=error.headers
    )


# --- reading the request ------------------------------------------------------


@dataclass
class Where:
    """Where each `MessageIn` field of one message came from in the SendGrid request.

    mailgate's validation names its own fields (`to[1]`, `headers.X-Foo`,
    `attachments[0].content_type`); `translate` names SendGrid's instead
    (`personalizations.0.to.1`, `personalizations.0.headers.X-Foo`,
    `attachments.0.type`), so the caller finds the field in what it sent.
    """

    roots: dict[str, str] = field(
        default_factory=lambda: {"from": "from", "subject": "subject", "send_at": "send_at"}
    )
    keyed: dict[str, dict[str, str]] = field(default_factory=dict)
    """For `headers` and `metadata`: each key's object (message or personalization level)."""

    def field_of(self, name: str | None) -> str | None:
        match = re.fullmatch(r"([a-z_]+)(.*)", name or "", re.DOTALL)
        if match is None or match[1] not in self.roots:
            return None
        root, rest = match[1], match[2]
        base = self.roots[root]
        if root in self.keyed:
            key = rest[1:] if rest.startswith(".") else None
            if key is None:
                return base
            return f"{self.keyed[root].get(key, base)}.{key}"
        rest = re.sub(r"\[(\d+)\]", r".\1", rest)
        if root == "attachments":
            rest = re.sub(r"\.content_type$", ".type", rest)
        if root == "reply_to" and base == "reply_to":
            rest = re.sub(r"^\.0", "", rest)  # a single `reply_to` object
        return base + rest

    def translate(self, error: RequestError) -> RequestError:
        """A copy of the error naming SendGrid's field instead of mailgate's."""
        named = self.field_of(error.field)
        message = error.message
        if error.field and message.startswith(f"{error.field}: "):
            message = message[len(error.field) + 2 :]
        message = f"{named}: {message}" if named else message
        # The same class and data (`retry_after` too) with the new field and message;
        # built by hand, as `copy` would call `__init__` without its keyword arguments.
        translated = type(error).__new__(type(error), message)
        translated.__dict__.update(vars(error), field=named, message=message)
        return translated


@dataclass(frozen=True)
class Message:
    """One personalization as `MessageIn` fields, and where they came from."""

    fields: dict[str, Any]
    where: Where


@dataclass(frozen=True)
class Mail:
    """A v3 Mail Send request as mailgate messages; `sandbox`: check it, send nothing."""

    messages: list[Message]
    sandbox: bool


def read_mail(body: Any) -> Mail:
    """The request as one message per personalization; raises `InvalidRequest`
    naming SendGrid's field for anything mailgate cannot send as asked."""
    data = _object(body, None)
    for key in data:
        if key not in _TOP_LEVEL:
            raise InvalidRequest(f"{key}: unknown field", field=key)
        if key in _UNSUPPORTED and data[key] not in (None, {}, ""):
            raise InvalidRequest(f"{key}: {_UNSUPPORTED[key]}", field=key)
    sandbox = _mail_settings(data.get("mail_settings"))
    base: dict[str, Any] = {}
    where = Where()
    if "from" in data:
        base["from"] = _address(data["from"], "from")
        where.roots["from"] = "from"
    _reply_to(data, base, where)
    if "subject" in data:
        base["subject"] = _string(data["subject"], "subject")
        where.roots["subject"] = "subject"
    _content(data.get("content"), base, where)
    if "attachments" in data:
        base["attachments"] = _attachments(data["attachments"])
        where.roots["attachments"] = "attachments"
    if "categories" in data:
        base["tags"] = [
            _string(c, f"categories.{i}")
            for i, c in enumerate(_array(data["categories"], "categories"))
        ]
        where.roots["tags"] = "categories"
    if "send_at" in data:
        base["send_at"] = _send_at(data["send_at"], "send_at")
        where.roots["send_at"] = "send_at"
    headers = _strings(data.get("headers"), "headers")
    custom_args = _strings(data.get("custom_args"), "custom_args")
    personalizations = _array(data.get("personalizations"), "personalizations")
    if not personalizations:
        raise InvalidRequest(
            "personalizations: at least one personalization is required", field="personalizations"
        )
    if len(personalizations) > MAX_PERSONALIZATIONS:
        raise InvalidRequest(
            f"personalizations: at most {MAX_PERSONALIZATIONS} per request",
            field="personalizations",
        )
    messages = [
        _personalization(p, f"personalizations.{i}", base, where, headers, custom_args)
        for i, p in enumerate(personalizations)
    ]
    return Mail(messages=messages, sandbox=sandbox)


def _personalization(
    value: Any,
    path: str,
    base: Mapping[str, Any],
    base_where: Where,
    headers: dict[str, str],
    custom_args: dict[str, str],
) -> Message:
    data = _object(value, path)
    for key in data:
        if key not in _PERSONALIZATION:
            raise InvalidRequest(f"{path}.{key}: unknown field", field=f"{path}.{key}")
        if key in _UNSUPPORTED and data[key] not in (None, {}):
            raise InvalidRequest(f"{path}.{key}: {_UNSUPPORTED[key]}", field=f"{path}.{key}")
    fields = dict(base)
    where = Where(roots=dict(base_where.roots))
    seen: set[str] = set()
    for kind in ("to", "cc", "bcc"):
        where.roots[kind] = f"{path}.{kind}"
        if kind not in data:
            continue
        addresses = _array(data[kind], f"{path}.{kind}")
        fields[kind] = [_address(a, f"{path}.{kind}.{i}") for i, a in enumerate(addresses)]
        for i, address in enumerate(fields[kind]):
            email = str(address["email"]).lower()
            if email in seen:
                raise InvalidRequest(
                    f"{path}.{kind}.{i}: each address may appear only once among a "
                    "personalization's to, cc and bcc",
                    field=f"{path}.{kind}.{i}",
                )
            seen.add(email)
    for key, root, read in (
        ("from", "from", _address),
        ("subject", "subject", _string),
        ("send_at", "send_at", _send_at),
    ):
        if key in data:
            fields[root] = read(data[key], f"{path}.{key}")
            where.roots[root] = f"{path}.{key}"
    own_headers = _strings(data.get("headers"), f"{path}.headers")
    own_args = _strings(data.get("custom_args"), f"{path}.custom_args")
    fields["headers"] = {**headers, **own_headers}
    fields["metadata"] = {**custom_args, **own_args}
    for root, own, name in (
        ("headers", own_headers, "headers"),
        ("metadata", own_args, "custom_args"),
    ):
        where.roots[root] = f"{path}.{name}" if own else name
        where.keyed[root] = {
            key: (f"{path}.{name}" if key in own else name) for key in fields[root]
        }
    return Message(fields={k: v for k, v in fields.items() if v not in ({}, [])}, where=where)


def _mail_settings(value: Any) -> bool:
    """Whether sandbox mode is on; refuses a setting mailgate would not honour."""
    settings = _object(value, "mail_settings") if value is not None else {}
    sandbox = False
    for key, setting in settings.items():
        path = f"mail_settings.{key}"
        if key != "sandbox_mode" and key not in _MAIL_SETTINGS_OFF:
            raise InvalidRequest(f"{path}: unknown field", field=path)
        enable = _object(setting, path).get("enable", False)
        if not isinstance(enable, bool):
            raise InvalidRequest(f"{path}.enable: must be true or false", field=f"{path}.enable")
        if key == "sandbox_mode":
            sandbox = enable
        elif enable:
            raise InvalidRequest(
                f"{path}: mailgate cannot honour this setting (it delivers through whichever "
                "provider is up, and applies its own suppressions); leave it off",
                field=path,
            )
    return sandbox


def _reply_to(data: Mapping[str, Any], base: dict[str, Any], where: Where) -> None:
    if "reply_to" in data and "reply_to_list" in data:
        raise InvalidRequest(
            "reply_to_list: give reply_to or reply_to_list, not both", field="reply_to_list"
        )
    if "reply_to" in data:
        base["reply_to"] = [_address(data["reply_to"], "reply_to")]
        where.roots["reply_to"] = "reply_to"
    elif "reply_to_list" in data:
        items = _array(data["reply_to_list"], "reply_to_list")
        base["reply_to"] = [_address(a, f"reply_to_list.{i}") for i, a in enumerate(items)]
        where.roots["reply_to"] = "reply_to_list"


def _content(value: Any, base: dict[str, Any], where: Where) -> None:
    where.roots["text"] = where.roots["html"] = "content"
    if value is None:
        return
    for i, item in enumerate(_array(value, "content")):
        part = _object(item, f"content.{i}")
        unknown = set(part) - {"type", "value"}
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidRequest(f"content.{i}.{key}: unknown field", field=f"content.{i}.{key}")
        kind = _string(part.get("type"), f"content.{i}.type")
        root = _BODY_TYPES.get(kind.split(";")[0].strip().lower())
        if root is None:
            raise InvalidRequest(
                f"content.{i}.type: mailgate sends text/plain and text/html bodies only, "
                f"not {kind}",
                field=f"content.{i}.type",
            )
        if root in base:
            raise InvalidRequest(
                f"content.{i}.type: only one {kind} body is allowed", field=f"content.{i}.type"
            )
        text = _string(part.get("value"), f"content.{i}.value")
        if not text:
            raise InvalidRequest(
                f"content.{i}.value: must be at least one character long",
                field=f"content.{i}.value",
            )
        base[root] = text
        where.roots[root] = f"content.{i}"


def _attachments(value: Any) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(_array(value, "attachments")):
        path = f"attachments.{i}"
        data = _object(item, path)
        unknown = set(data) - _ATTACHMENT_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidRequest(f"{path}.{key}: unknown field", field=f"{path}.{key}")
        disposition = data.get("disposition", "attachment")
        if disposition != "attachment" or data.get("content_id") is not None:
            wrong = "content_id" if data.get("content_id") is not None else "disposition"
            raise InvalidRequest(
                f"{path}.{wrong}: mailgate has no inline parts (Content-ID); send the file "
                "as an attachment or link the image",
                field=f"{path}.{wrong}",
            )
        attachment = {
            "filename": _string(data.get("filename"), f"{path}.filename"),
            "content": _string(data.get("content"), f"{path}.content"),
        }
        if data.get("type") is not None:
            attachment["content_type"] = _string(data["type"], f"{path}.type")
        out.append(attachment)
    return out


def _send_at(value: Any, path: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{path}: must be a UNIX timestamp in whole seconds", field=path)
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidRequest(f"{path}: {value} is not a usable time", field=path) from None


def _address(value: Any, path: str) -> dict[str, Any]:
    data = _object(value, path)
    unknown = set(data) - _ADDRESS_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidRequest(f"{path}.{key}: unknown field", field=f"{path}.{key}")
    if not isinstance(data.get("email"), str):
        raise InvalidRequest(f"{path}.email: an email address is required", field=f"{path}.email")
    return data


def _strings(value: Any, path: str) -> dict[str, str]:
    """An object of string values (`headers`, `custom_args`): SendGrid refuses any other."""
    if value is None:
        return {}
    data = _object(value, path)
    for key, item in data.items():
        if not isinstance(item, str):
            raise InvalidRequest(f"{path}.{key}: values must be strings", field=f"{path}.{key}")
    return data


def _object(value: Any, path: str | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{path or 'the body'}: must be a JSON object", field=path)
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{path}: must be an array", field=path)
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{path}: must be a string", field=path)
    return value
