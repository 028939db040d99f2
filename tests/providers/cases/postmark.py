"""Postmark's case for the shared provider tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import Any, ClassVar

from mailgate.config import PostmarkSettings
from mailgate.providers import Provider
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.postmark import FakePostmark
from mailgate.providers.postmark import PostmarkProvider
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View

POSTMARK_TOKEN = "0f8c2a3e-test-server-token"


def addresses(value: str | None) -> list[dict[str, str]]:
    """`{"email", "name"?}` dicts from a Postmark address list, RFC 2047 names decoded."""
    out: list[dict[str, str]] = []
    for name, email in getaddresses([value]) if value else []:
        name = str(make_header(decode_header(name))) if name else ""
        out.append({"email": email, "name": name} if name else {"email": email})
    return out


class PostmarkCase(HttpCase):
    name = "postmark"
    fake: FakePostmark
    retry_after_given = False  # Postmark's 429 says no wait time
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (422, "300"),  # invalid email request
        Failure.AUTH: (401, "10"),  # bad or missing server token
        Failure.THROTTLED: (429, "429"),
        Failure.UNAVAILABLE: (503, "100"),  # maintenance
        Failure.SERVER_ERROR: (500, None),
    }

    def config(self) -> dict[str, Any]:
        return {"type": "postmark", "api_key": POSTMARK_TOKEN, "base_url": self.url}

    def make(
        self,
        *,
        base_url: str,
        timeout: float,
        good_credentials: bool,
        message_stream: str = "outbound",
    ) -> Provider:
        token = POSTMARK_TOKEN if good_credentials else f"{WRONG_SECRET}-token"
        settings = PostmarkSettings(
            name="pm",
            type="postmark",
            api_key=token,
            message_stream=message_stream,
            base_url=base_url,
        )
        return PostmarkProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        m: dict[str, Any] = received.fields
        metadata = dict(m.get("Metadata") or {})
        headers = {h["Name"]: h["Value"] for h in m.get("Headers") or []}
        headers.pop("X-Mailgate-Id", None)
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=metadata.pop("mailgate_id", None),
            sender=addresses(m["From"])[0],
            to=addresses(m["To"]),
            cc=addresses(m.get("Cc")),
            bcc=addresses(m.get("Bcc")),
            reply_to=addresses(m.get("ReplyTo")),
            subject=m["Subject"],
            text=m.get("TextBody"),
            html=m.get("HtmlBody"),
            headers=headers,
            attachments=[
                {"filename": a["Name"], "content_type": a["ContentType"], "content": a["Content"]}
                for a in m.get("Attachments") or []
            ],
            tags=json.loads(metadata.pop("mailgate_tags", "[]")),
            metadata=metadata,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[PostmarkCase]:
    fake = FakePostmark(POSTMARK_TOKEN)
    async with serve_asgi(fake.app()) as server:
        yield PostmarkCase(fake, server.url)
