"""A parsed message and its envelope as `MessageIn` fields: what is kept, what is refused."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from mailgate.api.schemas import MessageIn
from mailgate.errors import InvalidRequest
from mailgate.ingest import message_fields, parse_message

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def rich_message() -> EmailMessage:
    """Text and HTML, an inline image the HTML shows, a PDF attachment, headers of every kind."""
    msg = EmailMessage()
    msg["From"] = "Ada Lovelace <ada@example.com>"
    msg["To"] = "Bob <bob@example.org>, carol@example.org"
    msg["Cc"] = "Dan <dan@example.net>"
    msg["Reply-To"] = "replies@example.com"
    msg["Subject"] = "Quarterly report"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    msg["X-Campaign"] = "q3"
    msg["List-Unsubscribe"] = "<mailto:unsubscribe@example.com>"
    msg["X-Mailgate-Tag"] = "reports"
    msg["X-Mailgate-Tag"] = "q3, 2024"
    msg["X-Mailgate-Meta-account"] = "acct-42"
    msg["X-Mailgate-Internal"] = "dropped"
    msg.set_content("Hello Bob,\nthe report is attached.\n")
    logo = make_msgid(domain="example.com")
    msg.add_alternative(f'<p>Hello Bob</p><img src="cid:{logo[1:-1]}">', subtype="html")
    html = list(msg.iter_parts())[1]
    assert isinstance(html, EmailMessage)
    html.add_related(PNG, maintype="image", subtype="png", cid=logo, filename="logo.png")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return msg


def fields_of(
    msg: EmailMessage, rcpt_tos: list[str] | None = None, mail_from: str | None = "ada@example.com"
) -> dict[str, object]:
    if rcpt_tos is None:
        rcpt_tos = ["bob@example.org", "carol@example.org", "dan@example.net"]
    return message_fields(parse_message(msg.as_bytes()), mail_from=mail_from, rcpt_tos=rcpt_tos)


def test_a_rich_message_keeps_bodies_parts_and_headers() -> None:
    fields = fields_of(rich_message(), ["bob@example.org", "carol@example.org", "dan@example.net"])
    message = MessageIn.model_validate(fields)
    assert message.sender is not None and message.sender.email == "ada@example.com"
    assert message.sender.name == "Ada Lovelace"
    assert [(a.email, a.name) for a in message.to] == [
        ("bob@example.org", "Bob"),
        ("carol@example.org", None),
    ]
    assert [a.email for a in message.cc] == ["dan@example.net"]
    assert message.bcc == []
    assert [a.email for a in message.reply_to] == ["replies@example.com"]
    assert message.subject == "Quarterly report"
    assert message.text == "Hello Bob,\nthe report is attached."
    assert message.html is not None and message.html.startswith("<p>Hello Bob</p><img src=")
    assert [(a.filename, a.content_type) for a in message.attachments] == [
        ("logo.png", "image/png"),
        ("report.pdf", "application/pdf"),
    ]
    assert base64.b64decode(message.attachments[0].content) == PNG
    assert base64.b64decode(message.attachments[1].content) == PDF
    # Custom headers stay; reserved, Content-* and other X-Mailgate-* headers go.
    assert message.headers == {
        "X-Campaign": "q3",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    assert message.tags == ["reports", "q3, 2024"]
    assert message.metadata == {"account": "acct-42"}


def test_envelope_recipients_not_in_to_or_cc_become_bcc() -> None:
    msg = EmailMessage()
    msg["From"] = "ada@example.com"
    msg["To"] = "bob@example.org"
    msg["Cc"] = "carol@example.org"
    msg["Bcc"] = "someone-else@example.org"  # a header left in: the envelope decides
    msg["Subject"] = "Hi"
    msg.set_content("Hi")
    rcpt = ["BOB@Example.org", "carol@example.org", "eve@example.com", "frank@example.com"]
    message = MessageIn.model_validate(fields_of(msg, rcpt))
    assert [a.email for a in message.to] == ["bob@example.org"]
    assert [a.email for a in message.cc] == ["carol@example.org"]
    assert [a.email for a in message.bcc] == ["eve@example.com", "frank@example.com"]


def test_a_to_address_outside_the_envelope_is_refused() -> None:
    msg = EmailMessage()
    msg["From"] = "ada@example.com"
    msg["To"] = "bob@example.org, list@example.org"
    msg["Subject"] = "Hi"
    msg.set_content("Hi")
    with pytest.raises(InvalidRequest) as refused:
        fields_of(msg, ["bob@example.org"])
    assert refused.value.field == "to"
    assert "list@example.org is not one of the RCPT TO recipients" in refused.value.message


def test_a_message_without_to_is_refused() -> None:
    msg = EmailMessage()
    msg["From"] = "ada@example.com"
    msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = "Hi"
    msg.set_content("Hi")
    with pytest.raises(InvalidRequest) as refused:
        fields_of(msg, ["bob@example.org"])
    assert refused.value.field == "to"


def test_no_from_header_takes_the_envelope_sender() -> None:
    msg = EmailMessage()
    msg["To"] = "bob@example.org"
    msg["Subject"] = "Hi"
    msg.set_content("Hi")
    fields = fields_of(msg, ["bob@example.org"], mail_from="app@example.com")
    assert fields["from"] == {"email": "app@example.com"}
    with pytest.raises(InvalidRequest):
        msg["From"] = "a@example.com, b@example.com"
        fields_of(msg, ["bob@example.org"])


def test_utf8_headers_encoded_words_and_folding() -> None:
    raw = (
        "From: Zoë Ünïcode <zoe@example.com>\r\n"
        "To: =?utf-8?q?J=C3=BCrgen?= <juergen@example.org>\r\n"
        "Subject: Grüße aus\r\n\tBerlin\r\n"
        "X-Note: one\r\n two\r\n"
        "X-Note: three\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Hallo Jürgen 🌍\r\n"
    ).encode()
    fields = message_fields(
        parse_message(raw), mail_from="zoe@example.com", rcpt_tos=["juergen@example.org"]
    )
    message = MessageIn.model_validate(fields)
    assert message.sender is not None and message.sender.name == "Zoë Ünïcode"
    assert message.to[0].name == "Jürgen"
    assert message.subject == "Grüße aus Berlin"
    assert message.text == "Hallo Jürgen 🌍"
    assert message.headers == {"X-Note": "one two, three"}


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        (None, "Grüße 🌍".encode(), "Grüße 🌍"),  # no MIME at all, as `sendmail` users write
        ("text/plain", "Grüße 🌍".encode(), "Grüße 🌍"),
        ("text/plain; charset=us-ascii", "Grüße".encode(), "Grüße"),
        ("text/plain", "Grüße".encode("latin-1"), "Gr\ufffd\ufffde"),  # not UTF-8: MIME's rule
        ("text/plain; charset=iso-8859-1", "Grüße".encode("latin-1"), "Grüße"),
        ("text/plain; charset=iso-8859-1", "Grüße".encode(), "GrÃ¼Ã\x9fe"),  # as declared
    ],
)
def test_8bit_text_without_a_charset_is_read_as_utf8(
    content_type: str | None, body: bytes, text: str
) -> None:
    head = b"From: ada@example.com\r\nTo: bob@example.org\r\nSubject: Hi\r\n"
    if content_type is not None:
        head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n".encode()
    raw = head + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n"
    fields = message_fields(
        parse_message(raw), mail_from="ada@example.com", rcpt_tos=["bob@example.org"]
    )
    assert fields["text"] == text


def test_parts_without_names_and_forwarded_messages_become_attachments() -> None:
    forwarded = EmailMessage()
    forwarded["From"] = "someone@example.net"
    forwarded["Subject"] = "the original"
    forwarded.set_content("original text")
    msg = EmailMessage()
    msg["From"] = "ada@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "Fwd: the original"
    msg.set_content("see below")
    msg.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream")
    msg.add_attachment(forwarded)
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="../../etc/data.csv")
    message = MessageIn.model_validate(fields_of(msg, ["bob@example.org"]))
    names = [(a.filename, a.content_type) for a in message.attachments]
    assert names == [
        ("part-2.bin", "application/octet-stream"),
        ("part-3.eml", "message/rfc822"),
        ("data.csv", "text/csv; charset=utf-8"),
    ]
    assert b"the original" in base64.b64decode(message.attachments[1].content)


def test_html_only_and_attachment_only_messages() -> None:
    msg = EmailMessage()
    msg["From"] = "ada@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "Hi"
    msg.set_content("<b>Hi</b>", subtype="html")
    fields = fields_of(msg, ["bob@example.org"])
    assert "text" not in fields and fields["html"] == "<b>Hi</b>"

    bare = EmailMessage()
    bare["From"] = "ada@example.com"
    bare["To"] = "bob@example.org"
    bare["Subject"] = "Hi"
    bare.set_content(PDF, maintype="application", subtype="pdf", filename="only.pdf")
    message = MessageIn.model_validate(fields_of(bare, ["bob@example.org"]))
    assert [a.filename for a in message.attachments] == ["only.pdf"]
    with pytest.raises(InvalidRequest, match="give text or html"):
        message.to_email()
