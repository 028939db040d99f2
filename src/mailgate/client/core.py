"""What the sync and async clients share: the calls they make and when to try again.

Each API call is described once as a `Call` (method, path, query, body and
whether it may be sent again after it may have arrived); `Client` and
`AsyncClient` only differ in how they send it.

Retrying (`RetryPolicy`):

- an answer of `429` or `503` is tried again after `Retry-After` when the
  answer gives one (else the backoff below), for every call: mailgate
  refuses those before anything is stored;
- a connection that could not be made is tried again for every call;
- a connection that broke or timed out after the request went out is
  tried again only for a `replayable` call: reads, and sends, which carry
  one `Idempotency-Key` through every try (made here when the caller gives
  none), so the gateway stores the message once however often it arrives;
- the backoff is exponential with full jitter (`backoff` * 2^try, at
  most `max_backoff`, times a random factor in [0, 1)), after
  `max_retries` retries the last error is raised.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from mailgate.client.errors import ApiError, error_for

RETRY_STATUSES = frozenset({429, 503})
DEFAULT_TIMEOUT = 10.0
USER_AGENT = "mailgate-client"


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = False
    """Safe to send again when it may already have arrived (reads, idempotent sends)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff: float = 0.25
    """The first wait, in seconds; it doubles with each try (before jitter)."""
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    """A longer `Retry-After` is not waited for: the error is raised with it."""

    def delay(self, attempt: int, error: ApiError | None = None) -> float | None:
        """How long to wait before try `attempt + 1` (None: do not try again)."""
        if attempt >= self.max_retries:
            return None
        if error is not None and error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after + random.uniform(0, 0.1)
        ceiling: float = min(self.max_backoff, self.backoff * 2.0**attempt)
        return ceiling * random.random()


def segment(value: str) -> str:
    """A path segment, quoted (ids, names and addresses go into paths)."""
    return quote(value, safe="@")


def query(filters: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters: None dropped, times in RFC 3339, booleans in lower case."""
    params: dict[str, str] = {}
    for name, value in filters.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            params[name] = value.isoformat()
        elif isinstance(value, bool):
            params[name] = "true" if value else "false"
        else:
            params[name] = str(value)
    return params


def body(values: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON body: None dropped, times in RFC 3339; `from_` is sent as `from`."""
    data: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        data["from" if name == "from_" else name] = (
            value.isoformat() if isinstance(value, datetime) else value
        )
    return data


def patch(values: Mapping[str, Any]) -> dict[str, Any]:
    """A PATCH body: only the fields given, where None is sent as null (it clears the field)."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in values.items()
    }


def message_body(message: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A message to send, from a dict as the API takes it and/or keyword fields.

    A single address may be given as a string for `to`, `cc`, `bcc` and `reply_to`.
    """
    data = {**(message or {}), **body(fields)}
    for name in ("to", "cc", "bcc", "reply_to"):
        if isinstance(data.get(name), str):
            data[name] = [data[name]]
    return data


def send_call(path: str, payload: Any, idempotency_key: str | None) -> Call:
    """A send: replayable under one `Idempotency-Key`, made here when not given."""
    key = idempotency_key or f"mgc-{uuid.uuid4()}"
    return Call("POST", path, json=payload, headers={"Idempotency-Key": key}, replayable=True)


def statuses(until: str | Iterable[str]) -> frozenset[str]:
    return frozenset([until] if isinstance(until, str) else until)


FINAL = frozenset({"sent", "failed", "cancelled", "delivered", "bounced", "complained"})
"""What `wait` waits for by default: a status that will not change without a new event."""


def answer(status: int, raw: bytes, headers: Mapping[str, str]) -> Any:
    """The decoded JSON of a success (None when empty); raises the error an error answer is."""
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    if status >= 400:
        raise error_for(status, decoded, headers)
    if raw and decoded is None:
        raise ApiError("the answer is not JSON", code="bad_answer", status=status)
    return decoded


def next_delay(
    policy: RetryPolicy, call: Call, attempt: int, error: ApiError, *, sent: bool
) -> float:
    """The wait before trying `call` again after `error`; raises `error` when it is not retried.

    `sent`: whether the request may have reached the gateway (for a failure
    without an answer).
    """
    if error.status:
        retriable = error.status in RETRY_STATUSES
    else:
        retriable = call.replayable or not sent
    delay = policy.delay(attempt, error) if retriable else None
    if delay is None:
        raise error
    return delay
