"""Mailgun's case for the shared provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mailgate.config import MailgunSettings
from mailgate.providers import MailgunProvider, Provider
from mailgate.providers.fakes import FakeMailgun, Received
from mailgate.serving import serve_asgi
from tests.helpers import MAILGUN_DOMAIN, MAILGUN_KEY
from tests.providers.support import WRONG_SECRET, HttpCase, View, addresses


class MailgunCase(HttpCase):
    name = "mailgun"

    def config(self) -> dict[str, Any]:
        return {
            "type": "mailgun",
            "api_key": MAILGUN_KEY,
            "domain": MAILGUN_DOMAIN,
            "base_url": self.url,
        }

    def make(
        self,
        *,
        base_url: str,
        timeout: float,
        good_credentials: bool,
        domain: str = MAILGUN_DOMAIN,
    ) -> Provider:
        key = MAILGUN_KEY if good_credentials else f"key-{WRONG_SECRET}"
        settings = MailgunSettings(
            name="mg", type="mailgun", api_key=key, domain=domain, base_url=base_url
        )
        return MailgunProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        f = received.fields

        def one(key: str) -> Any:
            return (f.get(key) or [None])[0]

        headers = {k[2:]: v[0] for k, v in f.items() if k.startswith("h:")}
        headers.pop("Reply-To", None)
        headers.pop("X-Mailgate-Id", None)
        variables = {k[2:]: v[0] for k, v in f.items() if k.startswith("v:")}
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=variables.pop("mailgate_id", None),
            sender=addresses(f["from"])[0],
            to=addresses(f["to"]),
            cc=addresses(f.get("cc", [])),
            bcc=addresses(f.get("bcc", [])),
            reply_to=addresses(f.get("h:Reply-To", [])),
            subject=one("subject"),
            text=one("text"),
            html=one("html"),
            headers=headers,
            attachments=[
                {
                    "filename": a["filename"],
                    "content_type": a["content_type"],
                    "content": a["content"],
                }
                for a in f["attachments"]
                if a["field"] == "attachment"
            ],
            tags=f.get("o:tag", []),
            metadata=variables,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[MailgunCase]:
    fake = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN)
    async with serve_asgi(fake.app()) as server:
        yield MailgunCase(fake, server.url)
