"""Every exception mailgate raises.

```
MailgateError
├── ProviderError              a provider call did not take the message
│   ├── ProviderUnavailable    timeout, connection error, 5xx: try the next provider
│   ├── ProviderThrottled      429: pause the provider, try the next
│   ├── ProviderAuthError      401/403: open the provider's breaker, try the next
│   └── MessageRejected        400/413/422 about the message: fail it, try nobody else
├── StoreUnavailable           the store cannot commit or answer (HTTP 503)
└── RequestError               a caller's request is refused (HTTP 4xx)
    ├── InvalidRequest         400 invalid_request
    ├── Unauthorized           401 unauthorized
    ├── Forbidden              403 forbidden (the key lacks the scope)
    │   ├── SenderNotAllowed   403 sender_not_allowed
    │   └── TenantDisabled     403 tenant_disabled
    ├── NotFound               404 not_found
    ├── Conflict               409 conflict
    ├── IdempotencyMismatch    409 idempotency_mismatch
    ├── PayloadTooLarge        413 payload_too_large
    └── TooManyRequests        429, with Retry-After
        ├── RateLimited        429 rate_limited (the tenant's rate_limit)
        └── QuotaExceeded      429 quota_exceeded (the tenant's daily_quota)
ConfigError                    deliberately outside MailgateError
```

The delivery router decides by class, never by message text. `ConfigError`
is not a `MailgateError`, so no broad handler in the worker can swallow a
misconfiguration.
"""

from __future__ import annotations

_DETAIL_LIMIT = 500


def _trim(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


class MailgateError(Exception):
    """Base of every error mailgate raises on purpose (except `ConfigError`)."""


class ConfigError(Exception):
    """The configuration is unusable. The message names the key and its variable."""


# --- providers ---------------------------------------------------------------


class ProviderError(MailgateError):
    """A provider did not take the message.

    Carries the provider's name, the HTTP status (or SMTP reply code, with
    `wire="SMTP"`) when one came back, and a trimmed detail: never credentials.
    """

    def __init__(
        self, provider: str, detail: str, *, status_code: int | None = None, wire: str = "HTTP"
    ) -> None:
        self.provider = provider
        self.status_code = status_code
        self.detail = _trim(detail)
        prefix = f"{provider}: {wire} {status_code}: " if status_code else f"{provider}: "
        super().__init__(prefix + self.detail)


class ProviderUnavailable(ProviderError):
    """Timeout, connection failure or 5xx: provider trouble, the message may be fine.

    `ambiguous` is true when the request may have reached the provider (a
    timeout or reset after the body left, a 500 or 504), so a later send
    elsewhere could deliver the message twice.
    """

    def __init__(
        self,
        provider: str,
        detail: str,
        *,
        status_code: int | None = None,
        wire: str = "HTTP",
        ambiguous: bool = False,
    ) -> None:
        super().__init__(provider, detail, status_code=status_code, wire=wire)
        self.ambiguous = ambiguous


class ProviderThrottled(ProviderError):
    """429: the provider asks us to slow down; `retry_after` is in seconds when given."""

    def __init__(
        self,
        provider: str,
        detail: str,
        *,
        status_code: int | None = 429,
        wire: str = "HTTP",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(provider, detail, status_code=status_code, wire=wire)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    """401/403: our credentials for this provider are bad or lack permission."""


class MessageRejected(ProviderError):
    """400/413/422 about the message itself: no other provider would take it either."""


# --- store -------------------------------------------------------------------


class StoreUnavailable(MailgateError):
    """The store could not commit or answer; nothing was half-written."""


# --- requests ----------------------------------------------------------------


class RequestError(MailgateError):
    """A caller's request is refused. `code` and `field` end up in the JSON error body."""

    code = "invalid_request"
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def headers(self) -> dict[str, str]:
        """Headers the HTTP answer carries besides the JSON body."""
        return {}


class InvalidRequest(RequestError):
    code = "invalid_request"
    status_code = 400


class Unauthorized(RequestError):
    code = "unauthorized"
    status_code = 401


class Forbidden(RequestError):
    code = "forbidden"
    status_code = 403


class SenderNotAllowed(Forbidden):
    code = "sender_not_allowed"


class TenantDisabled(Forbidden):
    code = "tenant_disabled"


class NotFound(RequestError):
    code = "not_found"
    status_code = 404


class Conflict(RequestError):
    code = "conflict"
    status_code = 409


class IdempotencyMismatch(RequestError):
    code = "idempotency_mismatch"
    status_code = 409


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    status_code = 413


class TooManyRequests(RequestError):
    """A limit of the caller's tenant; `retry_after` is whole seconds until it may pass."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = max(1, retry_after)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(TooManyRequests):
    code = "rate_limited"


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"
