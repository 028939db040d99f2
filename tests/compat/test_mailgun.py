"""Mailgun's Messages API in process: what each form field becomes, and Mailgun's answers.

Accepted means stored (read back from the store, every field); refused means
Mailgun's `{"message": ...}` with its status, the parameter named, and
nothing stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mailgate.api import create_app
from mailgate.compat.mailgun import addresses, form_name, mime_name
from mailgate.config import Settings
from mailgate.message import Email
from mailgate.metrics import Metrics
from mailgate.store import Store
from mailgate.store.tables import message_bodies, messages
from tests.helpers import tenant

DOMAIN = "mg.example.com"
SEND = f"/compat/mailgun/v3/{DOMAIN}/messages"
MIME = f"/compat/mailgun/v3/{DOMAIN}/messages.mime"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4


@pytest.fixture
async def mailgun(
    settings: Settings, store: Store, metrics: Metrics, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, with the key as Mailgun's SDKs send theirs (basic auth, user api)."""
    app = create_app(settings, store, metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        auth=("api", api_key),
    ) as client:
        yield client


async def stored(store: Store) -> dict[str, tuple[Email, str, datetime | None]]:
    """Every stored message: its email, status and send_at, by id."""
    query = select(
        messages.c.id,
        messages.c.envelope,
        message_bodies.c.body,
        messages.c.status,
        messages.c.send_at,
    ).outerjoin(message_bodies, message_bodies.c.message_id == messages.c.id)
    rows = await store.db.read(lambda conn: conn.execute(query).all())
    return {
        r.id: (Email.from_json({**r.envelope, **(r.body or {})}), r.status, r.send_at) for r in rows
    }


def queued_id(response: httpx.Response, domain: str = DOMAIN) -> str:
    """mailgate's id from Mailgun's answer, checking the answer is exactly Mailgun's."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"id", "message"} and body["message"] == "Queued. Thank you."
    local, at, answered_domain = body["id"].strip("<>").partition("@")
    assert body["id"] == f"<{local}@{domain}>" and at and answered_domain == domain
    assert local.startswith("msg_")
    return str(local)


def refusal(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"}
    return str(body["message"])


def form(**fields: Any) -> dict[str, Any]:
    """A valid message's form fields, with `fields` replacing (None: removing) defaults."""
    values: dict[str, Any] = {
        "from": "Ada Lovelace <ada@example.com>",
        "to": "bob@example.org",
        "subject": "Hello",
        "text": "Hi Bob",
    }
    values.update(fields)
    return {k: v for k, v in values.items() if v is not None}


async def test_every_form_field_is_stored(mailgun: httpx.AsyncClient, store: Store) -> None:
    data = {
        "from": "Ada Lovelace <ada@example.com>",
        "to": [
            '"Lovelace, Bob" <bob@example.org>, carol@example.org',
            "=?utf-8?q?J=C3=BCrgen?= <juergen@example.org>",
        ],
        "cc": "Dan <dan@example.net>",
        "bcc": "eve@example.net",
        "subject": "Grüße, Bob",
        "text": "Hi Bob\nline two",
        "html": "<p>Hi Bob</p>",
        "h:Reply-To": "Help <help@example.com>, ops@example.com",
        "h:X-Campaign": "q3",
        "h:List-Unsubscribe": "<mailto:unsubscribe@example.com>",
        "h:X-Mailgun-Variables": json.dumps({"order": "17", "items": [1, 2]}),
        "v:user": "42",
        "o:tag": ["welcome", "q3, 2024"],
        "o:dkim": "yes",
        "o:testmode": "no",
        "o:require-tls": "False",
        "o:sending-ip-pool": "pool-1",
        "o:skip-verification": "yes",
    }
    files = [
        ("attachment", ("report.pdf", PDF, "application/pdf")),
        ("attachment", ("notes.txt", "Grüße".encode(), "text/plain; charset=utf-8")),
    ]
    response = await mailgun.post(SEND, data=data, files=files)
    message_id = queued_id(response)
    email, status, send_at = (await stored(store))[message_id]
    assert (status, send_at) == ("queued", None)
    assert email.sender.formatted() == "Ada Lovelace <ada@example.com>"
    assert [(a.email, a.name) for a in email.to] == [
        ("bob@example.org", "Lovelace, Bob"),
        ("carol@example.org", None),
        ("juergen@example.org", "Jürgen"),
    ]
    assert [a.formatted() for a in email.cc] == ["Dan <dan@example.net>"]
    assert [a.email for a in email.bcc] == ["eve@example.net"]
    assert [a.formatted() for a in email.reply_to] == [
        "Help <help@example.com>",
        "ops@example.com",
    ]
    assert (email.subject, email.text) == ("Grüße, Bob", "Hi Bob\nline two")
    assert email.html == "<p>Hi Bob</p>"
    assert email.headers == {
        "X-Campaign": "q3",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    assert email.tags == ("welcome", "q3, 2024")
    assert email.metadata == {"order": "17", "items": "[1,2]", "user": "42"}
    attachments = [(a.filename, a.content_type, a.data()) for a in email.attachments]
    assert attachments == [
        ("report.pdf", "application/pdf", PDF),
        ("notes.txt", "text/plain; charset=utf-8", "Grüße".encode()),
    ]
    # The id in the answer is mailgate's: the status API knows it.
    view = await store.get_message("default", message_id)
    assert view.status == "queued"


async def test_a_url_encoded_form_with_a_delivery_time_is_scheduled(
    mailgun: httpx.AsyncClient, store: Store
) -> None:
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    response = await mailgun.post(
        SEND, data=form(**{"o:deliverytime": format_datetime(when), "html": "<b>Hi</b>"})
    )
    message_id = queued_id(response)
    email, status, send_at = (await stored(store))[message_id]
    assert status == "scheduled" and send_at is not None
    assert send_at.replace(tzinfo=UTC) == when
    assert (email.text, email.html) == ("Hi Bob", "<b>Hi</b>")


async def test_the_root_path_and_any_domain_without_sender_domains(
    mailgun: httpx.AsyncClient,
) -> None:
    # For SDKs that drop a base URL's path; the tenant has no sender_domains, so any
    # well-formed domain is taken, and the answer's id carries it (lower-cased).
    response = await mailgun.post("/v3/Mail.Example.NET/messages", data=form())
    queued_id(response, "mail.example.net")


def mime(**headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ada <ada@example.com>"
    msg["To"] = "Bob <bob@example.org>"
    msg["Cc"] = "carol@example.org"
    msg["Subject"] = "Report"
    msg["X-Mailgun-Tag"] = "reports"
    msg["X-Mailgun-Tag"] = "q3, 2024"
    msg["X-Mailgun-Variables"] = '{"order": "17"}'
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hi Bob")
    msg.add_alternative("<p>Hi Bob</p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


async def test_messages_mime(mailgun: httpx.AsyncClient, store: Store) -> None:
    when = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    raw = mime(X_Campaign="q3", X_Mailgun_Deliver_By=format_datetime(when))
    response = await mailgun.post(
        MIME,
        data={
            "to": ["bob@example.org", "carol@example.org, Dan <dan@example.net>"],
            "o:tag": "mime",
            "v:user": "42",
        },
        files={"message": ("message.mime", raw, "message/rfc822")},
    )
    message_id = queued_id(response)
    email, status, send_at = (await stored(store))[message_id]
    assert status == "scheduled" and send_at is not None and send_at.replace(tzinfo=UTC) == when
    assert email.sender.formatted() == "Ada <ada@example.com>"
    assert [a.formatted() for a in email.to] == ["Bob <bob@example.org>"]
    assert [a.email for a in email.cc] == ["carol@example.org"]
    assert [a.email for a in email.bcc] == ["dan@example.net"]  # envelope only
    assert (email.subject, email.text, email.html) == ("Report", "Hi Bob", "<p>Hi Bob</p>")
    assert email.headers == {"X-Campaign": "q3"}
    assert email.tags == ("reports", "q3, 2024", "mime")
    assert email.metadata == {"order": "17", "user": "42"}
    [attachment] = email.attachments
    assert (attachment.filename, attachment.data()) == ("report.pdf", PDF)


async def test_messages_mime_as_a_plain_field(mailgun: httpx.AsyncClient, store: Store) -> None:
    raw = mime().decode()
    response = await mailgun.post(
        MIME, data={"to": "bob@example.org, carol@example.org", "message": raw}
    )
    assert queued_id(response) in await stored(store)


BAD_FORMS: list[tuple[dict[str, Any], str]] = [
    (form(**{"from": None}), "from parameter is missing"),
    (form(to=None), "to parameter is missing"),
    (form(subject=None), "subject parameter is missing"),
    (form(text=None), "Need at least one of 'text' or 'html' parameters specified"),
    (form(to="nobody"), "'to' parameter is invalid"),
    (form(to="Bob <bob@example.org> x"), "'to' parameter is invalid"),
    (form(cc="a b@example.org"), "'cc' parameter is invalid"),
    (form(**{"from": "a@example.com, b@example.com"}), "'from' parameter must name exactly"),
    (form(subject="Hi\r\nBcc: eve@example.net"), "'subject' parameter is invalid"),
    (form(to="bob@example.org\r\nBcc: eve@example.net"), "'to' parameter is invalid"),
    (form(**{"h:X-A": "b\nBcc: eve@example.net"}), "'h:X-A' parameter is invalid"),
    (form(**{"h:Reply-To": "x\r\n@example.com"}), "'h:Reply-To' parameter is invalid"),
    (form(**{"h:Message-Id": "<a@b>"}), "'h:Message-Id' parameter is invalid"),
    (form(**{"v:bad key": "1"}), "'v:bad key' parameter is invalid"),
    (form(**{"v:k": "a\nb"}), "'v:k' parameter is invalid"),
    (form(**{"h:X-Mailgun-Variables": "[1]"}), "not a JSON object"),
    (form(**{"h:X-Mailgun-Variables": '{"k": "2"}', "v:k": "1"}), "'v:k' parameter is given"),
    (form(**{"o:tag": [f"t{i}" for i in range(11)]}), "'o:tag' parameter is invalid"),
    (form(**{"o:deliverytime": "tomorrow"}), "'o:deliverytime' parameter is not an RFC 2822"),
    (form(template="welcome"), "'template' parameter is not supported: mailgate has no stored"),
    (form(**{"t:version": "v2"}), "'t:version' parameter is not supported: mailgate has no"),
    (form(**{"recipient-variables": "{}"}), "'recipient-variables' parameter is not supported"),
    (form(**{"amp-html": "<b>x</b>"}), "'amp-html' parameter is not supported"),
    (form(**{"o:testmode": "yes"}), "mailgate has no test mode"),
    (form(**{"o:testmode": "maybe"}), "give yes or no"),
    (form(**{"o:dkim": "no"}), "'o:dkim' parameter='no' is not supported"),
    (form(**{"o:require-tls": "yes"}), "cannot require TLS"),
    (form(**{"o:tracking-clicks": "no"}), "does not set tracking per message"),
    (form(**{"o:tracking": "yes"}), "'o:tracking' parameter is not supported"),
    (form(**{"o:deliverytime-optimize-period": "24h"}), "no send-time optimization"),
    (form(**{"o:whatever": "1"}), "'o:whatever' parameter is not supported: mailgate has no"),
    (form(**{"h:X-Mailgun-Track": "no"}), "'h:X-Mailgun-Track' parameter is not supported"),
    (form(**{"h:X-Mailgun-Foo": "1"}), "a Mailgun control header mailgate does not have"),
    (form(sender_domain="x"), "'sender_domain' parameter is not supported by mailgate"),
    (form(subject=["a", "b"]), "'subject' parameter is given more than once"),
    (form(attachment="not a file"), "'attachment' parameter must be a file part"),
]


@pytest.mark.refusal
@pytest.mark.parametrize(("data", "message"), BAD_FORMS)
async def test_bad_forms_are_refused_naming_the_parameter(
    mailgun: httpx.AsyncClient, store: Store, metrics: Metrics, data: dict[str, Any], message: str
) -> None:
    response = await mailgun.post(SEND, data=data)
    assert message in refusal(response, 400)
    assert await stored(store) == {}
    assert (
        metrics.registry.get_sample_value(
            "mailgate_requests_refused_total", {"code": "invalid_request"}
        )
        == 1
    )


@pytest.mark.refusal
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": form()}, "the body must be multipart/form-data or"),
        ({"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}},
         "the form could not be read"),
        ({"data": form(), "files": {"text": ("a.txt", b"x", "text/plain")}},
         "'text' parameter must be a plain field, not a file"),
        ({"data": form(), "files": {"attachment": ("", b"x", "text/plain")}},
         "'attachment' parameter"),
        ({"data": form(), "headers": {"Content-Encoding": "gzip"}}, "compressed body"),
    ],
)  # fmt: skip
async def test_bodies_that_are_not_mailgun_forms(
    mailgun: httpx.AsyncClient, store: Store, kwargs: dict[str, Any], message: str
) -> None:
    response = await mailgun.post(SEND, **kwargs)
    assert message in refusal(response, 400)
    assert await stored(store) == {}


@pytest.mark.refusal
@pytest.mark.parametrize(
    ("data", "files", "message"),
    [
        ({"message": "x"}, {}, "to parameter is missing"),
        ({"to": "bob@example.org"}, {}, "message parameter is missing"),
        ({"to": "bob@example.org", "message": "x", "subject": "s"}, {}, "belongs in the message"),
        ({"to": "bob@example.org"}, {"attachment": ("a", b"x", "text/plain")}, "messages.mime"),
        # To and Cc of the message must be recipients: mailgate delivers to every one.
        ({"to": "bob@example.org"}, {"message": ("m", mime(), "message/rfc822")},
         "carol@example.org is not one of the RCPT TO recipients"),
        ({"to": "bob@example.org, carol@example.org"},
         {"message": ("m", mime(X_Mailgun_Track_Clicks="yes"), "message/rfc822")},
         "'message's X-Mailgun-Track-Clicks header' parameter is not supported"),
        ({"to": "bob@example.org, carol@example.org"},
         {"message": ("m", mime(X_A="1").replace(b"Subject: Report", b"X-B: 2"), "text/plain")},
         "'message's Subject header' parameter is invalid"),
        ({"to": "nobody, bob@example.org, carol@example.org"},
         {"message": ("m", mime(), "message/rfc822")}, "'to' parameter is invalid"),
    ],
)  # fmt: skip
async def test_bad_mime_requests(
    mailgun: httpx.AsyncClient,
    store: Store,
    data: dict[str, Any],
    files: dict[str, Any],
    message: str,
) -> None:
    response = await mailgun.post(MIME, data=data, files=files or None)
    assert message in refusal(response, 400)
    assert await stored(store) == {}


async def test_keys_are_checked_as_mailgun_checks_them(
    mailgun: httpx.AsyncClient, store: Store, api_key: str
) -> None:
    for auth in [("api", "mg_unknown"), ("mailgun", api_key), ("api", "")]:
        response = await mailgun.post(SEND, data=form(), auth=auth)
        assert refusal(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    bearer = {"Authorization": f"Bearer {api_key}"}
    no_basic = await mailgun.post(SEND, data=form(), headers=bearer, auth=None)  # type: ignore[arg-type]
    assert "basic auth, user 'api'" in refusal(no_basic, 401)
    _, reader = await store.create_key("reader", tenant_id="default", scopes=["read"])
    forbidden = await mailgun.post(SEND, data=form(), auth=("api", reader))
    assert "lacks the 'send' scope" in refusal(forbidden, 403)
    assert await stored(store) == {}


async def test_the_domain_and_sender_follow_the_tenants_sender_domains(
    mailgun: httpx.AsyncClient, store: Store
) -> None:
    shop = await store.create_tenant(tenant(sender_domains=("example.com", DOMAIN)))
    _, key = await store.create_key("shop", tenant_id=shop.id)
    auth = ("api", key)
    unknown = await mailgun.post("/v3/other.example.org/messages", data=form(), auth=auth)
    assert refusal(unknown, 404) == "Domain not found: other.example.org"
    malformed = await mailgun.post("/v3/not_a domain/messages", data=form(), auth=auth)
    assert refusal(malformed, 404).startswith("Domain not found")
    outside = await mailgun.post(SEND, data=form(**{"from": "x@other.org"}), auth=auth)
    assert "'from' parameter is refused: x@other.org is not in" in refusal(outside, 403)
    assert await stored(store) == {}
    queued_id(await mailgun.post(SEND, data=form(), auth=auth))


async def test_the_daily_quota_answers_429_in_mailguns_shape(
    mailgun: httpx.AsyncClient, store: Store
) -> None:
    shop = await store.create_tenant(tenant(daily_quota=1))
    _, key = await store.create_key("shop", tenant_id=shop.id)
    queued_id(await mailgun.post(SEND, data=form(), auth=("api", key)))
    over = await mailgun.post(SEND, data=form(), auth=("api", key))
    assert "daily quota of 1 messages is used up" in refusal(over, 429)
    assert 1 <= int(over.headers["Retry-After"]) <= 86400
    assert len(await stored(store)) == 1


async def test_the_rate_limit_answers_429_in_mailguns_shape(
    mailgun: httpx.AsyncClient, store: Store
) -> None:
    shop = await store.create_tenant(tenant(rate_limit="1/h"))
    _, key = await store.create_key("shop", tenant_id=shop.id)
    queued_id(await mailgun.post(SEND, data=form(), auth=("api", key)))
    limited = await mailgun.post(SEND, data=form(), auth=("api", key))
    assert "over the tenant's rate limit of 1/h" in refusal(limited, 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600


async def test_attachments_over_25_mb_are_413(mailgun: httpx.AsyncClient, store: Store) -> None:
    files = {"attachment": ("big.bin", b"\0" * (25 * 1024 * 1024 + 1), "application/octet-stream")}
    response = await mailgun.post(SEND, data=form(), files=files)
    assert "'attachment' parameter is refused: attachments are" in refusal(response, 413)
    assert await stored(store) == {}


async def test_the_routes_are_documented_with_their_scope(mailgun: httpx.AsyncClient) -> None:
    paths = (await mailgun.get("/openapi.json")).json()["paths"]
    for path in (SEND, MIME):
        operation = paths[path.replace(DOMAIN, "{domain}")]["post"]
        assert operation["x-mailgate-scope"] == "send"
        assert "multipart/form-data" in operation["requestBody"]["content"]


def test_address_lists_are_split_without_losing_or_adding_anyone() -> None:
    assert addresses(['"A, B" <a@x.org>,c@x.org', " ", "d@x.org,"], "to") == [
        '"A, B" <a@x.org>',
        "c@x.org",
        "d@x.org",
    ]
    # Left whole for MessageIn to refuse, never cut down or split into more recipients.
    assert addresses(["a b@x.org"], "to") == ["a b@x.org"]
    assert addresses(["a@x.org\r\nBcc: e@y.org"], "to") == ["a@x.org\r\nBcc: e@y.org"]
    assert addresses(["=?utf-8?q?Z=C3=B6e?= <z@x.org>"], "to") == [
        {"email": "z@x.org", "name": "Zöe"}
    ]


@pytest.mark.parametrize(
    ("field", "form_param", "mime_param"),
    [
        ("to[2]", "to", "message's To header"),
        ("bcc[0]", "bcc", "to"),
        ("reply_to[0]", "h:Reply-To", "message's Reply-To header"),
        ("headers.X-A", "h:X-A", "message's X-A header"),
        ("metadata.k", "v:k", "v:k"),
        ("tags", "o:tag", "o:tag"),
        ("send_at", "o:deliverytime", "o:deliverytime"),
        ("attachments[1].content", "attachment", "message's attachment part"),
        ("html", "html", "message's html body"),
    ],
)
def test_mailgate_fields_are_named_as_mailgun_parameters(
    field: str, form_param: str, mime_param: str
) -> None:
    assert (form_name(field), mime_name(field)) == (form_param, mime_param)


async def test_an_inline_part_is_refused_not_turned_into_an_attachment(
    mailgun: httpx.AsyncClient, store: Store
) -> None:
    data = {"from": "ada@example.com", "to": "bob@example.org", "subject": "s", "html": "<b>x</b>"}
    files = [("inline", ("logo.png", PNG, "image/png"))]
    response = await mailgun.post(SEND, data=data, files=files)
    assert response.status_code == 400
    assert response.json() == {
        "message": "'inline' parameter is not supported: mailgate has no inline parts "
        "(Content-ID); send the file as an attachment or link the image"
    }
    assert await stored(store) == {}
