"""Postmark's own client libraries against a running gateway, unchanged but for URL and key.

postmarker (`PostmarkClient(root_api_url=...)`) and django-anymail's Postmark
backend (`POSTMARK_API_URL`) each send a message with every field, and a
batch; mailgate delivers each through its providers (the SendGrid fake)
with every field intact; a refused message raises the library's own
exception with Postmark's `ErrorCode`.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from tests.compat.conftest import Gateway

pytestmark = pytest.mark.slow

PDF = b"%PDF-1.4\n\x00\x01\x02\xff binary \r\n bytes\n%%EOF"


def delivered_as_sent(fields: dict[str, Any], message_id: str) -> None:
    """What the SendGrid fake received for the every-field message both libraries send."""
    [personalization] = fields["personalizations"]
    assert personalization["to"] == [
        {"email": "bob@example.org", "name": "Bob Babbage"},
        {"email": "carol@example.org"},
    ]
    assert personalization["cc"] == [{"email": "juergen@example.org", "name": "Jürgen Groß"}]
    assert personalization["bcc"] == [{"email": "dan@example.net"}]
    assert fields["from"] == {"email": "ada@example.com", "name": "Lovelace, Ada"}
    assert fields["reply_to_list"] == [
        {"email": "support@example.com", "name": "Support"},
        {"email": "help@example.com"},
    ]
    assert fields["subject"] == "Your report, Q3"
    assert fields["content"] == [
        {"type": "text/plain", "value": "Hi Bob,\nthe report is attached."},
        {"type": "text/html", "value": "<p>Hi <b>Bob</b>, the report is attached.</p>"},
    ]
    assert fields["headers"]["X-Campaign"] == "q3"
    assert fields["headers"]["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"
    assert fields["headers"]["X-Mailgate-Id"] == message_id
    assert fields["categories"] == ["reports"]
    assert fields["custom_args"] == {
        "customer": "c-17",
        "message_stream": "outbound",
        "mailgate_id": message_id,
    }
    [attachment] = fields["attachments"]
    assert (attachment["filename"], attachment["type"]) == ("report.pdf", "application/pdf")
    assert base64.b64decode(attachment["content"]) == PDF


async def test_postmarker(gateway: Gateway) -> None:
    from postmarker.core import PostmarkClient
    from postmarker.exceptions import ClientError

    # `root_api_url` is postmarker's own setting for the API's address. It joins
    # "/email" to it, which drops any path, so mailgate serves the routes at the
    # root as well as under /compat/postmark.
    client = PostmarkClient(server_token=gateway.key, root_api_url=f"{gateway.url}/", timeout=30)

    def send_every_field() -> dict[str, Any]:
        answer: dict[str, Any] = client.emails.send(
            From='"Lovelace, Ada" <ada@example.com>',
            To=["Bob Babbage <bob@example.org>", "carol@example.org"],
            Cc="Jürgen Groß <juergen@example.org>",
            Bcc="dan@example.net",
            ReplyTo="Support <support@example.com>, help@example.com",
            Subject="Your report, Q3",
            Tag="reports",
            TextBody="Hi Bob,\nthe report is attached.",
            HtmlBody="<p>Hi <b>Bob</b>, the report is attached.</p>",
            Headers={"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
            Metadata={"customer": "c-17"},
            TrackOpens=False,
            TrackLinks="None",
            Attachments=[("report.pdf", base64.b64encode(PDF).decode(), "application/pdf")],
            MessageStream="outbound",
        )
        return answer

    answer = await asyncio.to_thread(send_every_field)
    assert set(answer) == {"To", "SubmittedAt", "MessageID", "ErrorCode", "Message"}
    assert (answer["ErrorCode"], answer["Message"]) == (0, "OK")
    assert answer["To"] == "Bob Babbage <bob@example.org>,carol@example.org"
    message_id = answer["MessageID"]
    sent = await gateway.message(message_id)
    assert sent["tags"] == ["reports"] and sent["provider"] == "primary"
    delivered_as_sent((await gateway.delivered(message_id)).fields, message_id)

    batch = await asyncio.to_thread(
        client.emails.send_batch,
        {"From": "ada@example.com", "To": "erin@example.org", "Subject": "1", "TextBody": "one"},
        {"From": "ada@example.com", "To": "frank@", "Subject": "2", "TextBody": "two"},
        {"From": "ada@example.com", "To": "gina@example.org", "Subject": "3", "HtmlBody": "<p>3"},
    )
    assert [item["ErrorCode"] for item in batch] == [0, 300, 0]
    assert batch[1]["Message"].startswith("Invalid 'To' address: 'frank@'.")
    for item, to in ((batch[0], "erin@example.org"), (batch[2], "gina@example.org")):
        fields = (await gateway.delivered(item["MessageID"])).fields
        assert fields["personalizations"][0]["to"] == [{"email": to}]

    def refused(**fields: Any) -> ClientError:
        with pytest.raises(ClientError) as raised:
            client.emails.send(**fields)
        return raised.value

    message = {"From": "ada@example.com", "To": "bob@example.org", "Subject": "Hi"}
    bad = await asyncio.to_thread(refused, **message, TextBody="x", Cc="carol@")
    assert bad.error_code == 300 and "Invalid 'Cc' address: 'carol@'." in str(bad)
    tracked = await asyncio.to_thread(refused, **message, TextBody="x", TrackLinks="HtmlOnly")
    assert tracked.error_code == 300 and "'TrackLinks'" in str(tracked)
    stranger = PostmarkClient(server_token="mg_not-a-key", root_api_url=f"{gateway.url}/")
    with pytest.raises(ClientError) as unauthorized:
        await asyncio.to_thread(stranger.emails.send, **message, TextBody="x")
    assert unauthorized.value.error_code == 10


async def test_django_anymail(gateway: Gateway, django_settings: None) -> None:
    from anymail.exceptions import AnymailRecipientsRefused, AnymailRequestsAPIError
    from anymail.message import AnymailMessage
    from django.test import override_settings

    def backend(key: str) -> Any:
        return override_settings(
            EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
            ANYMAIL={
                "POSTMARK_SERVER_TOKEN": key,
                "POSTMARK_API_URL": f"{gateway.url}/compat/postmark/",
                "POSTMARK_MESSAGE_STREAM": "outbound",
            },
        )

    def send_every_field() -> AnymailMessage:
        message = AnymailMessage(
            subject="Your report, Q3",
            body="Hi Bob,\nthe report is attached.",
            from_email='"Lovelace, Ada" <ada@example.com>',
            to=["Bob Babbage <bob@example.org>", "carol@example.org"],
            cc=["Jürgen Groß <juergen@example.org>"],
            bcc=["dan@example.net"],
            reply_to=["Support <support@example.com>", "help@example.com"],
            headers={"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
            tags=["reports"],
            metadata={"customer": "c-17"},
            track_opens=False,
            track_clicks=False,
        )
        message.attach_alternative("<p>Hi <b>Bob</b>, the report is attached.</p>", "text/html")
        message.attach("report.pdf", PDF, "application/pdf")
        with backend(gateway.key):
            assert message.send() == 1
        return message

    message = await asyncio.to_thread(send_every_field)
    status = message.anymail_status
    assert status.status == {"sent"}
    message_id = status.message_id
    assert isinstance(message_id, str) and message_id.startswith("msg_")
    assert status.recipients["carol@example.org"].message_id == message_id
    await gateway.message(message_id)
    delivered_as_sent((await gateway.delivered(message_id)).fields, message_id)

    def send_batch() -> AnymailMessage:
        # Per-recipient metadata makes anymail send one message per recipient,
        # through /email/batch.
        batch = AnymailMessage(
            subject="Your code",
            body="Here it is.",
            from_email="ada@example.com",
            to=["erin@example.org", "Frank <frank@example.org>"],
            merge_metadata={"erin@example.org": {"code": "1"}, "frank@example.org": {"code": "2"}},
        )
        with backend(gateway.key):
            assert batch.send() == 1
        return batch

    batch = await asyncio.to_thread(send_batch)
    ids = {email: s.message_id for email, s in batch.anymail_status.recipients.items()}
    assert batch.anymail_status.status == {"sent"} and len(set(ids.values())) == 2
    for email, code in (("erin@example.org", "1"), ("frank@example.org", "2")):
        fields = (await gateway.delivered(ids[email])).fields
        assert fields["personalizations"][0]["to"][0]["email"] == email
        assert fields["custom_args"]["code"] == code

    def refused(key: str, to: str, exception: type[Exception]) -> Exception:
        message = AnymailMessage(subject="Hi", body="x", from_email="ada@example.com", to=[to])
        with backend(key), pytest.raises(exception) as raised:
            message.send()
        return raised.value

    # A domain without a dot: anymail lets it through, mailgate refuses it in
    # Postmark's words, and anymail marks the recipient invalid.
    invalid = await asyncio.to_thread(
        refused, gateway.key, "bob@localhost", AnymailRecipientsRefused
    )
    assert isinstance(invalid, AnymailRecipientsRefused) and invalid.response is not None
    assert invalid.response.status_code == 422
    answer = invalid.response.json()
    assert answer["ErrorCode"] == 300
    assert answer["Message"].startswith("Invalid 'To' address: 'bob@localhost'.")
    shop = await gateway.key_of("send", tenant={"name": "shop", "sender_domains": ["shop.example"]})
    outside = await asyncio.to_thread(refused, shop, "bob@example.org", AnymailRequestsAPIError)
    assert isinstance(outside, AnymailRequestsAPIError)
    assert outside.status_code == 422 and "ErrorCode" in str(outside) and "400" in str(outside)
