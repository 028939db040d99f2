"""Mailgun clients against a running mailgate, unchanged but for the base URL and the key.

django-anymail's Mailgun backend (`MAILGUN_API_URL` = mailgate's
`/compat/mailgun/v3`, `MAILGUN_API_KEY` = a mailgate key) and plain httpx
posts (the form and `messages.mime`) send through `mailgate serve`, which
delivers through its providers (the SendGrid fake first): every field
arrives there intact, and a refusal is anymail's own exception.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from tests.compat.conftest import Gateway

pytestmark = pytest.mark.slow

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def anymail_send(gateway: Gateway, message: Any, key: str | None = None) -> int:
    """Send with anymail's Mailgun backend pointed at mailgate (blocking: run in a thread)."""
    from django.test import override_settings

    with override_settings(
        EMAIL_BACKEND="anymail.backends.mailgun.EmailBackend",
        ANYMAIL={
            "MAILGUN_API_KEY": key or gateway.key,
            "MAILGUN_API_URL": f"{gateway.url}/compat/mailgun/v3",
        },
    ):
        return int(message.send())


def mailgate_id(answer_id: str, domain: str) -> str:
    """mailgate's message id from Mailgun's answer id, `<msg_...@domain>`."""
    local, _, answered = answer_id.removeprefix("<").removesuffix(">").partition("@")
    assert answered == domain and local.startswith("msg_"), answer_id
    return local


async def test_django_anymail_mailgun_backend_sends_every_field(
    gateway: Gateway, django_settings: None
) -> None:
    from anymail.message import AnymailMessage

    message = AnymailMessage(
        subject="Your invoice, Bob",
        body="Hello,\nyour invoice is attached.",
        from_email="Billing <billing@example.com>",
        to=['"Lovelace, Bob" <bob@example.org>', "carol@example.org"],
        cc=["Dan <dan@example.net>"],
        bcc=["eve@example.net"],
        reply_to=["Support <support@example.com>", "help@example.com"],
        headers={"X-Campaign": "invoices", "List-Unsubscribe": "<mailto:u@example.com>"},
        tags=["invoice", "q3, 2024"],
        metadata={"invoice": "INV-7", "customer": "42"},
        esp_extra={"o:dkim": "yes"},
    )
    message.attach_alternative("<p>Hello,</p>", "text/html")
    message.attach("invoice.pdf", PDF, "application/pdf")
    assert await asyncio.to_thread(anymail_send, gateway, message) == 1
    status = message.anymail_status
    assert status.status == {"queued"}
    assert status.esp_response.status_code == 200
    assert status.esp_response.json()["message"] == "Queued. Thank you."
    message_id = mailgate_id(status.message_id, "example.com")  # anymail's sender domain

    delivered = (await gateway.delivered(message_id)).fields
    [personalization] = delivered["personalizations"]
    assert personalization["to"] == [
        {"email": "bob@example.org", "name": "Lovelace, Bob"},
        {"email": "carol@example.org"},
    ]
    assert personalization["cc"] == [{"email": "dan@example.net", "name": "Dan"}]
    assert personalization["bcc"] == [{"email": "eve@example.net"}]
    assert delivered["from"] == {"email": "billing@example.com", "name": "Billing"}
    assert delivered["subject"] == "Your invoice, Bob"
    assert delivered["reply_to_list"] == [
        {"email": "support@example.com", "name": "Support"},
        {"email": "help@example.com"},
    ]
    assert delivered["content"] == [
        {"type": "text/plain", "value": "Hello,\nyour invoice is attached."},
        {"type": "text/html", "value": "<p>Hello,</p>"},
    ]
    attachments = {a["filename"]: a for a in delivered["attachments"]}
    assert base64.b64decode(attachments["invoice.pdf"]["content"]) == PDF
    assert attachments["invoice.pdf"]["type"] == "application/pdf"
    assert delivered["headers"]["X-Campaign"] == "invoices"
    assert delivered["headers"]["List-Unsubscribe"] == "<mailto:u@example.com>"
    assert delivered["categories"] == ["invoice", "q3, 2024"]
    assert delivered["custom_args"] == {
        "invoice": "INV-7",
        "customer": "42",
        "mailgate_id": message_id,
    }

    # anymail's send_at is Mailgun's o:deliverytime: a scheduled message.
    later = AnymailMessage(
        subject="Reminder", body="Hi", from_email="billing@example.com", to=["bob@example.org"]
    )
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    later.send_at = when
    assert await asyncio.to_thread(anymail_send, gateway, later) == 1
    scheduled = await gateway.message(
        mailgate_id(later.anymail_status.message_id, "example.com"), "scheduled"
    )
    assert datetime.fromisoformat(scheduled["send_at"].replace("Z", "+00:00")) == when


async def test_django_anymail_gets_its_own_exception_for_refusals(
    gateway: Gateway, django_settings: None
) -> None:
    from anymail.exceptions import AnymailRequestsAPIError
    from anymail.message import AnymailMessage

    def message(**extra: Any) -> AnymailMessage:
        msg = AnymailMessage(
            subject="Hi", body="Hi", from_email="ada@example.com", to=["bob@example.org"]
        )
        for name, value in extra.items():
            setattr(msg, name, value)
        return msg

    with pytest.raises(AnymailRequestsAPIError) as template:
        await asyncio.to_thread(anymail_send, gateway, message(template_id="welcome"))
    assert template.value.status_code == 400
    assert "'template' parameter is not supported" in str(template.value)

    inline = message()
    inline.attach_inline_image(PNG, filename="logo.png", domain="example.com")
    with pytest.raises(AnymailRequestsAPIError) as refused:
        await asyncio.to_thread(anymail_send, gateway, inline)
    assert refused.value.status_code == 400
    assert "'inline' parameter is not supported" in str(refused.value)

    with pytest.raises(AnymailRequestsAPIError) as unknown:
        await asyncio.to_thread(anymail_send, gateway, message(), "mg_not-a-key")
    assert unknown.value.status_code == 401

    # A tenant with sender domains: another domain is Mailgun's 404, which anymail explains.
    shop = await gateway.key_of(
        "send", tenant={"name": "shop", "sender_domains": ["shop.example.net"]}
    )
    with pytest.raises(AnymailRequestsAPIError) as domain:
        await asyncio.to_thread(anymail_send, gateway, message(), shop)
    assert domain.value.status_code == 404
    assert "Unknown sender domain 'example.com'" in str(domain.value)
    assert (await gateway.api.get("/v1/messages", params={"tenant": "*"})).json()["data"] == []


async def test_messages_mime_over_plain_http(gateway: Gateway) -> None:
    msg = EmailMessage()
    msg["From"] = "Ada <ada@example.com>"
    msg["To"] = "Bob <bob@example.org>"
    msg["Subject"] = "Report"
    msg["X-Campaign"] = "q3"
    msg["X-Mailgun-Tag"] = "reports"
    msg["X-Mailgun-Variables"] = '{"order": "17"}'
    msg.set_content("Hi Bob")
    msg.add_alternative("<p>Hi Bob</p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    async with httpx.AsyncClient(base_url=gateway.url, auth=("api", gateway.key)) as client:
        answer = await client.post(
            "/compat/mailgun/v3/mg.example.com/messages.mime",
            data={"to": ["bob@example.org", "eve@example.net"], "o:tag": "mime"},
            files={"message": ("message.mime", msg.as_bytes(), "message/rfc822")},
        )
        assert answer.status_code == 200, answer.text
        message_id = mailgate_id(answer.json()["id"], "mg.example.com")
        refused = await client.post(
            "/compat/mailgun/v3/mg.example.com/messages",
            data={"from": "ada@example.com", "to": "nobody", "subject": "x", "text": "x"},
        )
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("'to' parameter is invalid")

    delivered = (await gateway.delivered(message_id)).fields
    [personalization] = delivered["personalizations"]
    assert personalization["to"] == [{"email": "bob@example.org", "name": "Bob"}]
    assert personalization["bcc"] == [{"email": "eve@example.net"}]
    assert delivered["content"] == [
        {"type": "text/plain", "value": "Hi Bob"},
        {"type": "text/html", "value": "<p>Hi Bob</p>"},
    ]
    [attachment] = delivered["attachments"]
    assert (attachment["filename"], attachment["type"]) == ("report.pdf", "application/pdf")
    assert base64.b64decode(attachment["content"]) == PDF
    assert delivered["headers"]["X-Campaign"] == "q3"
    assert "X-Mailgun-Tag" not in delivered["headers"]
    assert delivered["categories"] == ["reports", "mime"]
    assert delivered["custom_args"] == {"order": "17", "mailgate_id": message_id}
