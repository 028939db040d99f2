"""A local Mailgun v3 Messages API: `POST /v3/{domain}/messages`, multipart form.

Basic auth `api:<key>`, repeated fields, `h:`/`o:`/`v:` prefixes, file parts
named `attachment`; answers 200 `{"id": "<...@domain>", "message": "Queued.
Thank you."}`, and errors as Mailgun does: `{"message": ...}`, a bare
"Forbidden" for a bad key, 404 for an unknown domain.
"""

from __future__ import annotations

import base64
import secrets
import time
from email.utils import formatdate, getaddresses
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider

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
    def __init__(self, api_key: str, domain: str, *, keep: int | None = None) -> None:
        super().__init__(keep=keep)
        self.api_key = api_key
        self.domain = domain

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
        self.record(message_id, (fields.get("v:mailgate_id") or [None])[0], fields)
        return JSONResponse({"id": f"<{message_id}>", "message": "Queued. Thank you."})


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
