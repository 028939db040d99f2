"""Mailgun's v3 Messages API, spoken by mailgate (docs/drop-in.md, "Mailgun").

Code written for Mailgun (django-anymail's Mailgun backend, plain form
posts) sends through mailgate by pointing its base URL at
`<mailgate>/compat/mailgun/v3` and using a mailgate key as the password of
Mailgun's basic auth (user `api`). Two routes, as Mailgun has them:

- `POST /v3/{domain}/messages`: the message as form fields (multipart, or
  url-encoded without files). Repeated and comma-separated recipients, `h:`
  headers, `v:` variables and `h:X-Mailgun-Variables` (JSON) as metadata,
  `o:tag` as tags, `o:deliverytime` (RFC 2822) as `send_at`, `attachment`
  (`inline` file parts are refused: mailgate's message has no Content-ID, and
  as a plain attachment the HTML's `cid:` reference would not resolve).
- `POST /v3/{domain}/messages.mime`: `to` (the recipients, like SMTP's RCPT
  TO) and a `message` holding the whole MIME message, read by the SMTP
  submission parser (`mailgate.ingest.mime`) so both ways hold mail to one
  set of rules; `o:`/`v:`/`h:` options apply as on `/messages`, and the
  message's own `X-Mailgun-*` headers as their `o:` twins.

Both end in `Ingress.accept`, the one accept path. Decisions, and why:

- `{domain}` is Mailgun's sending domain. A tenant with `sender_domains`
  must name one of them, or gets Mailgun's own `404 Domain not found` (the
  answer anymail explains to its user); a tenant without any may name any
  well-formed domain. The domain is not stored: mailgate's providers send
  with the domains they are configured with, and putting it into metadata
  would hand the provider a variable the caller never set.
- The answer's `id` is `<msg_...@domain>`, Mailgun's `<local@sending-domain>`
  form: the part before `@` is mailgate's message id.
- Nothing the caller asked for is dropped quietly: a feature mailgate does
  not have (test mode, stored templates, batch sending with
  `recipient-variables`, tracking switches, AMP, ...) is refused with 400
  naming the parameter. Only options that concern Mailgun's account alone
  (sending IP or pool, and switches whose asked-for value is what mailgate's
  providers do anyway) are ignored.
- Mailgun has no idempotency key, and this route invents none.
"""

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from mailgate.api.context import ApiContext
from mailgate.compat.common import SCOPE, Ingress
from mailgate.errors import InvalidRequest, NotFound, RequestError, StoreUnavailable, Unauthorized
from mailgate.ingest.mime import message_fields, parse_message
from mailgate.providers.mailgun import API_USER, CONTROL_HEADERS, QUEUED
from mailgate.store import Tenant

MAX_FILES = 1000
MAX_FIELDS = 10_000

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ANGLE = re.compile(r"^(?P<name>[^<>]*)<(?P<email>[^<>]*)>\s*$")
_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

# Options whose every value only concerns Mailgun's account: the sending IP or pool are
# Mailgun resources with no meaning at another provider, and skip-verification only
# relaxes the TLS check that require-tls (refused when asked for) would make.
_ACCOUNT_ONLY = frozenset({"o:sending-ip", "o:sending-ip-pool", "o:skip-verification"})

# Yes/no options: the value mailgate's providers give anyway is accepted (and has
# nothing to change), the other is refused with the reason.
_SWITCHES: dict[str, tuple[frozenset[str], str]] = {
    "o:testmode": (_NO, "mailgate has no test mode: the message would really be delivered"),
    "o:dkim": (_YES, "mailgate cannot turn DKIM signing off; providers sign as configured"),
    "o:require-tls": (_NO, "mailgate cannot require TLS to the recipient's server"),
}

_UNSUPPORTED = {
    "amp-html": "mailgate's message has no AMP part",
    "template": "mailgate has no stored templates; send the rendered text and html",
    "recipient-variables": (
        "mailgate has no batch sending with %recipient.*% substitution; "
        "send one message per recipient"
    ),
    "o:tracking": "mailgate does not set tracking per message; it follows each provider's account",
    "o:deliverytime-optimize-period": "mailgate has no send-time optimization",
    "o:time-zone-localize": "mailgate has no send-time optimization",
    "o:archive-to": "mailgate does not archive messages to a URL",
    "o:secondary-dkim": "mailgate cannot add a second DKIM signature",
    "o:suppress-headers": "mailgate cannot suppress Mailgun's headers",
}
_NO_SUCH = "mailgate has no such option"


def router(ctx: ApiContext) -> APIRouter:
    ingress = Ingress(ctx)
    routes = APIRouter()
    part_limit = ctx.settings.server.max_request_bytes

    # Like /v1/messages, the routes read the raw request themselves (no body
    # parameters for FastAPI to solve) and check the key before reading the body.
    @routes.post(
        "/v3/{domain}/messages",
        summary="Send a message (Mailgun's form fields)",
        openapi_extra=SCOPE | _documented("from, to, cc, bcc, subject, text, html, h:*, v:*, o:*"),
    )
    async def send(request: Request, domain: str) -> JSONResponse:
        """Mailgun's `messages`: one message from form fields; 200 once it is stored."""
        return await _answer(ingress, request, domain, part_limit, mime=False)

    @routes.post(
        "/v3/{domain}/messages.mime",
        summary="Send a MIME message (Mailgun's messages.mime)",
        openapi_extra=SCOPE | _documented("to, message (the MIME message), h:*, v:*, o:*"),
    )
    async def send_mime(request: Request, domain: str) -> JSONResponse:
        """Mailgun's `messages.mime`: `to` plus the whole message; 200 once it is stored."""
        return await _answer(ingress, request, domain, part_limit, mime=True)

    return routes


def _documented(fields: str) -> dict[str, Any]:
    schema = {"type": "object", "description": f"Mailgun's form fields: {fields}"}
    content = {kind: {"schema": schema} for kind in _FORM_TYPES}
    return {"requestBody": {"required": True, "content": content}}


async def _answer(
    ingress: Ingress, request: Request, domain: str, part_limit: int, *, mime: bool
) -> JSONResponse:
    """Mailgun's answer to one send: `200 {"id", "message"}`, or its error shape."""
    try:
        caller = await ingress.caller(_secret(request), field="Authorization")
        domain = _sending_domain(domain, caller.tenant)
        values, files = await _read_form(request, part_limit)
        fields = mime_message(values, files) if mime else form_message(values, files)
    except RequestError as exc:
        return _refusal(ingress, exc, exc.message)
    try:
        item = await ingress.accept(caller, fields)
    except RequestError as exc:
        return _refusal(ingress, exc, _in_mailgun_terms(exc, mime_name if mime else form_name))
    except StoreUnavailable as exc:
        return JSONResponse({"message": str(exc)}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"id": f"<{item.id}@{domain}>", "message": QUEUED})


def _refusal(ingress: Ingress, error: RequestError, message: str) -> JSONResponse:
    """Mailgun's error shape, `{"message": ...}`, with mailgate's status and headers."""
    ingress.refused(error)
    headers = dict(error.headers)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Basic realm="mailgate"'
    return JSONResponse({"message": message}, status_code=error.status_code, headers=headers)


def _secret(request: Request) -> str:
    """The key from Mailgun's basic auth (user `api`); `Unauthorized` without it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, sep, secret = (
                base64.b64decode(token.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            pass
        else:
            if sep and user == API_USER and secret:
                return secret
    raise Unauthorized(
        f"send your mailgate key as HTTP basic auth, user '{API_USER}', the key as password",
        field="Authorization",
    )


def _sending_domain(domain: str, tenant: Tenant) -> str:
    """The path's domain, lower-cased; Mailgun's 404 when the tenant may not send from it."""
    lowered = domain.lower()
    if not _DOMAIN.match(lowered) or (
        tenant.sender_domains and lowered not in tenant.sender_domains
    ):
        raise NotFound(f"Domain not found: {domain}", field="domain")
    return lowered


@dataclass(frozen=True, slots=True)
class FilePart:
    """A file part of the form, read."""

    name: str
    filename: str
    content_type: str
    data: bytes


async def _read_form(
    request: Request, part_limit: int
) -> tuple[list[tuple[str, str]], list[FilePart]]:
    """The form's plain fields and file parts, in order; 400 when it is not a form."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in _FORM_TYPES:
        raise InvalidRequest(
            f"the body must be {' or '.join(_FORM_TYPES)}, not {kind or 'nothing'}",
            field="Content-Type",
        )
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise InvalidRequest("a compressed body is not supported", field="Content-Encoding")
    form: FormData | None = None
    try:
        form = await request.form(
            max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=part_limit
        )
        values: list[tuple[str, str]] = []
        files: list[FilePart] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                kind = value.content_type or "application/octet-stream"
                files.append(FilePart(name, value.filename or "", kind, await value.read()))
            else:
                values.append((name, value))
        return values, files
    except (MultiPartException, HTTPException) as exc:
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise InvalidRequest(f"the form could not be read: {detail}", field="body") from None
    finally:
        if form is not None:
            await form.close()


def form_message(values: Sequence[tuple[str, str]], files: Sequence[FilePart]) -> dict[str, Any]:
    """`MessageIn` fields from `/messages`' form; `InvalidRequest` in Mailgun's words."""
    draft = _Draft()
    single: dict[str, str] = {}
    recipients: dict[str, list[str]] = {"from": [], "to": [], "cc": [], "bcc": []}
    for name, value in values:
        if name in recipients:
            recipients[name].append(value)
        elif name in ("attachment", "inline"):
            raise InvalidRequest(
                f"'{name}' parameter must be a file part with a file name", field=name
            )
        elif name in ("subject", "text", "html"):
            if name in single:
                raise InvalidRequest(f"'{name}' parameter is given more than once", field=name)
            single[name] = value
        else:
            draft.param(name, value)
    for part in files:
        if part.name not in ("attachment", "inline"):
            raise InvalidRequest(
                f"'{part.name}' parameter must be a plain field, not a file", field=part.name
            )
        draft.attach(part)
    for name in ("from", "to", "subject"):
        if not (recipients.get(name) or single.get(name) is not None):
            raise InvalidRequest(f"{name} parameter is missing", field=name)
    if "text" not in single and "html" not in single:
        raise InvalidRequest(
            "Need at least one of 'text' or 'html' parameters specified", field="text"
        )
    senders = addresses(recipients["from"], "from")
    if len(senders) != 1:
        raise InvalidRequest("'from' parameter must name exactly one address", field="from")
    fields: dict[str, Any] = {"from": senders[0], **single}
    for kind in ("to", "cc", "bcc"):
        fields[kind] = addresses(recipients[kind], kind)
    return fields | draft.fields()


def mime_message(values: Sequence[tuple[str, str]], files: Sequence[FilePart]) -> dict[str, Any]:
    """`MessageIn` fields from `messages.mime`: `to`, `message` and options."""
    draft = _Draft()
    to: list[str] = []
    options: list[tuple[str, str]] = []
    raw: bytes | None = None
    for name, value in values:
        if name == "to":
            to.append(value)
        elif name == "message":
            raw = value.encode()
        elif name in ("from", "cc", "bcc", "subject", "text", "html"):
            raise InvalidRequest(
                f"'{name}' parameter is not one of messages.mime's: it belongs in the message",
                field=name,
            )
        else:
            options.append((name, value))
    for part in files:
        if part.name != "message":
            raise InvalidRequest(
                f"'{part.name}' parameter is not one of messages.mime's files", field=part.name
            )
        raw = part.data
    if not to:
        raise InvalidRequest("to parameter is missing", field="to")
    if raw is None:
        raise InvalidRequest("message parameter is missing", field="message")
    envelope = [_bare(address) for address in addresses(to, "to")]
    msg = parse_message(raw)
    fields = message_fields(msg, mail_from=None, rcpt_tos=envelope)
    headers: dict[str, str] = {}
    for name, value in fields.pop("headers").items():
        if name.lower().startswith("x-mailgun-"):
            for each in msg.get_all(name, []):  # each of a repeated header, not joined
                draft.header(name, str(each).strip(), given_as=f"message's {name} header")
        else:
            headers[name] = value
    for name, value in options:  # after the message's own, so its tags come first
        draft.param(name, value)
    extra = draft.fields()
    return fields | {
        "headers": headers | extra["headers"],
        "reply_to": fields["reply_to"] + extra.get("reply_to", []),
        "tags": fields["tags"] + extra["tags"],
        "metadata": _merged(fields["metadata"], extra["metadata"], "v:"),
        **({"send_at": extra["send_at"]} if "send_at" in extra else {}),
        "attachments": fields["attachments"] + extra["attachments"],
    }


def addresses(values: Sequence[str], name: str) -> list[Any]:
    """Each address of repeated, comma-separated values, for `MessageIn` to check.

    The list is split here (commas outside quotes and angle brackets) and each
    address left whole for `MessageIn`, which refuses a malformed one naming it:
    a lenient parser (the stdlib's `getaddresses`) would quietly turn `a b` into
    `a`, or a CR/LF-injected `Bcc:` into one more recipient.
    """
    found: list[Any] = []
    for value in values:
        for piece in _split(value):
            match = _ANGLE.match(piece)
            if match is not None and "=?" in match["name"]:  # RFC 2047 encoded words
                try:
                    name_text = str(make_header(decode_header(match["name"].strip())))
                except (ValueError, LookupError):
                    raise InvalidRequest(
                        f"'{name}' parameter has a malformed encoded name", field=name
                    ) from None
                found.append({"email": match["email"], "name": name_text})
            else:
                found.append(piece)
    return found


def _split(value: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char in "<>" and not quoted:
            angle = char == "<"
        elif char == "," and not (quoted or angle):
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _bare(address: Any) -> str:
    """The address itself of `addresses`' item (a string or an address object)."""
    if isinstance(address, dict):
        return str(address["email"])
    match = _ANGLE.match(address)
    return match["email"].strip() if match is not None else str(address).strip()


@dataclass
class _Draft:
    """What the `h:`, `v:` and `o:` parameters (and file parts) add to a message."""

    headers: dict[str, str] = field(default_factory=dict)
    reply_to: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    json_variables: dict[str, str] = field(default_factory=dict)
    send_at: str | None = None
    attachments: list[dict[str, str]] = field(default_factory=list)

    def param(self, name: str, value: str) -> None:
        lowered = name.lower()
        if lowered.startswith("h:"):
            self.header(name[2:], value, given_as=name)
        elif lowered.startswith("v:"):
            self.variable(name[2:], value, given_as=name)
        elif lowered.startswith(("o:", "t:")) or lowered in _UNSUPPORTED:
            self.option(lowered, value, given_as=name)
        else:
            raise InvalidRequest(f"'{name}' parameter is not supported by mailgate", field=name)

    def header(self, name: str, value: str, *, given_as: str) -> None:
        lowered = name.lower()
        if lowered == "reply-to":
            self.reply_to.append(value)
        elif lowered in CONTROL_HEADERS:
            self.option(CONTROL_HEADERS[lowered], value, given_as=given_as)
        elif lowered.startswith("x-mailgun-"):
            raise InvalidRequest(
                f"'{given_as}' parameter is a Mailgun control header mailgate does not have",
                field=given_as,
            )
        else:  # a repeated header joined, as SMTP submission joins it; first spelling kept
            first = next((n for n in self.headers if n.lower() == lowered), name)
            self.headers[first] = (
                f"{self.headers[first]}, {value}" if first in self.headers else value
            )

    def variable(self, key: str, value: str, *, given_as: str) -> None:
        if key in self.variables:
            raise InvalidRequest(f"'{given_as}' parameter is given more than once", field=given_as)
        self.variables[key] = value

    def option(self, name: str, value: str, *, given_as: str) -> None:
        flag = value.strip().lower()
        if name == "o:tag":
            self.tags.append(value)
        elif name == "o:deliverytime":
            if self.send_at is not None:
                raise InvalidRequest(
                    f"'{given_as}' parameter is given more than once", field=given_as
                )
            self.send_at = _delivery_time(value, given_as)
        elif name == "variables":
            self.json_variables = _merged(
                self.json_variables, _json_variables(value, given_as), given_as
            )
        elif name in _ACCOUNT_ONLY:
            pass
        elif name in _SWITCHES:
            allowed, reason = _SWITCHES[name]
            if flag not in allowed:
                known = flag in _YES or flag in _NO
                why = reason if known else "give yes or no"
                raise InvalidRequest(
                    f"'{given_as}' parameter={value!r} is not supported: {why}", field=given_as
                )
        else:
            key = "template" if name.startswith("t:") else name
            reason = next((why for k, why in _UNSUPPORTED.items() if key.startswith(k)), _NO_SUCH)
            raise InvalidRequest(
                f"'{given_as}' parameter is not supported: {reason}", field=given_as
            )

    def attach(self, part: FilePart) -> None:
        if part.name == "inline":
            # mailgate's messages have no Content-ID: as a plain attachment the HTML's
            # `cid:` reference would not resolve, so it is refused, not changed quietly.
            raise InvalidRequest(
                "'inline' parameter is not supported: mailgate has no inline parts "
                "(Content-ID); send the file as an attachment or link the image",
                field="inline",
            )
        if not part.filename:
            raise InvalidRequest(
                f"'{part.name}' parameter must be a file part with a file name", field=part.name
            )
        self.attachments.append(
            {
                "filename": part.filename,
                "content_type": part.content_type,
                "content": base64.b64encode(part.data).decode("ascii"),
            }
        )

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "headers": self.headers,
            "tags": self.tags,
            "metadata": _merged(self.json_variables, self.variables, "v:"),
            "attachments": self.attachments,
        }
        if self.reply_to:
            fields["reply_to"] = addresses(self.reply_to, "h:Reply-To")
        if self.send_at is not None:
            fields["send_at"] = self.send_at
        return fields


def _delivery_time(value: str, given_as: str) -> str:
    """An RFC 2822 date as ISO 8601; one without a zone (`-0000`) is UTC."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise InvalidRequest(
            f"'{given_as}' parameter is not an RFC 2822 date (Fri, 14 Oct 2030 23:10:10 -0000)",
            field=given_as,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def _json_variables(value: str, given_as: str) -> dict[str, str]:
    """`X-Mailgun-Variables`: a JSON object; values that are not strings kept as JSON text."""
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidRequest(f"'{given_as}' parameter is not a JSON object", field=given_as)
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in data.items()
    }


def _merged(first: dict[str, str], second: dict[str, str], given_as: str) -> dict[str, str]:
    """Both sets of variables; one key with two different values is refused."""
    for key, value in second.items():
        if key in first and first[key] != value:
            name = f"v:{key}" if given_as == "v:" else given_as
            raise InvalidRequest(
                f"'{name}' parameter is given twice, with different values", field=name
            )
    return first | second


_FORM_NAMES = {
    "from": "from",
    "reply_to": "h:Reply-To",
    "tags": "o:tag",
    "send_at": "o:deliverytime",
    "attachments": "attachment",
}
_MIME_HEADERS = {
    "from": "From",
    "to": "To",
    "cc": "Cc",
    "reply_to": "Reply-To",
    "subject": "Subject",
}


def form_name(field: str) -> str:
    """The `/messages` parameter a `MessageIn` field came from (`headers.X-A` → `h:X-A`)."""
    if field.startswith("headers."):
        return "h:" + field.removeprefix("headers.")
    if field.startswith("metadata."):
        return "v:" + field.removeprefix("metadata.")
    base = re.split(r"[.\[]", field, maxsplit=1)[0]
    return _FORM_NAMES.get(base, base)


def mime_name(field: str) -> str:
    """Where in a `messages.mime` request a `MessageIn` field came from."""
    base = re.split(r"[.\[]", field, maxsplit=1)[0]
    if base in _MIME_HEADERS:
        return f"message's {_MIME_HEADERS[base]} header"
    if base == "headers":
        return f"message's {field.removeprefix('headers.')} header"
    if base in ("text", "html"):
        return f"message's {base} body"
    if base == "attachments":
        return "message's attachment part"
    if base == "bcc":
        return "to"
    return form_name(field)


def _in_mailgun_terms(error: RequestError, name_of: Callable[[str], str]) -> str:
    """A refusal from the accept path, naming the Mailgun parameter instead of mailgate's field."""
    if error.field is None:
        return error.message
    detail = error.message.removeprefix(f"{error.field}: ")
    verb = "is invalid" if error.status_code == 400 else "is refused"
    return f"'{name_of(error.field)}' parameter {verb}: {detail}"
