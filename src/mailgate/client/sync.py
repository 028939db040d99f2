"""`Client`: the API from ordinary (blocking) code, over httpx.

httpx's blocking client has none of the connection-pool trouble its async
client has under many requests in flight (see `mailgate.client.aio`), and a
blocking caller has one request in flight at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from mailgate.client import calls
from mailgate.client.core import (
    DEFAULT_TIMEOUT,
    FINAL,
    USER_AGENT,
    Call,
    RetryPolicy,
    answer,
    next_delay,
    statuses,
)
from mailgate.client.errors import ApiError, ConnectionFailed

Json = dict[str, Any]
Items = list[Json]
"""A list of objects (named so: `list` is also a method here)."""


class Client:
    """mailgate's API for blocking code. Use it as `with Client(url, key) as mg:`.

    `timeout` bounds each try (seconds); `retry` says how often and how long
    to wait between tries (`mailgate.client.core` explains which calls are
    tried again); `connections` caps the connections kept open.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        connections: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry_policy = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT},
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, call: Call) -> Any:
        """Send one call, trying again as `self.retry_policy` allows; its decoded answer."""
        for attempt in range(self.retry_policy.max_retries + 1):
            sent = False
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    headers=call.headers,
                )  # fmt: skip
                return answer(response.status_code, response.content, response.headers)
            except ApiError as exc:
                error = exc
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = ConnectionFailed(f"cannot connect to {self.url}: {exc}")
            except httpx.TransportError as exc:
                # The request went out (or may have): only a replayable call is sent again.
                sent = True
                error = ConnectionFailed(f"no complete answer from {self.url}: {exc!r}")
            time.sleep(next_delay(self.retry_policy, call, attempt, error, sent=sent))
        raise AssertionError("unreachable")  # pragma: no cover

    def _pages(self, make: Callable[[str | None], Call]) -> Iterator[Json]:
        cursor: str | None = None
        while True:
            page = self.call(make(cursor))
            yield from page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # --- messages ---

    def send(
        self,
        message: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Json:
        """Send a message (a dict as the API takes it, and/or its fields as keywords; `from_`
        for `from`); the accepted message. Safe to retry: one `Idempotency-Key` for every try."""
        return dict(self.call(calls.send(message, idempotency_key, **fields)))

    def send_batch(
        self, messages: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> Items:
        """Send up to 1000 messages; one result per item (`id` and `status`, or `error`)."""
        return list((self.call(calls.send_batch(messages, idempotency_key)))["data"])

    def get(self, message_id: str) -> Json:
        return dict(self.call(calls.get(message_id)))

    def list(self, **filters: Any) -> Iterator[Json]:
        """Every message matching the filters (`status`, `tag`, `to`, `provider`, `since`,
        `until`, `tenant`), newest first, page after page."""
        return self._pages(lambda cursor: calls.list_messages(cursor, filters))

    def cancel(self, message_id: str) -> Json:
        return dict(self.call(calls.cancel(message_id)))

    def retry(self, message_id: str) -> Json:
        return dict(self.call(calls.retry(message_id)))

    def retry_failed(self, **filters: Any) -> Json:
        """Bulk retry (`provider`, `tag`, `to`, `since`, `until`, `dry_run`, `tenant`):
        `{"matched", "retried"}`."""
        return dict(self.call(calls.retry_failed(filters)))

    def wait(
        self,
        message_id: str,
        *,
        until: str | Iterable[str] = FINAL,
        timeout: float = 60.0,
        interval: float = 0.25,
    ) -> Json:
        """The message once its status is one of `until`; `TimeoutError` after `timeout`."""
        wanted = statuses(until)
        deadline = time.monotonic() + timeout
        while True:
            message = self.get(message_id)
            if message["status"] in wanted:
                return message
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{message_id} is still {message['status']} after {timeout}s")
            time.sleep(interval)

    # --- providers ---

    def providers(self) -> Items:
        return list((self.call(calls.providers()))["data"])

    def provider(self, name: str) -> Json:
        return dict(self.call(calls.provider(name)))

    def provider_events(self, name: str, *, limit: int = 50) -> Items:
        return list((self.call(calls.provider_events(name, limit)))["data"])

    def enable_provider(self, name: str) -> Json:
        return dict(self.call(calls.switch_provider(name, True)))

    def disable_provider(self, name: str) -> Json:
        return dict(self.call(calls.switch_provider(name, False)))

    def simulate_failure(self, name: str, mode: str) -> Json:
        """A drill: `error`, `timeout`, or `off` to end it."""
        return dict(self.call(calls.simulate_failure(name, mode)))

    # --- suppressions ---

    def suppressions(self, **filters: Any) -> Iterator[Json]:
        """Every suppressed address (`email`, `reason`, `tenant` filters), newest first."""
        return self._pages(lambda cursor: calls.list_suppressions(cursor, filters))

    def suppression(self, email: str, *, tenant: str | None = None) -> Json:
        """One suppressed address; `NotFound` when it is not suppressed."""
        return dict(self.call(calls.suppression(email, tenant)))

    def suppress(self, email: str, *, reason: str = "manual", tenant: str | None = None) -> Json:
        return dict(self.call(calls.suppress(email, reason, tenant)))

    def unsuppress(self, email: str, *, tenant: str | None = None) -> None:
        self.call(calls.unsuppress(email, tenant))

    # --- webhooks ---

    def webhooks(self, **filters: Any) -> Iterator[Json]:
        return self._pages(lambda cursor: calls.list_webhooks(cursor, filters))

    def create_webhook(self, url: str, **fields: Any) -> Json:
        """Add an endpoint (`events`, `description`, `tenant_id`); its `secret` is in the
        answer, this once."""
        return dict(self.call(calls.create_webhook({"url": url, **fields})))

    def webhook(self, webhook_id: str) -> Json:
        return dict(self.call(calls.webhook(webhook_id)))

    def update_webhook(self, webhook_id: str, **fields: Any) -> Json:
        """Change only the fields given; `None` clears a field."""
        return dict(self.call(calls.update_webhook(webhook_id, fields)))

    def delete_webhook(self, webhook_id: str) -> None:
        self.call(calls.delete_webhook(webhook_id))

    def test_webhook(self, webhook_id: str) -> Json:
        return dict(self.call(calls.test_webhook(webhook_id)))

    def webhook_deliveries(self, webhook_id: str, **filters: Any) -> Iterator[Json]:
        return self._pages(lambda cursor: calls.webhook_deliveries(webhook_id, cursor, filters))

    def retry_webhook_delivery(self, webhook_id: str, delivery_id: int) -> Json:
        return dict(self.call(calls.retry_webhook_delivery(webhook_id, delivery_id)))

    # --- keys and tenants ---

    def keys(self, **filters: Any) -> Iterator[Json]:
        return self._pages(lambda cursor: calls.list_keys(cursor, filters))

    def create_key(self, name: str, scopes: Sequence[str], **fields: Any) -> Json:
        """A new key (`tenant_id` for an admin's other tenant); its `key` is shown this once."""
        payload = {"name": name, "scopes": list(scopes), **fields}
        return dict(self.call(calls.create_key(payload)))

    def revoke_key(self, key_id: str) -> Json:
        return dict(self.call(calls.revoke_key(key_id)))

    def me(self) -> Json:
        return dict(self.call(calls.me()))

    def tenants(self) -> Iterator[Json]:
        return self._pages(calls.list_tenants)

    def tenant(self, tenant_id: str) -> Json:
        return dict(self.call(calls.tenant(tenant_id)))

    def create_tenant(self, name: str, **fields: Any) -> Json:
        return dict(self.call(calls.create_tenant({"name": name, **fields})))

    def update_tenant(self, tenant_id: str, **fields: Any) -> Json:
        """Change only the fields given; `None` clears a field."""
        return dict(self.call(calls.update_tenant(tenant_id, fields)))

    def enable_tenant(self, tenant_id: str) -> Json:
        return dict(self.call(calls.switch_tenant(tenant_id, True)))

    def disable_tenant(self, tenant_id: str) -> Json:
        return dict(self.call(calls.switch_tenant(tenant_id, False)))
