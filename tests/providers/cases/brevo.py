"""Brevo's case for the shared provider tests."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.header import decode_header, make_header
from typing import Any, ClassVar

from mailgate.config import BrevoSettings
from mailgate.providers.base import Provider
from mailgate.providers.brevo import BrevoProvider
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.brevo import FakeBrevo
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View, addresses

BREVO_KEY = "xkeysib-test-key"

# Headers that carry mailgate's own data or Brevo instructions, not the caller's headers.
_NOT_CUSTOM = frozenset({"X-Mailgate-Id", "X-Mailin-custom", "idempotencyKey"})


def _decoded(values: list[Any]) -> list[dict[str, str]]:
    """Addresses with RFC 2047 names decoded, as a mail client shows them."""
    out = []
    for address in addresses(values):
        if "name" in address:
            address["name"] = str(make_header(decode_header(address["name"])))
        out.append(address)
    return out


class BrevoCase(HttpCase):
    name = "brevo"
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (400, "invalid_parameter"),
        Failure.AUTH: (401, "unauthorized"),
        Failure.THROTTLED: (429, None),
        Failure.UNAVAILABLE: (503, None),
        Failure.SERVER_ERROR: (500, None),
    }

    def config(self) -> dict[str, Any]:
        return {"type": "brevo", "api_key": BREVO_KEY, "base_url": self.url}

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        key = BREVO_KEY if good_credentials else f"xkeysib-{WRONG_SECRET}"
        settings = BrevoSettings(name="brevo", type="brevo", api_key=key, base_url=base_url)
        return BrevoProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        body = received.fields
        headers = dict(body.get("headers") or {})
        custom = json.loads(headers.get("X-Mailin-custom") or "{}")
        mailgate_id = custom.pop("mailgate_id", None)
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=mailgate_id,
            sender=_decoded([body["sender"]])[0],
            to=_decoded(body["to"]),
            cc=_decoded(body.get("cc", [])),
            bcc=_decoded(body.get("bcc", [])),
            reply_to=_decoded([body["replyTo"]] if "replyTo" in body else []),
            subject=body["subject"],
            text=body.get("textContent"),
            html=body.get("htmlContent"),
            headers={k: v for k, v in headers.items() if k not in _NOT_CUSTOM},
            attachments=[
                {
                    "filename": a["name"],
                    # Brevo derives the type from the name, as this does.
                    "content_type": mimetypes.guess_type(a["name"])[0] or "",
                    "content": a["content"],
                }
                for a in body.get("attachment", [])
            ],
            tags=body.get("tags", []),
            metadata=custom,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[BrevoCase]:
    fake = FakeBrevo(BREVO_KEY)
    async with serve_asgi(fake.app()) as server:
        yield BrevoCase(fake, server.url)
