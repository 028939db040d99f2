"""Mandrill's case for the shared provider tests.

Mandrill reports API errors as HTTP 500 and tells them apart by `name`, so
most failures here are 500 plus a name. Mandrill has no throttling answer of
its own (over its hourly quota it backlogs the message and answers 200
`queued`, a send); THROTTLED is the plain 429 of a front door, which the
common table maps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from mailgate.config import MandrillSettings
from mailgate.providers import Provider
from mailgate.providers.fakes import Received
from mailgate.providers.fakes.mandrill import FakeMandrill
from mailgate.providers.mandrill import MandrillProvider
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View, addresses

MANDRILL_KEY = "mandrill-test-key"


class MandrillCase(HttpCase):
    name = "mandrill"
    retry_after_given = False
    """Mandrill documents no wait time (the adapter honours a `Retry-After` if one comes)."""
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (500, "ValidationError"),
        Failure.AUTH: (500, "Invalid_Key"),
        Failure.THROTTLED: (429, None),
        Failure.UNAVAILABLE: (500, "ServiceUnavailable"),
        Failure.SERVER_ERROR: (500, "GeneralError"),
    }

    def config(self) -> dict[str, Any]:
        return {"type": "mandrill", "api_key": MANDRILL_KEY, "base_url": self.url}

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        key = MANDRILL_KEY if good_credentials else WRONG_SECRET
        settings = MandrillSettings(name="md", type="mandrill", api_key=key, base_url=base_url)
        return MandrillProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        message = received.fields
        headers = dict(message.get("headers") or {})
        headers.pop("X-Mailgate-Id", None)
        reply_to = headers.pop("Reply-To", None)
        metadata = dict(message.get("metadata") or {})
        sender = {"email": message["from_email"], "name": message.get("from_name")}

        def of(kind: str) -> list[dict[str, str]]:
            return addresses([r for r in message["to"] if r.get("type", "to") == kind])

        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=metadata.pop("mailgate_id", None),
            sender=addresses([sender])[0],
            to=of("to"),
            cc=of("cc"),
            bcc=of("bcc"),
            reply_to=addresses([reply_to]) if reply_to else [],
            subject=message["subject"],
            text=message.get("text"),
            html=message.get("html"),
            headers=headers,
            attachments=[
                {"filename": a["name"], "content_type": a["type"], "content": a["content"]}
                for a in message.get("attachments", [])
            ],
            tags=message.get("tags", []),
            metadata=metadata,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[MandrillCase]:
    fake = FakeMandrill(MANDRILL_KEY)
    async with serve_asgi(fake.app()) as server:
        yield MandrillCase(fake, server.url)
