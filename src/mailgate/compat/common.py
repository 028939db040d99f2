"""What the drop-in APIs share: the caller's key and the one accept path.

A drop-in route finds the key where its provider's SDK puts it, asks
`Ingress.caller` (the API's `Guard`: the same key cache, `send` scope,
tenant switch and rate limit as `/v1/messages`), turns the request into
the dict `MessageIn` takes and hands it to `Ingress.accept` (or
`prepare` + `accept_prepared` for several messages that stand or fall
together). Every refusal is a `RequestError` naming mailgate's field; the
module turns it into its provider's error shape and counts it in
`mailgate_refused_total` with `refused`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from mailgate.api.accept import BatchItem
from mailgate.api.auth import Caller
from mailgate.api.context import ApiContext
from mailgate.api.errors import validation_error
from mailgate.api.schemas import MessageIn
from mailgate.errors import RequestError
from mailgate.store import Accepted, NewMessage, Scope

SCOPE: dict[str, Any] = {"x-mailgate-scope": Scope.SEND.value}
"""Every drop-in route's `openapi_extra`: the key it takes needs `send` (`declare_scopes`)."""


class Ingress:
    """The accept path, as the drop-in APIs use it."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def caller(self, secret: str | None, *, field: str | None = None) -> Caller:
        """The key's caller if it may send now (known, tenant enabled, `send`, rate limit)."""
        caller = await self.ctx.guard.identify(secret or "", Scope.SEND, field=field)
        await self.ctx.guard.limit(caller)
        return caller

    def prepare(self, caller: Caller, fields: Mapping[str, Any]) -> NewMessage:
        """A message ready to store; raises a `RequestError` naming the `MessageIn` field."""
        return self.ctx.acceptor.prepare(_validated(fields), caller.tenant)

    async def accept(self, caller: Caller, fields: Mapping[str, Any]) -> NewMessage:
        """Store one message (its own commit) and return it; raises a `RequestError`."""
        item, _ = await self.ctx.acceptor.accept(_validated(fields), caller.tenant)
        return item

    async def accept_prepared(
        self, items: Sequence[NewMessage], *, together: bool = False
    ) -> list[Accepted | RequestError]:
        """Store prepared messages in one group; each accepted or refused (a used-up quota).

        `together`: the tenant's daily quota takes all of them or none, so one request
        that makes several messages is refused whole or accepted whole.
        """
        return await self.ctx.acceptor.accept_prepared(items, together=together)

    async def accept_each(
        self, caller: Caller, messages: Sequence[Mapping[str, Any]]
    ) -> list[BatchItem]:
        """Validate and store each message on its own (a batch where each may fail alone)."""
        return await self.ctx.acceptor.accept_batch([dict(m) for m in messages], caller.tenant)

    def refused(self, error: RequestError) -> None:
        """Count a refusal as the API's error handler does."""
        self.ctx.metrics.refused.labels(error.code).inc()


def _validated(fields: Mapping[str, Any]) -> MessageIn:
    try:
        return MessageIn.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from None
