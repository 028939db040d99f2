"""Resend's case for the shared provider tests."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.header import decode_header, make_header
from typing import Any, ClassVar

from mailgate.config import ResendSettings
from mailgate.providers import Provider
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.resend import FakeResend
from mailgate.providers.resend import ID_TAG, ResendProvider
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View

RESEND_KEY = "re_test_key"
_ADDRESS = re.compile(r"^\s*(?:(?P<name>.*?)\s*<(?P<bracketed>[^<>]+)>|(?P<bare>\S+))\s*$")


def address(value: str) -> dict[str, str]:
    """`{"email", "name"?}` from Resend's `Name <addr>`, the name taken verbatim or decoded.

    Not `email.utils.getaddresses`: the sender's name goes unquoted (Resend's
    own form), and a standard parser would drop the quotes inside it.
    """
    match = _ADDRESS.match(value)
    assert match is not None, value
    email = match.group("bracketed") or match.group("bare")
    name = match.group("name") or ""
    if name.startswith("=?"):
        name = str(make_header(decode_header(name)))
    return {"email": email, "name": name} if name else {"email": email}


def addresses(value: Any) -> list[dict[str, str]]:
    values = [value] if isinstance(value, str) else value or []
    return [address(v) for v in values]


class ResendCase(HttpCase):
    name = "resend"
    fake: FakeResend
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (422, "missing_required_field"),
        Failure.AUTH: (403, "invalid_api_key"),
        Failure.THROTTLED: (429, "rate_limit_exceeded"),
        Failure.UNAVAILABLE: (503, None),
        Failure.SERVER_ERROR: (500, "internal_server_error"),
    }

    def config(self) -> dict[str, Any]:
        return {"type": "resend", "api_key": RESEND_KEY, "base_url": self.url}

    def make(self, *, base_url: str, timeout: float, good_credentials: bool) -> Provider:
        key = RESEND_KEY if good_credentials else f"re_{WRONG_SECRET}"
        settings = ResendSettings(name="rs", type="resend", api_key=key, base_url=base_url)
        return ResendProvider(settings, timeout=timeout)

    def view(self, received: Received) -> View:
        body: dict[str, Any] = received.fields
        headers = dict(body.get("headers") or {})
        headers.pop("X-Mailgate-Id", None)
        metadata = json.loads(headers.pop("X-Metadata", "{}"))
        tags = [t["name"] for t in body.get("tags") or [] if t["name"] != ID_TAG]
        mailgate_id = next(
            (t["value"] for t in body.get("tags") or [] if t["name"] == ID_TAG), None
        )
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=mailgate_id,
            sender=address(body["from"]),
            to=addresses(body["to"]),
            cc=addresses(body.get("cc")),
            bcc=addresses(body.get("bcc")),
            reply_to=addresses(body.get("reply_to")),
            subject=body["subject"],
            text=body.get("text"),
            html=body.get("html"),
            headers=headers,
            attachments=[
                {
                    "filename": a["filename"],
                    "content_type": a["content_type"],
                    "content": a["content"],
                }
                for a in body.get("attachments") or []
            ],
            tags=tags,
            metadata=metadata,
        )


@asynccontextmanager
async def open_case() -> AsyncIterator[ResendCase]:
    fake = FakeResend(RESEND_KEY)
    async with serve_asgi(fake.app()) as server:
        yield ResendCase(fake, server.url)
