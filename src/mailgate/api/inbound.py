"""`POST /v1/providers/{name}/webhook`: the providers' event webhooks.

No bearer key here: each request must carry the provider's own signature or
credentials, checked on the raw bytes with that provider's `webhook_*`
settings (`mailgate.providers.webhooks`). A request that does not verify is
`401` and records nothing. A verified one is recorded in one small
transaction and answered at once with what it changed, so providers do not
retry needlessly; an event for a message mailgate does not know is
answered 2xx too (counted and logged), never an error the provider would
retry forever.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from mailgate.api.context import ApiContext
from mailgate.api.messages import ERRORS
from mailgate.config import ProviderSettings
from mailgate.errors import InvalidRequest, NotFound, StoreUnavailable, Unauthorized
from mailgate.events.inbound import (
    BadWebhook,
    EventWebhook,
    ProviderUnreachable,
    RawWebhook,
    WebhookRejected,
)
from mailgate.providers.webhooks import webhook_for
from mailgate.store.feedback import Replayed

log = logging.getLogger(__name__)


class WebhookReceived(BaseModel):
    received: int
    recorded: int
    duplicates: int
    unknown: int


SIGNATURE_SCOPE = "provider-signature"
"""What `x-mailgate-scope` says of these routes: the provider's own signature, not a key."""


class InboundWebhooks:
    """The configured providers' event webhooks, built when the app is (a bad
    `webhook_secret` is a `ConfigError` at start, not a 500 later)."""

    def __init__(self, providers: list[ProviderSettings], **options: Any) -> None:
        self._settings = {p.name: p for p in providers}
        self._built = {p.name: webhook_for(p, **options) for p in providers}

    def get(self, name: str) -> EventWebhook:
        settings = self._settings.get(name)
        if settings is None:
            raise NotFound(f"no provider {name!r} is configured", field="name")
        webhook = self._built[name]
        if webhook is None:
            raise NotFound(
                f"provider {name!r} ({settings.type}) has no event webhook", field="name"
            )
        return webhook

    async def close(self) -> None:
        for webhook in self._built.values():
            if webhook is not None:
                await webhook.close()


def inbound_router(ctx: ApiContext, hooks: InboundWebhooks) -> APIRouter:
    router = APIRouter(tags=["provider events"])
    metrics = ctx.metrics
    extra = {"x-mailgate-scope": SIGNATURE_SCOPE}

    @router.head("/v1/providers/{name}/webhook", openapi_extra=extra, include_in_schema=False)
    async def webhook_exists(name: str) -> Response:
        """Providers (Mandrill) check that the URL answers before they post to it."""
        hooks.get(name)
        return Response(status_code=200)

    @router.post(
        "/v1/providers/{name}/webhook",
        openapi_extra=extra,
        summary="A provider's event webhook (signed by the provider; no API key)",
        responses={200: {"model": WebhookReceived}, **ERRORS},
    )
    async def provider_webhook(name: str, request: Request) -> Response:
        webhook = hooks.get(name)
        raw = RawWebhook(
            url=str(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        try:
            await webhook.verify(raw)
        except ProviderUnreachable as exc:
            log.warning("provider %s: event webhook cannot be checked now: %s", name, exc)
            raise StoreUnavailable(f"cannot check the request now: {exc}") from None
        except WebhookRejected as exc:
            metrics.provider_webhooks_refused.labels(name, "signature").inc()
            log.warning("provider %s: event webhook refused: %s", name, exc)
            raise Unauthorized(
                "the request is not signed or authorised by the provider", field="signature"
            ) from None
        try:
            parsed = await webhook.parse(raw)
        except ProviderUnreachable as exc:
            log.warning("provider %s: event webhook cannot be handled now: %s", name, exc)
            raise StoreUnavailable(f"cannot handle the request now: {exc}") from None
        except (BadWebhook, WebhookRejected) as exc:
            metrics.provider_webhooks_refused.labels(name, "malformed").inc()
            log.warning("provider %s: event webhook body not understood: %s", name, exc)
            raise InvalidRequest(f"not a {name} event webhook body: {exc}", field="body") from None
        try:
            done = await ctx.store.record_provider_events(
                name, parsed.events, replay_key=parsed.replay_key
            )
        except Replayed as exc:
            metrics.provider_webhooks_refused.labels(name, "replay").inc()
            log.warning("provider %s: event webhook replayed: %s", name, exc)
            raise Unauthorized(
                "this signed request was received before", field="signature"
            ) from None
        for kind, n in done.kinds.items():
            metrics.delivery_events.labels(name, kind).inc(n)
        if done.duplicates:
            metrics.delivery_events_skipped.labels(name, "duplicate").inc(done.duplicates)
        if done.unknown:
            metrics.delivery_events_skipped.labels(name, "unknown_message").inc(done.unknown)
            log.info(
                "provider %s: %d event(s) for messages mailgate does not know", name, done.unknown
            )
        for tenant_id, email in done.suppressed:
            log.info("tenant %s: %s suppressed after a provider event", tenant_id, email)
        if parsed.response is not None:
            return JSONResponse(parsed.response)
        return JSONResponse(
            {
                "received": len(parsed.events),
                "recorded": done.recorded,
                "duplicates": done.duplicates,
                "unknown": done.unknown,
            }
        )

    return router
