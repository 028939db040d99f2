"""Errors as JSON: `{"error": {"code", "message", "field"}}`, mapped by exception class."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from mailgate.errors import InvalidRequest, RequestError, StoreUnavailable
from mailgate.metrics import Metrics

log = logging.getLogger(__name__)

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
}


def error_body(exc: RequestError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}


def _field(loc: tuple[int | str, ...]) -> str | None:
    if not loc:
        return "body"  # the body as a whole: not JSON, or not an object
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        source = parts.pop(0)
        if source == "body" and (not parts or isinstance(parts[0], int)):
            return "body"  # the JSON itself is malformed, or not an object
        if source == "header" and parts:
            return "-".join(p.capitalize() for p in str(parts[0]).split("-"))
    out = ""
    for part in parts:
        if part == "[key]":  # pydantic's marker for "the key itself is bad"
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first problem pydantic found, as one error naming its field."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("invalid request")
    first = errors[0]
    field = _field(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field"
    elif first.get("type") == "missing":
        message = "this field is required"
    if field and field != "body":
        message = f"{field}: {message}"
    return InvalidRequest(message, field=field)


INTERNAL_ERROR: dict[str, Any] = {
    "error": {"code": "internal_error", "message": "internal error", "field": None}
}
"""The answer to a bug: what went wrong is logged, never sent."""


def answer(exc: Exception, metrics: Metrics) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """The API's answer to a refusal raised by a route: (status, body, headers); None for an
    exception that is not a refusal (a bug: the server answers 500 for it).

    FastAPI's exception handlers and the send routes' own path (`mailgate.api.sendpath`)
    both answer through this, so a refusal looks the same whichever way it went.
    """
    if isinstance(exc, RequestError):
        metrics.refused.labels(exc.code).inc()
        return exc.status_code, error_body(exc), dict(exc.headers or {})
    if isinstance(exc, RequestValidationError | ValidationError):
        metrics.refused.labels(InvalidRequest.code).inc()
        return 400, error_body(validation_error(exc)), {}
    if isinstance(exc, StoreUnavailable):
        log.warning("answering 503: %s", exc)
        body = {"error": {"code": "unavailable", "message": str(exc), "field": None}}
        return 503, body, {"Retry-After": "1"}
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        body = {"error": {"code": code, "message": str(exc.detail), "field": None}}
        return exc.status_code, body, dict(exc.headers or {})
    return None


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        found = answer(exc, metrics)
        assert found is not None
        status, body, headers = found
        return JSONResponse(body, status_code=status, headers=headers)

    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    for kind in (RequestError, RequestValidationError, ValidationError, StoreUnavailable):
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(HTTPException, refused)
    app.add_exception_handler(Exception, crashed)
