"""Amazon SES v2's case for the shared provider tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from email.header import decode_header, make_header
from typing import Any, ClassVar

from mailgate.config import SesSettings
from mailgate.providers import Provider
from mailgate.providers.fakes.base import Received
from mailgate.providers.fakes.ses import FakeSes
from mailgate.providers.ses import MAILGATE_ID_TAG, TAG_PREFIX, SesProvider, decode_tag
from mailgate.serving import serve_asgi
from tests.providers.support import WRONG_SECRET, Failure, HttpCase, View, addresses

SES_KEY_ID = "AKIAMAILGATETEST0001"
SES_SECRET = "mailgate/test+secret/Key0123456789abcdefgh"
SES_REGION = "us-east-1"

_TAG_INDEX = re.compile(rf"^{TAG_PREFIX}(\d+)$")


def decoded(value: str) -> str:
    """A header value or display name with its RFC 2047 encoded-words decoded."""
    return str(make_header(decode_header(value)))


def names_decoded(values: list[Any]) -> list[dict[str, str]]:
    out = addresses(values)
    for address in out:
        if "name" in address:
            address["name"] = decoded(address["name"])
    return out


class SesCase(HttpCase):
    name = "ses"
    retry_after_given = False  # SES publishes no rate-limit headers (providers.md 3.H)
    failures: ClassVar[dict[Failure, tuple[int, str | None]]] = {
        Failure.REJECTED: (400, "MessageRejected"),
        Failure.AUTH: (403, "AccessDeniedException"),
        Failure.THROTTLED: (429, "TooManyRequestsException"),
        Failure.UNAVAILABLE: (503, "ServiceUnavailable"),
        Failure.SERVER_ERROR: (500, "InternalFailure"),
    }

    def __init__(self, fake: FakeSes, url: str) -> None:
        super().__init__(fake, url)
        self.fake: FakeSes = fake

    def config(self) -> dict[str, Any]:
        return {
            "type": "ses",
            "access_key_id": SES_KEY_ID,
            "secret_access_key": SES_SECRET,
            "region": SES_REGION,
            "base_url": self.url,
        }

    def make(
        self,
        *,
        base_url: str,
        timeout: float,
        good_credentials: bool,
        access_key_id: str = SES_KEY_ID,
        session_token: str | None = None,
        configuration_set: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> Provider:
        secret = SES_SECRET if good_credentials else f"{WRONG_SECRET}/0123456789abcdef"
        settings = SesSettings(
            name="ses",
            type="ses",
            access_key_id=access_key_id,
            secret_access_key=secret,
            session_token=session_token,
            region=SES_REGION,
            configuration_set=configuration_set,
            base_url=base_url,
        )
        if clock is None:
            return SesProvider(settings, timeout=timeout)
        return SesProvider(settings, timeout=timeout, clock=clock)

    def view(self, received: Received) -> View:
        body = received.fields
        simple = body["Content"]["Simple"]
        destination = body.get("Destination") or {}
        headers = {h["Name"]: decoded(h["Value"]) for h in simple.get("Headers") or []}
        headers.pop("X-Mailgate-Id", None)
        tags = {t["Name"]: t["Value"] for t in body.get("EmailTags") or []}
        mailgate_id = tags.pop(MAILGATE_ID_TAG, None)
        numbered = {}
        for name in list(tags):
            match = _TAG_INDEX.match(name)
            if match:
                numbered[int(match[1])] = decode_tag(tags.pop(name))
        content = simple.get("Body") or {}
        return View(
            provider_message_id=received.provider_message_id,
            mailgate_id=decode_tag(mailgate_id) if mailgate_id else None,
            sender=names_decoded([body["FromEmailAddress"]])[0],
            to=names_decoded(destination.get("ToAddresses", [])),
            cc=names_decoded(destination.get("CcAddresses", [])),
            bcc=names_decoded(destination.get("BccAddresses", [])),
            reply_to=names_decoded(body.get("ReplyToAddresses", [])),
            subject=simple["Subject"]["Data"],
            text=(content.get("Text") or {}).get("Data"),
            html=(content.get("Html") or {}).get("Data"),
            headers=headers,
            attachments=[
                {
                    "filename": a["FileName"],
                    "content_type": a["ContentType"],
                    "content": a["RawContent"],
                }
                for a in simple.get("Attachments") or []
            ],
            tags=[numbered[i] for i in sorted(numbered)],
            metadata={decode_tag(k): decode_tag(v) for k, v in tags.items()},
        )


@asynccontextmanager
async def open_case(**fake_options: Any) -> AsyncIterator[SesCase]:
    fake = FakeSes(SES_KEY_ID, SES_SECRET, region=SES_REGION, **fake_options)
    async with serve_asgi(fake.app()) as server:
        yield SesCase(fake, server.url)
