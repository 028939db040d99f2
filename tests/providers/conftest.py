"""Each provider adapter against its fake, over real HTTP on loopback.

`case` is parametrized over every provider: the shared tests in
`test_common.py` run once per provider, and `Case.view` turns what the fake
received into one provider-neutral shape so the same assertions hold.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

import pytest

from mailgate.config import MailgunSettings, SendGridSettings
from mailgate.providers import HttpProvider, MailgunProvider, SendGridProvider
from mailgate.providers.fakes import FakeMailgun, FakeProvider, FakeSendGrid, Received
from mailgate.serving import serve_asgi
from tests.helpers import MAILGUN_DOMAIN, MAILGUN_KEY, SENDGRID_KEY

TIMEOUT = 0.5


@dataclass
class Case:
    name: str
    fake: FakeProvider
    make: Callable[..., HttpProvider]
    """make(base_url=..., api_key=..., timeout=...) -> a fresh adapter."""
    url: str
    view: Callable[[Received], dict[str, Any]]

    def provider(self, **overrides: Any) -> HttpProvider:
        return self.make(**({"base_url": self.url, "timeout": TIMEOUT} | overrides))


def _sendgrid_view(r: Received) -> dict[str, Any]:
    body = r.fields
    p = body["personalizations"][0]
    reply = body.get("reply_to_list") or ([body["reply_to"]] if "reply_to" in body else [])
    content = {c["type"]: c["value"] for c in body["content"]}
    args = dict(body.get("custom_args") or {})
    headers = dict(body.get("headers") or {})
    return {
        "from": body["from"],
        "to": p["to"],
        "cc": p.get("cc", []),
        "bcc": p.get("bcc", []),
        "reply_to": reply,
        "subject": body["subject"],
        "text": content.get("text/plain"),
        "html": content.get("text/html"),
        "headers": headers,
        "attachments": [
            {"filename": a["filename"], "content_type": a["type"], "content": a["content"]}
            for a in body.get("attachments", [])
        ],
        "tags": body.get("categories", []),
        "metadata": {k: v for k, v in args.items() if k != "mailgate_id"},
        "mailgate_id": args.get("mailgate_id"),
    }


def _addresses(values: list[str]) -> list[dict[str, str]]:
    out = []
    for name, email in getaddresses(values):
        out.append({"email": email, "name": name} if name else {"email": email})
    return out


def _mailgun_view(r: Received) -> dict[str, Any]:
    f = r.fields

    def one(key: str) -> Any:
        return (f.get(key) or [None])[0]

    return {
        "from": _addresses(f["from"])[0],
        "to": _addresses(f["to"]),
        "cc": _addresses(f.get("cc", [])),
        "bcc": _addresses(f.get("bcc", [])),
        "reply_to": _addresses(f.get("h:Reply-To", [])),
        "subject": one("subject"),
        "text": one("text"),
        "html": one("html"),
        "headers": {k[2:]: v[0] for k, v in f.items() if k.startswith("h:") and k != "h:Reply-To"},
        "attachments": [
            {"filename": a["filename"], "content_type": a["content_type"], "content": a["content"]}
            for a in f["attachments"]
            if a["field"] == "attachment"
        ],
        "tags": f.get("o:tag", []),
        "metadata": {
            k[2:]: v[0] for k, v in f.items() if k.startswith("v:") and k != "v:mailgate_id"
        },
        "mailgate_id": one("v:mailgate_id"),
    }


def _make_sendgrid(*, base_url: str, timeout: float, api_key: str = SENDGRID_KEY) -> HttpProvider:
    settings = SendGridSettings(name="sg", type="sendgrid", api_key=api_key, base_url=base_url)
    return SendGridProvider(settings, timeout=timeout)


def _make_mailgun(
    *, base_url: str, timeout: float, api_key: str = MAILGUN_KEY, domain: str = MAILGUN_DOMAIN
) -> HttpProvider:
    settings = MailgunSettings(
        name="mg", type="mailgun", api_key=api_key, domain=domain, base_url=base_url
    )
    return MailgunProvider(settings, timeout=timeout)


@pytest.fixture(params=["sendgrid", "mailgun"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    fake: FakeProvider
    if request.param == "sendgrid":
        fake = FakeSendGrid(SENDGRID_KEY)
        make, view = _make_sendgrid, _sendgrid_view
    else:
        fake = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN)
        make, view = _make_mailgun, _mailgun_view
    async with serve_asgi(fake.app()) as server:
        yield Case(request.param, fake, make, server.url, view)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
