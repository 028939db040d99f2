"""Provider event webhooks over real HTTP: the fakes post signed events to the running API.

A message goes out through a fake provider, which posts its events back
the provider's real way; mailgate verifies, records and settles them.
Tampered, replayed and unsigned requests are refused and change nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from mailgate.api import create_app
from mailgate.message import Address
from mailgate.metrics import Metrics
from mailgate.providers.fakes.base import Outcome, Received, SignedPost
from mailgate.serving import serve_asgi
from tests.delivery.conftest import Harness, Run
from tests.helpers import Fakes


@dataclass
class Gateway:
    h: Harness
    url: str
    metrics: Metrics

    def hook(self, name: str) -> str:
        return f"{self.url}/v1/providers/{name}/webhook"

    async def post(self, name: str, post: SignedPost) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.post(self.hook(name), content=post.body, headers=post.headers)


@pytest.fixture
async def gateway(run: Run, fakes: Fakes) -> AsyncIterator[Gateway]:
    providers = fakes.providers()
    providers[0]["webhook_secret"] = fakes.sendgrid.webhook_public_key
    providers[1]["webhook_secret"] = fakes.mailgun.webhook_signing_key
    h = await run(providers=providers)
    metrics = Metrics()
    app = create_app(h.settings, h.store, metrics)
    async with serve_asgi(app, host="127.0.0.1", port=0) as server:
        found = Gateway(h, server.url, metrics)
        fakes.sendgrid.webhook_url = found.hook("primary")
        fakes.mailgun.webhook_url = found.hook("backup")
        yield found
        fakes.sendgrid.webhook_url = fakes.mailgun.webhook_url = None
        await fakes.sendgrid.drain_events()
        await fakes.mailgun.drain_events()


async def test_the_whole_life_of_a_message(gateway: Gateway) -> None:
    h = gateway.h
    delivered = await h.send(to=(Address("bob@example.org"),))
    assert (await h.wait(delivered, "delivered")).recipients[0].status == "delivered"
    bounced = await h.wait(
        await h.send(to=(Address("bounce@example.org"), Address("complaint@example.org"))),
        "complained",
    )
    assert {r.email: r.status for r in bounced.recipients} == {
        "bounce@example.org": "bounced",
        "complaint@example.org": "complained",
    }
    reasons = {s.email: s.reason for s in await h.store.list_suppressions("default", limit=10)}
    assert reasons == {"bounce@example.org": "hard_bounce", "complaint@example.org": "complaint"}
    later = await h.wait(await h.send(to=(Address("defer@example.org"),)), "delivered")
    assert [e.type for e in later.events][-2:] == ["deferred_by_provider", "delivered"]
    assert gateway.metrics.registry.get_sample_value(
        "mailgate_delivery_events_total", {"provider": "primary", "type": "delivered"}
    )


async def test_tampered_unsigned_and_replayed_requests_change_nothing(
    gateway: Gateway, fakes: Fakes
) -> None:
    h = gateway.h
    fakes.sendgrid.webhook_url = fakes.mailgun.webhook_url = None  # posted by hand below
    message_id = await h.send(to=(Address("bob@example.org"),))
    view = await h.wait(message_id, "sent")
    [received] = [r for r in fakes.sendgrid.received if r.mailgate_id == message_id]
    [post] = fakes.sendgrid.signed_posts([Outcome("delivered", "bob@example.org", received)])

    tampered = SignedPost(post.headers, post.body.replace(b"delivered", b"delivereD", 1))
    unsigned = SignedPost({"Content-Type": "application/json"}, post.body)
    for bad in (tampered, unsigned):
        response = await gateway.post("primary", bad)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
    assert (await h.message(message_id)).status == "sent"

    assert (await gateway.post("primary", post)).json()["recorded"] == 1
    again = (await gateway.post("primary", post)).json()  # the provider repeats it
    assert (again["recorded"], again["duplicates"]) == (0, 1)
    assert (await h.message(message_id)).status == "delivered"
    assert [e.type for e in (await h.message(message_id)).events].count("delivered") == 1
    assert view.provider == "primary"

    # Mailgun's token is good once: the same signed request again is a replay.
    gone = await h.send(provider="backup", to=(Address("other@example.org"),))
    await h.wait(gone, "sent")
    [mg] = [r for r in fakes.mailgun.received if r.mailgate_id == gone]
    [signed] = fakes.mailgun.signed_posts([Outcome("delivered", "other@example.org", mg)])
    assert (await gateway.post("backup", signed)).status_code == 200
    replay = await gateway.post("backup", signed)
    assert replay.status_code == 401 and "received before" in replay.json()["error"]["message"]
    sample = gateway.metrics.registry.get_sample_value
    refused = "mailgate_provider_webhooks_refused_total"
    assert sample(refused, {"provider": "backup", "reason": "replay"}) == 1
    assert sample(refused, {"provider": "primary", "reason": "signature"}) == 2


async def test_unknown_messages_and_providers(gateway: Gateway, fakes: Fakes) -> None:
    h = gateway.h
    fakes.sendgrid.webhook_url = None
    message_id = await h.send()
    await h.wait(message_id, "sent")
    [received] = [r for r in fakes.sendgrid.received if r.mailgate_id == message_id]
    # An event about mail mailgate never sent: 2xx (no retry loop), counted.
    fields = {**received.fields, "custom_args": {}}
    stranger = Received("someone-elses-id", None, fields)
    [post] = fakes.sendgrid.signed_posts([Outcome("delivered", "x@example.org", stranger)])
    answer = await gateway.post("primary", post)
    assert answer.status_code == 200
    assert (answer.json()["recorded"], answer.json()["unknown"]) == (0, 1)
    skipped = {"provider": "primary", "reason": "unknown_message"}
    sample = gateway.metrics.registry.get_sample_value
    assert sample("mailgate_delivery_events_skipped_total", skipped) == 1
    assert (await gateway.post("nope", post)).status_code == 404
