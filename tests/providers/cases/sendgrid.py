"""SendGrid's case for the shared provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mailgate.config import SendGridSettings
from mailgate.providers import Provider, SendGridProvider
from mailgate.providers.fakes import FakeSendGrid, Received
from mailgate.serving import serve_asgi
from tests.helpers import SENDGRID_KEY
from tests.providers.support import WRONG_SECRET, HttpCase, View, addresses


class SendGridCase(HttpCase):
    name = "sendgrid"

    def config(self) -> dict[str, Any]:
        return {"type": "sendgrid", "api_key": SENDGRID_KEY, "base_url": self.url}

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        key = SENDGRID_KEY if good_credentials else f"SG.{WRONG_SECRET}"
        settings = SendGridSettings(name="sg", type="sendgrid", api_key=key, base_url=base_url)
        return SendGridProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        body = received.fields
        p = body["personalizations"][0]
        reply = body.get("reply_to_list") or ([body["reply_to"]] if "reply_to" in body else [])
        content = {c["type"]: c["value"] for c in body["content"]}
        args = dict(body.get("custom_args") or {})
        headers = dict(body.get("headers") or {})
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=args.pop("mailgate_id", None),
            sender=addresses([body["from"]])[0],
            to=addresses(p["to"]),
            cc=addresses(p.get("cc", [])),
            bcc=addresses(p.get("bcc", [])),
            reply_to=addresses(reply),
            subject=body["subject"],
            text=content.get("text/plain"),
            html=content.get("text/html"),
            headers={k: v for k, v in headers.items() if k != "X-Mailgate-Id"},
            attachments=[
                {"filename": a["filename"], "content_type": a["type"], "content": a["content"]}
                for a in body.get("attachments", [])
            ],
            tags=body.get("categories", []),
            metadata=args,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[SendGridCase]:
    fake = FakeSendGrid(SENDGRID_KEY)
    async with serve_asgi(fake.app()) as server:
        yield SendGridCase(fake, server.url)
