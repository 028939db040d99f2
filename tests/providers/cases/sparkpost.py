"""SparkPost's case for the shared provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from mailgate.config import SparkPostSettings
from mailgate.providers import Provider
from mailgate.providers.fakes import Received
from mailgate.providers.fakes.sparkpost import FakeSparkPost
from mailgate.providers.sparkpost import SparkPostProvider
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View, addresses

SPARKPOST_KEY = "sparkpost-test-key"


class SparkPostCase(HttpCase):
    name = "sparkpost"
    retry_after_given = False
    """SparkPost documents no `Retry-After` on its 429 (the adapter honours one if it comes)."""
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (422, "1400"),
        Failure.AUTH: (401, None),
        Failure.THROTTLED: (429, None),
        Failure.UNAVAILABLE: (503, "1900"),
        Failure.SERVER_ERROR: (500, "1500"),
    }

    def config(self) -> dict[str, Any]:
        return {"type": "sparkpost", "api_key": SPARKPOST_KEY, "base_url": self.url}

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        key = SPARKPOST_KEY if good_credentials else WRONG_SECRET
        settings = SparkPostSettings(name="sp", type="sparkpost", api_key=key, base_url=base_url)
        return SparkPostProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        body = received.fields
        content = body["content"]
        headers = dict(content.get("headers") or {})
        headers.pop("X-Mailgate-Id", None)
        recipients = [r["address"] for r in body["recipients"]]
        to = addresses([recipients[0]["header_to"]])
        cc = addresses([headers.pop("Cc")]) if "Cc" in headers else []
        shown = {a["email"].lower() for a in (*to, *cc)}
        metadata = dict(body.get("metadata") or {})
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=metadata.pop("mailgate_id", None),
            sender=addresses([content["from"]])[0],
            to=to,
            cc=cc,
            bcc=addresses([a for a in recipients if a["email"].lower() not in shown]),
            reply_to=addresses([content["reply_to"]]) if "reply_to" in content else [],
            subject=content["subject"],
            text=content.get("text"),
            html=content.get("html"),
            headers=headers,
            attachments=[
                {"filename": a["name"], "content_type": a["type"], "content": a["data"]}
                for a in content.get("attachments", [])
            ],
            tags=body["recipients"][0].get("tags", []),
            metadata=metadata,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[SparkPostCase]:
    fake = FakeSparkPost(SPARKPOST_KEY)
    async with serve_asgi(fake.app()) as server:
        yield SparkPostCase(fake, server.url)
