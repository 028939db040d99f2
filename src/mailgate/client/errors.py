"""What the client raises: one class per kind of refusal, all `ApiError`s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """mailgate refused the request, or could not be reached.

    `code`, `message` and `field` are the API's error body (`field` names the
    input at fault, or is None); `status` is the HTTP status (0 when no answer
    came); `retry_after` is the `Retry-After` the answer carried, in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        field: str | None = None,
        status: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(ApiError):
    """400: the request is invalid; `field` says which part."""


class Unauthorized(ApiError):
    """401: the key is unknown or revoked."""


class Forbidden(ApiError):
    """403: the key lacks a scope, its tenant is disabled, or a rule forbids it."""


class NotFound(ApiError):
    """404: no such object in the key's tenant."""


class Conflict(ApiError):
    """409: the object is in the wrong state, or an idempotency key was reused."""


class PayloadTooLarge(ApiError):
    """413: the request or a part of it is over a limit."""


class RateLimited(ApiError):
    """429: the tenant's rate limit or daily quota; `retry_after` says when to come back."""


class Unavailable(ApiError):
    """503: the store cannot take the request now; nothing was stored."""


class ServerError(ApiError):
    """Another 5xx."""


class ConnectionFailed(ApiError):
    """No answer: the gateway could not be reached, or the connection broke."""


class WebhookVerificationError(Exception):
    """A webhook whose signature, timestamp or headers do not check out."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: Any, headers: Mapping[str, str]) -> ApiError:
    """The exception for an error answer (its JSON body already decoded, or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "http_error", "message": f"HTTP {status}", "field": None}
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(
        str(error.get("message") or f"HTTP {status}"),
        code=str(error.get("code") or "http_error"),
        field=error.get("field"),
        status=status,
        retry_after=retry_after(headers),
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the API sends whole seconds), if present and sane."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
