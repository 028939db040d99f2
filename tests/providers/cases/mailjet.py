"""Mailjet's case for the shared provider tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from mailgate.config import MailjetSettings
from mailgate.providers.base import Provider
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.mailjet import FakeMailjet
from mailgate.providers.mailjet import MailjetProvider
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View, addresses

MAILJET_KEY = "mj-test-key"
MAILJET_SECRET = "mj-test-secret"


class MailjetCase(HttpCase):
    name = "mailjet"
    # Mailjet's 429 is a bare HTML page: no Retry-After, no reset header (its SDKs'
    # trackers ask for one and were told the API has none).
    retry_after_given = False
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (400, "mj-0013"),
        Failure.AUTH: (401, "mj-0015"),
        Failure.THROTTLED: (429, None),
        Failure.UNAVAILABLE: (503, None),
        Failure.SERVER_ERROR: (500, None),
    }

    def config(self) -> dict[str, Any]:
        return {
            "type": "mailjet",
            "api_key": MAILJET_KEY,
            "api_secret": MAILJET_SECRET,
            "base_url": self.url,
        }

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        secret = MAILJET_SECRET if good_credentials else WRONG_SECRET
        settings = MailjetSettings(
            name="mj", type="mailjet", api_key=MAILJET_KEY, api_secret=secret, base_url=base_url
        )
        return MailjetProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        m = received.fields
        payload = json.loads(m.get("EventPayload") or "{}")
        headers = dict(m.get("Headers") or {})
        headers.pop("X-Mailgate-Id", None)
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=m.get("CustomID"),
            sender=addresses([m["From"]])[0],
            to=addresses(m["To"]),
            cc=addresses(m.get("Cc", [])),
            bcc=addresses(m.get("Bcc", [])),
            reply_to=addresses([m["ReplyTo"]] if "ReplyTo" in m else []),
            subject=m["Subject"],
            text=m.get("TextPart"),
            html=m.get("HTMLPart"),
            headers=headers,
            attachments=[
                {
                    "filename": a["Filename"],
                    "content_type": a["ContentType"],
                    "content": a["Base64Content"],
                }
                for a in m.get("Attachments", [])
            ],
            tags=payload.get("tags", []),
            metadata=payload.get("metadata", {}),
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[MailjetCase]:
    fake = FakeMailjet(MAILJET_KEY, MAILJET_SECRET)
    async with serve_asgi(fake.app()) as server:
        yield MailjetCase(fake, server.url)
