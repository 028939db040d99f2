"""SendGrid's v3 Mail Send served by mailgate, in process: the mapping and every answer.

The official SDK and django-anymail against a running gateway are in
test_sendgrid_sdk.py; these check each field and each refusal directly.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailgate.api import create_app
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.store import Store
from mailgate.store.tables import messages
from tests.helpers import tenant
from tests.ingest.conftest import stored_email

PATH = "/compat/sendgrid/v3/mail/send"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
SEND_AT = int((datetime.now(UTC) + timedelta(hours=3)).timestamp())


def mail(**fields: Any) -> dict[str, Any]:
    """A minimal valid v3 Mail Send body, with `fields` replacing the defaults."""
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.org"}]}],
        "from": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi Bob"}],
    }
    body.update(fields)
    return body


def rich() -> dict[str, Any]:
    """Every field mailgate maps, over two personalizations that override some of them."""
    return {
        "personalizations": [
            {
                "to": [{"email": "bob@example.org", "name": "Bob"}, {"email": "carol@example.org"}],
                "cc": [{"email": "dan@example.net", "name": "Dan"}],
                "bcc": [{"email": "eve@example.net"}],
                "subject": "Your report, Bob",
                "headers": {"X-Campaign": "q3-bob"},
                "custom_args": {"user": "17"},
            },
            {
                "to": [{"email": "frank@example.org"}],
                "from": {"email": "reports@example.com", "name": "Reports"},
                "custom_args": {"user": "18", "account": "acct-9"},
                "send_at": SEND_AT,
            },
        ],
        "from": {"email": "ada@example.com", "name": "Ada Lovelace"},
        "reply_to_list": [{"email": "replies@example.com", "name": "Replies"}],
        "subject": "Your report",
        "content": [
            {"type": "text/plain", "value": "Hello,\nthe report is attached."},
            {"type": "text/html", "value": "<p>Hello,</p><p>the report is attached.</p>"},
        ],
        "attachments": [
            {
                "content": base64.b64encode(PDF).decode(),
                "type": "application/pdf",
                "filename": "report.pdf",
                "disposition": "attachment",
            }
        ],
        "headers": {"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
        "categories": ["reports", "q3"],
        "custom_args": {"account": "acct-42", "source": "billing"},
        "ip_pool_name": "transactional",
        "mail_settings": {
            "sandbox_mode": {"enable": False},
            "bypass_list_management": {"enable": False},
        },
    }


async def stored(store: Store) -> int:
    query = select(func.count()).select_from(messages)
    return int(await store.db.read(lambda conn: conn.execute(query).scalar_one()))


def refused(metrics: Metrics, code: str) -> float:
    return (
        metrics.registry.get_sample_value("mailgate_requests_refused_total", {"code": code}) or 0.0
    )


def errors_of(response: httpx.Response) -> dict[str, Any]:
    """SendGrid's error shape, exactly: one error with message, field and help."""
    body = response.json()
    assert set(body) == {"errors"}
    [error] = body["errors"]
    assert set(error) == {"message", "field", "help"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.fixture
async def app_client(
    settings: Settings, store: Store, metrics: Metrics
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, with no key: each test sends the one it means."""
    app = create_app(settings, store, metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test"
    ) as client:
        yield client


async def key_of(store: Store, *scopes: str, **rules: Any) -> dict[str, str]:
    """`Authorization` for a new key with `scopes`, of a new tenant with `rules` if given."""
    tenant_id = "default"
    if rules:
        tenant_id = (await store.create_tenant(tenant(**rules))).id
    _, secret = await store.create_key("sendgrid-sdk", tenant_id=tenant_id, scopes=scopes)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def auth(store: Store) -> dict[str, str]:
    return await key_of(store, "send", "read")


async def test_every_field_maps_and_each_personalization_is_a_message(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    response = await app_client.post(PATH, json=rich(), headers=auth)
    assert response.status_code == 202
    assert response.content == b""
    first, second = response.headers["X-Mailgate-Message-Ids"].split(", ")
    assert response.headers["X-Message-Id"] == first

    bob = await stored_email(store, first)
    assert (bob.sender.email, bob.sender.name) == ("ada@example.com", "Ada Lovelace")
    assert [(a.email, a.name) for a in bob.to] == [
        ("bob@example.org", "Bob"),
        ("carol@example.org", None),
    ]
    assert [(a.email, a.name) for a in bob.cc] == [("dan@example.net", "Dan")]
    assert [a.email for a in bob.bcc] == ["eve@example.net"]
    assert [(a.email, a.name) for a in bob.reply_to] == [("replies@example.com", "Replies")]
    assert bob.subject == "Your report, Bob"
    assert bob.text == "Hello,\nthe report is attached."
    assert bob.html == "<p>Hello,</p><p>the report is attached.</p>"
    assert dict(bob.headers) == {
        "X-Campaign": "q3-bob",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    [attachment] = bob.attachments
    assert (attachment.filename, attachment.content_type) == ("report.pdf", "application/pdf")
    assert attachment.data() == PDF
    assert bob.tags == ("reports", "q3")
    assert dict(bob.metadata) == {"account": "acct-42", "source": "billing", "user": "17"}
    assert (await store.get_message(None, first)).status == "queued"

    frank = await stored_email(store, second)
    assert [a.email for a in frank.to] == ["frank@example.org"]
    assert (frank.sender.email, frank.sender.name) == ("reports@example.com", "Reports")
    assert frank.subject == "Your report"
    assert dict(frank.headers) == {
        "X-Campaign": "q3",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    assert dict(frank.metadata) == {"account": "acct-9", "source": "billing", "user": "18"}
    view = await store.get_message(None, second)
    assert view.status == "scheduled"
    assert view.send_at == datetime.fromtimestamp(SEND_AT, UTC)


async def test_a_single_reply_to_a_message_level_send_at_and_the_plain_path(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    body = mail(reply_to={"email": "help@example.com"}, send_at=SEND_AT)
    response = await app_client.post("/v3/mail/send", json=body, headers=auth)
    assert response.status_code == 202
    assert "X-Mailgate-Message-Ids" not in response.headers
    message_id = response.headers["X-Message-Id"]
    email = await stored_email(store, message_id)
    assert [a.email for a in email.reply_to] == ["help@example.com"]
    assert email.text == "Hi Bob" and email.html is None
    view = await store.get_message(None, message_id)
    assert view.send_at == datetime.fromtimestamp(SEND_AT, UTC)
    # SendGrid sends a send_at in the past at once; so does mailgate.
    past = await app_client.post(PATH, json=mail(send_at=1_600_000_000), headers=auth)
    assert (await store.get_message(None, past.headers["X-Message-Id"])).status == "queued"


async def test_no_idempotency_a_repeat_is_a_new_message(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    first = await app_client.post(PATH, json=mail(), headers=auth)
    again = await app_client.post(PATH, json=mail(), headers=auth | {"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.headers["X-Message-Id"] != again.headers["X-Message-Id"]
    assert await stored(store) == 2


async def test_sandbox_mode_checks_everything_and_stores_nothing(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    sandbox = {"mail_settings": {"sandbox_mode": {"enable": True}}}
    response = await app_client.post(PATH, json=rich() | sandbox, headers=auth)
    assert (response.status_code, response.content) == (200, b"")
    assert "X-Message-Id" not in response.headers
    bad = mail(personalizations=[{"to": [{"email": "nobody"}]}], **sandbox)
    refused = await app_client.post(PATH, json=bad, headers=auth)
    assert refused.status_code == 400
    assert errors_of(refused)["field"] == "personalizations.0.to.0"
    assert await stored(store) == 0


def _with(path: str, value: Any) -> dict[str, Any]:
    """`mail()` with the dotted `path` set to `value` (None deletes it)."""
    body = copy.deepcopy(mail())
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is None:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


REFUSED: list[tuple[str, dict[str, Any], str | None]] = [
    # missing required fields
    ("no personalizations", _with("personalizations", None), "personalizations"),
    ("empty personalizations", _with("personalizations", []), "personalizations"),
    ("no to", _with("personalizations.0", {"cc": [{"email": "c@example.org"}]}),
     "personalizations.0.to"),
    ("no subject", _with("subject", None), "subject"),
    ("no content", _with("content", None), "content"),
    ("empty content value", _with("content", [{"type": "text/plain", "value": ""}]),
     "content.0.value"),
    ("no attachment filename", _with("attachments", [{"content": "aGk="}]),
     "attachments.0.filename"),
    # bad values
    ("a bad address", _with("personalizations.0.to.0", {"email": "bob@"}),
     "personalizations.0.to.0"),
    ("a bad from", _with("from", {"email": "ada at example.com"}), "from"),
    ("an address as a string", _with("personalizations.0.to.0", "bob@example.org"),
     "personalizations.0.to.0"),
    ("a duplicate recipient", _with("personalizations.0.cc", [{"email": "BOB@example.org"}]),
     "personalizations.0.cc.0"),
    ("bad base64", _with("attachments", [{"content": "not base64!", "filename": "a.txt"}]),
     "attachments.0.content"),
    ("a bad attachment type", _with("attachments", [
        {"content": "aGk=", "filename": "a.txt", "type": "text"}]), "attachments.0.type"),
    ("a number in headers", _with("headers", {"X-Count": 3}), "headers.X-Count"),
    ("a number in custom_args", _with("custom_args", {"n": 3}), "custom_args.n"),
    ("a reserved header", _with("headers", {"Reply-To": "x@example.org"}), "headers.Reply-To"),
    ("a bad custom arg key", _with("personalizations.0.custom_args", {"a b": "c"}),
     "personalizations.0.custom_args.a b"),
    ("a send_at string", _with("send_at", "tomorrow"), "send_at"),
    ("a send_at too far ahead", _with("personalizations.0.send_at", 4_102_444_800),
     "personalizations.0.send_at"),
    ("too many categories", _with("categories", [f"c{i}" for i in range(11)]), "categories"),
    ("reply_to and reply_to_list", mail(
        reply_to={"email": "a@example.com"}, reply_to_list=[{"email": "b@example.com"}]),
     "reply_to_list"),
    ("html first, twice", _with("content", [
        {"type": "text/html", "value": "<p>a</p>"}, {"type": "text/html", "value": "<p>b</p>"}]),
     "content.1.type"),
    ("an unknown field", mail(colour="blue"), "colour"),
    ("an unknown personalization field", _with("personalizations.0.priority", "high"),
     "personalizations.0.priority"),
    # CR/LF header injection
    ("CRLF in subject", _with("subject", "Hi\r\nBcc: victim@example.org"), "subject"),
    ("CRLF in a personalization subject", _with("personalizations.0.subject", "Hi\nBcc: x@y.z"),
     "personalizations.0.subject"),
    ("CRLF in a header", _with("headers", {"X-Foo": "bar\r\nBcc: victim@example.org"}),
     "headers.X-Foo"),
    ("CRLF in a personalization header",
     _with("personalizations.0.headers", {"X-Foo": "a\nBcc: v@example.org"}),
     "personalizations.0.headers.X-Foo"),
    ("CRLF in a header name", _with("headers", {"X-Foo\r\nBcc": "v@example.org"}),
     "headers.X-Foo\r\nBcc"),
    ("CRLF in a name", _with("from", {"email": "ada@example.com", "name": "Ada\r\nBcc: v@x.org"}),
     "from"),
    ("CRLF in an address", _with("personalizations.0.to.0", {"email": "bob@example.org\r\n"}),
     "personalizations.0.to.0"),
    ("CRLF in a file name", _with("attachments", [
        {"content": "aGk=", "filename": "a\r\n.txt"}]), "attachments.0.filename"),
    # features mailgate does not have: refused by name, never dropped
    ("a template", mail(template_id="d-0123456789abcdef"), "template_id"),
    ("template data", _with("personalizations.0.dynamic_template_data", {"name": "Bob"}),
     "personalizations.0.dynamic_template_data"),
    ("substitutions", _with("personalizations.0.substitutions", {"-name-": "Bob"}),
     "personalizations.0.substitutions"),
    ("sections", mail(sections={"%s%": "x"}), "sections"),
    ("a batch id", mail(batch_id="MWQxZmIyODYt"), "batch_id"),
    ("an unsubscribe group", mail(asm={"group_id": 12}), "asm"),
    ("click tracking", mail(tracking_settings={"click_tracking": {"enable": False}}),
     "tracking_settings"),
    ("a footer", mail(mail_settings={"footer": {"enable": True, "text": "bye"}}),
     "mail_settings.footer"),
    ("bypassing suppressions", mail(mail_settings={"bypass_list_management": {"enable": True}}),
     "mail_settings.bypass_list_management"),
    ("an unknown mail setting", mail(mail_settings={"turbo": {"enable": False}}),
     "mail_settings.turbo"),
    ("an inline part", _with("attachments", [{
        "content": "aGk=", "filename": "logo.png", "disposition": "inline",
        "content_id": "logo"}]), "attachments.0.content_id"),
    ("an inline disposition", _with("attachments", [{
        "content": "aGk=", "filename": "logo.png", "disposition": "inline"}]),
     "attachments.0.disposition"),
    ("a calendar body", _with("content", [
        {"type": "text/plain", "value": "Hi"}, {"type": "text/calendar", "value": "BEGIN:VCAL"}]),
     "content.1.type"),
    ("an AMP body", _with("content", [
        {"type": "text/plain", "value": "Hi"}, {"type": "text/x-amp-html", "value": "<html>"}]),
     "content.1.type"),
]  # fmt: skip


@pytest.mark.refusal
@pytest.mark.parametrize(("body", "field"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
async def test_a_refused_request_names_sendgrids_field_and_stores_nothing(
    app_client: httpx.AsyncClient,
    store: Store,
    metrics: Metrics,
    auth: dict[str, str],
    body: dict[str, Any],
    field: str | None,
) -> None:
    many = copy.deepcopy(body)
    if isinstance(many.get("personalizations"), list) and many["personalizations"]:
        # A valid personalization first: nothing of the request is kept.
        many["personalizations"].insert(0, {"to": [{"email": "zed@example.org"}]})
        field = field.replace("personalizations.0", "personalizations.1") if field else field
    response = await app_client.post(PATH, json=many, headers=auth)
    assert response.status_code == 400, response.text
    error = errors_of(response)
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert await stored(store) == 0
    assert refused(metrics, "invalid_request") == 1


async def test_ip_pool_and_settings_left_off_are_accepted(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    off = {key: {"enable": False} for key in (
        "bypass_list_management", "bypass_spam_management", "bypass_bounce_management",
        "bypass_unsubscribe_management", "footer", "spam_check", "bcc", "sandbox_mode",
    )}  # fmt: skip
    body = mail(ip_pool_name="pool-a", mail_settings=off, tracking_settings={})
    response = await app_client.post(PATH, json=body, headers=auth)
    assert response.status_code == 202, response.text
    assert await stored(store) == 1


@pytest.mark.refusal
@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'["a list"]', b"", '{"subject": "caf\xe9"'.encode("latin-1")],
    ids=["malformed", "an array", "empty", "not utf-8"],
)
async def test_a_body_that_is_not_a_json_object(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str], raw: bytes
) -> None:
    headers = auth | {"Content-Type": "application/json"}
    response = await app_client.post(PATH, content=raw, headers=headers)
    assert response.status_code == 400
    assert errors_of(response)["field"] is None
    assert await stored(store) == 0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer SG.unknown-key", "Basic YXBpOmtleQ==", "token SG.x"],
)
async def test_an_unknown_or_missing_key_is_401(
    app_client: httpx.AsyncClient, store: Store, metrics: Metrics, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await app_client.post(PATH, json=mail(), headers=headers)
    assert response.status_code == 401
    assert errors_of(response)["field"] is None
    assert await stored(store) == 0
    assert refused(metrics, "unauthorized") == 1


async def test_a_key_without_send_is_403(app_client: httpx.AsyncClient, store: Store) -> None:
    reader = await key_of(store, "read")
    response = await app_client.post(PATH, json=mail(), headers=reader)
    assert response.status_code == 403
    assert "send" in errors_of(response)["message"]
    assert await stored(store) == 0


async def test_a_disabled_tenant_is_403(app_client: httpx.AsyncClient, store: Store) -> None:
    headers = await key_of(store, "send", enabled=False)
    response = await app_client.post(PATH, json=mail(), headers=headers)
    assert response.status_code == 403
    assert errors_of(response)["field"] is None
    assert await stored(store) == 0


async def test_a_sender_outside_the_tenants_domains_is_403_naming_the_from(
    app_client: httpx.AsyncClient, store: Store
) -> None:
    headers = await key_of(store, "send", sender_domains=("shop.example",))
    ok = mail(**{"from": {"email": "orders@shop.example"}})
    assert (await app_client.post(PATH, json=ok, headers=headers)).status_code == 202
    response = await app_client.post(PATH, json=mail(), headers=headers)
    assert response.status_code == 403
    assert errors_of(response)["field"] == "from"
    # A personalization's own from is checked too, and named where it was.
    other = mail(**{"from": {"email": "orders@shop.example"}})
    other["personalizations"].append(
        {"to": [{"email": "x@example.org"}], "from": {"email": "ada@example.com"}}
    )
    response = await app_client.post(PATH, json=other, headers=headers)
    assert response.status_code == 403
    assert errors_of(response)["field"] == "personalizations.1.from"
    assert await stored(store) == 1


async def test_the_daily_quota_is_429_with_retry_after_for_the_whole_request(
    app_client: httpx.AsyncClient, store: Store, metrics: Metrics
) -> None:
    headers = await key_of(store, "send", daily_quota=2)
    three = mail(personalizations=[{"to": [{"email": f"r{i}@example.org"}]} for i in range(3)])
    response = await app_client.post(PATH, json=three, headers=headers)
    assert response.status_code == 429
    assert errors_of(response)["field"] is None
    assert 0 < int(response.headers["Retry-After"]) <= 86_401
    assert await stored(store) == 0  # refused whole: not two of the three
    assert (await app_client.post(PATH, json=mail(), headers=headers)).status_code == 202
    assert (await app_client.post(PATH, json=mail(), headers=headers)).status_code == 202
    response = await app_client.post(PATH, json=mail(), headers=headers)
    assert response.status_code == 429
    assert "quota" in errors_of(response)["message"]
    assert await stored(store) == 2
    assert refused(metrics, "quota_exceeded") == 2


async def test_requests_racing_for_the_last_of_the_quota_are_each_taken_or_refused_whole(
    app_client: httpx.AsyncClient, store: Store
) -> None:
    headers = await key_of(store, "send", "read", daily_quota=3)
    two = mail(personalizations=[{"to": [{"email": f"r{i}@example.org"}]} for i in range(2)])
    answers = await asyncio.gather(
        app_client.post(PATH, json=two, headers=headers),
        app_client.post(PATH, json=two, headers=headers),
    )
    assert sorted(a.status_code for a in answers) == [202, 429]
    listed = await app_client.get("/v1/messages", headers=headers)
    [taken] = [a for a in answers if a.status_code == 202]
    # The refused request stored nothing (and took nothing of the quota).
    assert sorted(m["id"] for m in listed.json()["data"]) == sorted(
        taken.headers["X-Mailgate-Message-Ids"].split(", ")
    )
    assert (await store.used_today([listed.json()["data"][0]["tenant_id"]])).popitem()[1] == 2


async def test_the_rate_limit_is_429_in_sendgrids_shape(
    app_client: httpx.AsyncClient, store: Store, metrics: Metrics
) -> None:
    headers = await key_of(store, "send", rate_limit="1/min")
    assert (await app_client.post(PATH, json=mail(), headers=headers)).status_code == 202
    response = await app_client.post(PATH, json=mail(), headers=headers)
    assert response.status_code == 429
    assert errors_of(response)["field"] is None
    assert int(response.headers["Retry-After"]) >= 1
    assert await stored(store) == 1
    assert refused(metrics, "rate_limited") == 1


async def test_too_many_personalizations(
    app_client: httpx.AsyncClient, store: Store, auth: dict[str, str]
) -> None:
    body = mail(personalizations=[{"to": [{"email": f"r{i}@example.org"}]} for i in range(1001)])
    response = await app_client.post(PATH, json=body, headers=auth)
    assert response.status_code == 400
    assert errors_of(response)["field"] == "personalizations"
    assert await stored(store) == 0


async def test_a_store_that_is_gone_is_503_in_sendgrids_shape() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    settings = Settings(database={"url": f"postgresql://mailgate@127.0.0.1:{port}/mailgate"})
    store = Store(settings.database)
    app = create_app(settings, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test"
    ) as client:
        response = await client.post(
            PATH, json=mail(), headers={"Authorization": "Bearer mg_whatever"}
        )
    await store.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert errors_of(response)["field"] is None
