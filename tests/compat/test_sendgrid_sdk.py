"""SendGrid's own client libraries against a running mailgate, unchanged but for two settings.

The `sendgrid` SDK (`SendGridAPIClient(key, host=...)`) and django-anymail's
SendGrid backend (`SENDGRID_API_URL`) send through `mailgate serve`, which
delivers through its providers (the SendGrid fake first): every field
arrives there intact, and a refusal is each library's own exception.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from python_http_client.exceptions import BadRequestsError, HTTPError, UnauthorizedError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    Bcc,
    Category,
    Cc,
    Content,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Header,
    Mail,
    Personalization,
    ReplyTo,
    Subject,
    To,
)

from tests.compat.conftest import Gateway

pytestmark = [
    pytest.mark.slow,
    # anymail warns, on building its SendGrid backend, that its maintainers no
    # longer test against SendGrid itself; the backend is what these tests use.
    pytest.mark.filterwarnings("ignore:django-anymail has dropped official support for SendGrid"),
]

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def sdk_mail(send_at: int) -> Mail:
    """Every field the SDK sends and mailgate maps; a second, scheduled personalization."""
    mail = Mail()
    mail.from_email = From("ada@example.com", "Ada Lovelace")
    mail.subject = Subject("Quarterly report")
    bob = Personalization()
    bob.add_to(To("bob@example.org", "Bob"))
    bob.add_to(To("carol@example.org"))
    bob.add_cc(Cc("dan@example.net", "Dan"))
    bob.add_bcc(Bcc("eve@example.net"))
    bob.add_header(Header("X-Recipient", "bob"))
    bob.add_custom_arg(CustomArg("user", "17"))
    mail.add_personalization(bob)
    later = Personalization()
    later.add_to(To("frank@example.org"))
    later.send_at = send_at
    mail.add_personalization(later, index=1)
    mail.reply_to = ReplyTo("replies@example.com", "Replies")
    mail.add_content(Content("text/plain", "Hello,\nthe report is attached."))
    mail.add_content(Content("text/html", "<p>Hello,</p><p>the report is attached.</p>"))
    mail.attachment = Attachment(
        FileContent(base64.b64encode(PDF).decode()),
        FileName("report.pdf"),
        FileType("application/pdf"),
        Disposition("attachment"),
    )
    mail.header = Header("X-Campaign", "q3")
    mail.category = [Category("reports"), Category("q3")]
    mail.custom_arg = CustomArg("account", "acct-42")
    return mail


async def test_the_sendgrid_sdk_sends_every_field_through_mailgate(gateway: Gateway) -> None:
    send_at = int((datetime.now(UTC) + timedelta(hours=2)).timestamp())
    client = SendGridAPIClient(gateway.key, host=f"{gateway.url}/compat/sendgrid")
    response = await asyncio.to_thread(client.send, sdk_mail(send_at))
    assert response.status_code == 202
    assert response.body == b""
    first, later = response.headers["X-Mailgate-Message-Ids"].split(", ")
    assert response.headers["X-Message-Id"] == first

    shown = await gateway.message(first)
    assert shown["subject"] == "Quarterly report" and shown["provider"] == "primary"
    delivered = (await gateway.delivered(first)).fields
    [personalization] = delivered["personalizations"]
    assert personalization["to"] == [
        {"email": "bob@example.org", "name": "Bob"},
        {"email": "carol@example.org"},
    ]
    assert personalization["cc"] == [{"email": "dan@example.net", "name": "Dan"}]
    assert personalization["bcc"] == [{"email": "eve@example.net"}]
    assert delivered["from"] == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert delivered["reply_to"] == {"email": "replies@example.com", "name": "Replies"}
    assert delivered["subject"] == "Quarterly report"
    assert delivered["content"] == [
        {"type": "text/plain", "value": "Hello,\nthe report is attached."},
        {"type": "text/html", "value": "<p>Hello,</p><p>the report is attached.</p>"},
    ]
    [attachment] = delivered["attachments"]
    assert (attachment["filename"], attachment["type"]) == ("report.pdf", "application/pdf")
    assert base64.b64decode(attachment["content"]) == PDF
    assert delivered["headers"] == {
        "X-Campaign": "q3",
        "X-Recipient": "bob",
        "X-Mailgate-Id": first,
    }
    assert sorted(delivered["categories"]) == ["q3", "reports"]  # the SDK reverses their order
    assert delivered["custom_args"] == {"account": "acct-42", "user": "17", "mailgate_id": first}

    scheduled = await gateway.message(later, "scheduled")
    assert [a["email"] for a in scheduled["to"]] == ["frank@example.org"]
    assert scheduled["send_at"] == datetime.fromtimestamp(send_at, UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def refusal(error: HTTPError) -> dict[str, Any]:
    body = json.loads(error.body)
    [only] = body["errors"]
    return dict(only)


async def test_the_sendgrid_sdk_raises_its_own_errors_for_refusals(gateway: Gateway) -> None:
    client = SendGridAPIClient(gateway.key, host=gateway.url)  # the root path serves it too
    templated = Mail(
        from_email="ada@example.com",
        to_emails="bob@example.org",
        subject="Hi",
        plain_text_content="x",
    )
    templated.template_id = "d-0123456789abcdef0123456789abcdef"
    with pytest.raises(BadRequestsError) as bad:
        await asyncio.to_thread(client.send, templated)
    assert bad.value.status_code == 400
    assert refusal(bad.value)["field"] == "template_id"

    stranger = SendGridAPIClient("SG.not-a-mailgate-key", host=f"{gateway.url}/compat/sendgrid")
    plain = Mail(
        from_email="ada@example.com",
        to_emails="bob@example.org",
        subject="Hi",
        plain_text_content="x",
    )
    with pytest.raises(UnauthorizedError) as unknown:
        await asyncio.to_thread(stranger.send, plain)
    assert unknown.value.status_code == 401
    assert refusal(unknown.value)["field"] is None
    assert (await gateway.api.get("/v1/messages")).json()["data"] == []


async def test_django_anymail_sendgrid_backend_sends_through_mailgate(
    gateway: Gateway, django_settings: None
) -> None:
    from anymail.exceptions import AnymailRequestsAPIError
    from anymail.message import AnymailMessage
    from django.test import override_settings

    def send(message: AnymailMessage) -> int:
        with override_settings(
            EMAIL_BACKEND="anymail.backends.sendgrid.EmailBackend",
            ANYMAIL={
                "SENDGRID_API_KEY": gateway.key,
                "SENDGRID_API_URL": f"{gateway.url}/compat/sendgrid/v3/",
            },
        ):
            return int(message.send())

    message = AnymailMessage(
        subject="Your invoice",
        body="Hello,\nyour invoice is attached.",
        from_email="Billing <billing@example.com>",
        to=["Bob <bob@example.org>"],
        cc=["dan@example.net"],
        bcc=["eve@example.net"],
        reply_to=["Support <support@example.com>", "help@example.com"],
        headers={"X-Campaign": "invoices"},
        tags=["invoice"],
        metadata={"invoice": "INV-7"},
    )
    message.attach_alternative("<p>Hello,</p><p>your invoice is attached.</p>", "text/html")
    message.attach("invoice.pdf", PDF, "application/pdf")
    assert await asyncio.to_thread(send, message) == 1
    status = message.anymail_status
    assert status.status == {"queued"}
    message_id = status.esp_response.headers["X-Message-Id"]

    delivered = (await gateway.delivered(message_id)).fields
    [personalization] = delivered["personalizations"]
    assert personalization["to"] == [{"email": "bob@example.org", "name": "Bob"}]
    assert personalization["cc"] == [{"email": "dan@example.net"}]
    assert personalization["bcc"] == [{"email": "eve@example.net"}]
    assert delivered["from"] == {"email": "billing@example.com", "name": "Billing"}
    assert delivered["reply_to_list"] == [
        {"email": "support@example.com", "name": "Support"},
        {"email": "help@example.com"},
    ]
    assert delivered["content"] == [
        {"type": "text/plain", "value": "Hello,\nyour invoice is attached."},
        {"type": "text/html", "value": "<p>Hello,</p><p>your invoice is attached.</p>"},
    ]
    [attachment] = delivered["attachments"]
    assert base64.b64decode(attachment["content"]) == PDF
    assert attachment["filename"] == "invoice.pdf"
    assert delivered["headers"]["X-Campaign"] == "invoices"
    assert delivered["categories"] == ["invoice"]
    # anymail's own per-message id travels as a custom arg, beside the caller's metadata.
    assert delivered["custom_args"] == {
        "invoice": "INV-7",
        "anymail_id": status.message_id,
        "mailgate_id": message_id,
    }

    templated = AnymailMessage(
        from_email="billing@example.com", to=["bob@example.org"], subject="x", body="x"
    )
    templated.template_id = "d-0123456789abcdef0123456789abcdef"
    with pytest.raises(AnymailRequestsAPIError) as refused:
        await asyncio.to_thread(send, templated)
    assert refused.value.status_code == 400
    assert json.loads(refused.value.response.text)["errors"][0]["field"] == "template_id"
    listed = (await gateway.api.get("/v1/messages")).json()["data"]
    assert [m["id"] for m in listed] == [message_id]
