"""The one accept path (DESIGN.md): every way a message comes in ends here.

It lives beside the HTTP schemas because `MessageIn` is what every way in
translates to.

`POST /v1/messages`, the batch route, `mailgate send`, SMTP submission and
the drop-in provider APIs (`mailgate.compat`) translate what they receive into
a `MessageIn` and hand it to `Acceptor`, which applies the tenant's rules
and hands the message to the store's group commit:

- a disabled tenant sends nothing (`403 tenant_disabled`);
- no `from` takes the tenant's `default_from`;
- a `from` outside the tenant's `sender_domains` is `403 sender_not_allowed`;
- a forced `provider` must be configured and one the tenant may use;
- the tenant's `daily_quota` is counted in the accepting transaction
  (`429 quota_exceeded`), so it holds exactly across every process.

The tenant's `rate_limit` counts HTTP requests, not messages: the API's
authentication applies it, before any of this.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mailgate.api.addresses import parse_address
from mailgate.api.errors import validation_error
from mailgate.api.schemas import MessageIn
from mailgate.errors import (
    Forbidden,
    InvalidRequest,
    RequestError,
    SenderNotAllowed,
    TenantDisabled,
)
from mailgate.message import Address, new_id
from mailgate.metrics import Metrics
from mailgate.store import Accepted, NewMessage, Store, Tenant, utcnow


def request_hash(message: MessageIn) -> str:
    """What an idempotent repeat must match: the request as validated, canonically."""
    canonical = json.dumps(
        message.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def refuse_disabled(tenant: Tenant) -> None:
    if not tenant.enabled:
        raise TenantDisabled(f"tenant {tenant.id} is disabled", field="tenant")


def check_sender(tenant: Tenant, sender: Address) -> None:
    """A `from` must be in one of the tenant's sender domains, when it has any."""
    if not tenant.sender_domains:
        return
    domain = sender.email.rpartition("@")[2].lower()
    if domain not in tenant.sender_domains:
        allowed = ", ".join(tenant.sender_domains)
        raise SenderNotAllowed(
            f"from: {sender.email} is not in this tenant's sender domains ({allowed})",
            field="from",
        )


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a batch: accepted (`accepted`), or refused (`error`)."""

    index: int
    accepted: Accepted | None = None
    error: RequestError | None = None


class Acceptor:
    def __init__(self, store: Store, metrics: Metrics, provider_names: Iterable[str]) -> None:
        self._store = store
        self._metrics = metrics
        self._providers = frozenset(provider_names)

    def prepare(
        self,
        message: MessageIn,
        tenant: Tenant,
        *,
        idempotency_key: str | None = None,
        now: datetime | None = None,
    ) -> NewMessage:
        """Everything about a message that can be refused before it is stored.

        `now`: its time of acceptance, when the caller accepts several at one time.
        """
        refuse_disabled(tenant)
        default_from = parse_address(tenant.default_from) if tenant.default_from else None
        email = message.to_email(default_from)
        check_sender(tenant, email.sender)
        if message.provider is not None:
            self._check_provider(message.provider, tenant)
        if now is None:
            now = utcnow()
        return NewMessage(
            id=new_id("msg"),
            tenant_id=tenant.id,
            email=email,
            created_at=now,
            send_at=message.schedule(now),
            forced_provider=message.provider,
            idempotency_key=idempotency_key,
            request_hash=request_hash(message) if idempotency_key is not None else None,
            daily_quota=tenant.daily_quota,
        )

    def _check_provider(self, name: str, tenant: Tenant) -> None:
        if name not in self._providers:
            known = ", ".join(sorted(self._providers)) or "none"
            raise InvalidRequest(
                f"no provider {name!r} is configured (configured: {known})", field="provider"
            )
        if tenant.providers is not None and name not in tenant.providers:
            raise Forbidden(
                f"provider {name!r} is not one this tenant may use ({', '.join(tenant.providers)})",
                field="provider",
            )

    async def accept(
        self, message: MessageIn, tenant: Tenant, *, idempotency_key: str | None = None
    ) -> tuple[NewMessage, Accepted]:
        """Store one message; raises a `RequestError` when it is refused.

        `Accepted.created` is false for an idempotent repeat of an earlier request.
        """
        started = time.perf_counter()
        item = self.prepare(message, tenant, idempotency_key=idempotency_key)
        accepted = await self._store.accept(item)
        if accepted.created:
            self._metrics.accepted.inc()
            self._metrics.accept_seconds.observe(time.perf_counter() - started)
        return item, accepted

    async def accept_batch(
        self,
        messages: Sequence[MessageIn | dict[str, Any]],
        tenant: Tenant,
        *,
        idempotency_key: str | None = None,
    ) -> list[BatchItem]:
        """Validate each message on its own and store the valid ones, in one group
        (a `MessageIn` is taken as validated).

        An `idempotency_key` applies to each item as `<key>:<index>`.
        """
        refuse_disabled(tenant)
        results: list[BatchItem] = []
        ready: list[tuple[int, NewMessage]] = []
        now = utcnow()
        for index, raw in enumerate(messages):
            try:
                item_key = f"{idempotency_key}:{index}" if idempotency_key is not None else None
                message = raw if isinstance(raw, MessageIn) else MessageIn.model_validate(raw)
                item = self.prepare(message, tenant, idempotency_key=item_key, now=now)
            except ValidationError as exc:
                results.append(BatchItem(index, error=validation_error(exc)))
            except RequestError as exc:
                results.append(BatchItem(index, error=exc))
            else:
                ready.append((index, item))
                results.append(BatchItem(index))
        outcomes = await self.accept_prepared([item for _, item in ready])
        for (index, _), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, RequestError):
                results[index] = BatchItem(index, error=outcome)
            else:
                results[index] = BatchItem(index, accepted=outcome)
        return results

    async def accept_prepared(
        self, items: Sequence[NewMessage], *, together: bool = False
    ) -> list[Accepted | RequestError]:
        """Store messages `prepare` made, in one group; each accepted, or refused (its quota).

        `together`: the tenant's daily quota takes all of them or none.
        """
        if together and len(items) > 1:
            mark = new_id("grp")
            items = [replace(item, together=mark) for item in items]
        outcomes = await self._store.accept_many(list(items))
        results: list[Accepted | RequestError] = []
        for outcome in outcomes:
            if isinstance(outcome, RequestError):
                results.append(outcome)
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                if outcome.created:
                    self._metrics.accepted.inc()
                results.append(outcome)
        return results
