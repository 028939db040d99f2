"""Postmark's `/email` and `/email/batch` in front of the accept path, in process.

What a Postmark message becomes in mailgate (every field), the answers in
Postmark's exact shape, and each refusal in Postmark's status, `ErrorCode`
and wording, naming Postmark's field, with nothing stored.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailgate.api import create_app
from mailgate.compat.postmark import split_addresses
from mailgate.config import Settings
from mailgate.message import Address, Attachment
from mailgate.metrics import Metrics
from mailgate.store import Store
from mailgate.store.tables import messages

PDF = b"%PDF-1.4\n\x00\x01\x02\xff binary \r\n bytes\n%%EOF"
SUBMITTED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def postmark_message(**fields: Any) -> dict[str, Any]:
    """A valid Postmark message, with `fields` replacing defaults (None removes one)."""
    body: dict[str, Any] = {
        "From": "Ada Lovelace <ada@example.com>",
        "To": "bob@example.org",
        "Subject": "Hello",
        "TextBody": "Hi Bob",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


EVERY_FIELD: dict[str, Any] = {
    "From": '"Lovelace, Ada" <ada@example.com>',
    "To": "Bob Babbage <bob@example.org>, carol@example.org",
    "Cc": "=?utf-8?q?J=C3=BCrgen_Gro=C3=9F?= <juergen@example.org>",
    "Bcc": "dan@example.net",
    "ReplyTo": "Support <support@example.com>, help@example.com",
    "Subject": "Your report, Q3",
    "Tag": "reports",
    "HtmlBody": "<p>Hi <b>Bob</b></p>",
    "TextBody": "Hi Bob",
    "Headers": [
        {"Name": "X-Campaign", "Value": "q3"},
        {"Name": "List-Unsubscribe", "Value": "<mailto:unsubscribe@example.com>"},
    ],
    "TrackOpens": False,
    "TrackLinks": "None",
    "Attachments": [
        {
            "Name": "report.pdf",
            "Content": base64.b64encode(PDF).decode(),
            "ContentType": "application/pdf",
        },
        {"Name": "notes.txt", "Content": base64.b64encode(b"notes").decode()},
    ],
    "Metadata": {"customer": "c-17", "order": "o-42"},
    "MessageStream": "outbound",
}


async def stored(store: Store) -> int:
    query = select(func.count()).select_from(messages)
    return int(await store.db.read(lambda conn: conn.execute(query).scalar_one()))


@pytest.fixture
def app(settings: Settings, store: Store, metrics: Metrics) -> Any:
    return create_app(settings, store, metrics)


@pytest.fixture
async def admin(app: Any, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """mailgate's own API, with the default tenant's admin key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        yield client


@pytest.fixture
async def postmark(app: Any, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A Postmark client's view: the drop-in prefix, the key as the server token."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test/compat/postmark",
        headers={"X-Postmark-Server-Token": api_key, "Accept": "application/json"},
    ) as client:
        yield client


async def new_key(admin: httpx.AsyncClient, *scopes: str, **tenant: Any) -> str:
    """A key with `scopes`, of a new tenant made with `tenant` when given."""
    body: dict[str, Any] = {"name": "app", "scopes": list(scopes)}
    if tenant:
        made = await admin.post("/v1/tenants", json={"name": "shop", **tenant})
        assert made.status_code == 201, made.text
        body["tenant_id"] = made.json()["id"]
    created = await admin.post("/v1/keys", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


async def tenant_of(admin: httpx.AsyncClient, key: str) -> str:
    me = await admin.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
    return str(me.json()["tenant"]["id"])


def refusal(response: httpx.Response, status: int, code: int) -> str:
    """Postmark's error shape, exactly; its `Message`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"ErrorCode", "Message"}, body
    assert body["ErrorCode"] == code, body
    return str(body["Message"])


async def test_a_message_with_every_field_is_stored_with_every_field(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    response = await postmark.post("/email", json=EVERY_FIELD)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert list(answer) == ["To", "SubmittedAt", "MessageID", "ErrorCode", "Message"]
    assert answer["To"] == EVERY_FIELD["To"]
    assert SUBMITTED_AT.match(answer["SubmittedAt"]), answer
    assert (answer["ErrorCode"], answer["Message"]) == (0, "OK")
    shown = (await admin.get(f"/v1/messages/{answer['MessageID']}")).json()
    assert shown["status"] == "queued" and shown["created_at"] == answer["SubmittedAt"]
    assert shown["from"] == {"email": "ada@example.com", "name": "Lovelace, Ada"}
    assert shown["to"] == [
        {"email": "bob@example.org", "name": "Bob Babbage"},
        {"email": "carol@example.org"},
    ]
    assert shown["cc"] == [{"email": "juergen@example.org", "name": "Jürgen Groß"}]
    assert shown["bcc"] == [{"email": "dan@example.net"}]
    assert shown["reply_to"] == [
        {"email": "support@example.com", "name": "Support"},
        {"email": "help@example.com"},
    ]
    assert shown["subject"] == "Your report, Q3"
    assert shown["tags"] == ["reports"]
    assert shown["metadata"] == {"customer": "c-17", "order": "o-42", "message_stream": "outbound"}
    assert shown["send_at"] is None
    [claimed] = await store.claim("test", limit=10, lease_seconds=30)
    email = claimed.email
    assert (email.text, email.html) == ("Hi Bob", "<p>Hi <b>Bob</b></p>")
    assert email.headers == {
        "X-Campaign": "q3",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
    }
    assert email.attachments == (
        Attachment("report.pdf", "application/pdf", base64.b64encode(PDF).decode()),
        Attachment("notes.txt", "application/octet-stream", base64.b64encode(b"notes").decode()),
    )
    assert email.sender == Address("ada@example.com", "Lovelace, Ada")


async def test_the_routes_are_served_at_the_root_too(app: Any, api_key: str, store: Store) -> None:
    # postmarker joins "/email" to its root URL, which drops the root's path.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test"
    ) as client:
        headers = {"x-postmark-server-token": api_key}  # the header's name is case-insensitive
        one = await client.post("/email", json=postmark_message(), headers=headers)
        batch = await client.post("/email/batch", json=[postmark_message()], headers=headers)
    assert one.status_code == 200 and one.json()["ErrorCode"] == 0
    assert batch.status_code == 200 and batch.json()[0]["ErrorCode"] == 0
    assert await stored(store) == 2


async def test_nulls_are_absent_fields(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    # What postmarker sends for `emails.send(From=..., To=..., Subject=..., TextBody=...)`.
    body: dict[str, Any] = {
        "From": "ada@example.com", "To": "bob@example.org", "Cc": None, "Bcc": None,
        "Subject": "Hello", "Tag": None, "HtmlBody": None, "TextBody": "Hi", "Metadata": None,
        "ReplyTo": None, "Headers": [], "TrackOpens": None, "TrackLinks": "None",
        "Attachments": [], "MessageStream": None,
    }  # fmt: skip
    response = await postmark.post("/email", json=body)
    assert response.status_code == 200, response.text
    shown = (await admin.get(f"/v1/messages/{response.json()['MessageID']}")).json()
    assert shown["cc"] == [] and shown["tags"] == [] and shown["metadata"] == {}


@pytest.mark.parametrize(
    ("value", "split"),
    [
        ("a@x.org", ["a@x.org"]),
        (" a@x.org ,b@x.org, ", ["a@x.org", "b@x.org"]),
        ('"Doe, Jane" <j@x.org>, b@x.org', ['"Doe, Jane" <j@x.org>', "b@x.org"]),
        ('"say \\"hi, there\\"" <h@x.org>', ['"say \\"hi, there\\"" <h@x.org>']),
        ("Odd <a,b@x.org>", ["Odd <a,b@x.org>"]),
        ("", []),
    ],
)
def test_address_lists_split_at_top_level_commas(value: str, split: list[str]) -> None:
    assert split_addresses(value) == split


# (fields changed, HTTP status, ErrorCode, what the Message says)
REFUSED: list[tuple[dict[str, Any], int, int, str]] = [
    ({"To": "not-an-address"}, 422, 300, "Invalid 'To' address: 'not-an-address'."),
    ({"Cc": "c@example.org, Carol <carol@>"}, 422, 300, "Invalid 'Cc' address: 'Carol <carol@>'."),
    ({"Bcc": "nobody"}, 422, 300, "Invalid 'Bcc' address: 'nobody'."),
    ({"ReplyTo": "x@@example.org"}, 422, 300, "Invalid 'ReplyTo' address: 'x@@example.org'."),
    ({"From": "ada@"}, 422, 300, "Invalid 'From' address: 'ada@'."),
    ({"From": "a@example.com, b@example.com"}, 422, 300, "mailgate sends from one address"),
    ({"To": None}, 422, 300, "Zero recipients specified"),
    ({"To": " , "}, 422, 300, "Zero recipients specified"),
    ({"To": ", ".join(f"r{i}@example.org" for i in range(51))}, 422, 300, "'To': "),
    ({"TextBody": None}, 422, 300, "Provide either email TextBody or HtmlBody or both."),
    ({"TextBody": "", "HtmlBody": ""}, 422, 300, "Provide either email TextBody or HtmlBody"),
    ({"Subject": None}, 422, 300, "'Subject': this field is required"),
    # CR/LF: header injection, refused wherever it is tried.
    ({"Subject": "Hi\r\nBcc: eve@example.com"}, 422, 300, "'Subject': "),
    ({"To": "bob@example.org\r\nBcc: eve@example.com"}, 422, 300, "line breaks"),
    ({"From": "Ada\n <ada@example.com>"}, 422, 300, "Invalid 'From' address"),
    ({"Headers": [{"Name": "X-A", "Value": "1\r\nBcc: eve@example.com"}]}, 422, 300, "'Headers'"),
    ({"Headers": [{"Name": "X-A\r\nBcc", "Value": "1"}]}, 422, 300, "'Headers'"),
    ({"Tag": "a\nb"}, 422, 300, "'Tag': "),
    ({"Metadata": {"k": "a\r\nb"}}, 422, 300, "'Metadata'"),
    ({"Headers": [{"Name": "Message-ID", "Value": "<1@x>"}]}, 422, 300, "'Headers'"),
    (
        {"Headers": [{"Name": "X-A", "Value": "1"}, {"Name": "x-a", "Value": "2"}]},
        422,
        300,
        "'Headers[1]'",
    ),
    ({"Headers": {"X-A": "1"}}, 422, 403, "'Headers' must be an array"),
    ({"Tag": "t" * 129}, 422, 300, "'Tag': "),
    ({"Metadata": {"n": 1}}, 422, 300, "Invalid metadata content"),
    ({"Metadata": {"bad key": "v"}}, 422, 300, "'Metadata'"),
    ({"Metadata": ["x"]}, 422, 403, "'Metadata' must be an object"),
    (
        {"MessageStream": "broadcast", "Metadata": {"message_stream": "outbound"}},
        422,
        300,
        "'MessageStream'",
    ),
    ({"MessageStream": "x" * 1001}, 422, 300, "'MessageStream'"),
    ({"To": ["bob@example.org"]}, 422, 403, "'To' must be a string"),
    ({"Subject": 7}, 422, 403, "'Subject' must be a string"),
    # Features mailgate does not have: refused, naming the field.
    ({"TemplateId": 1234}, 422, 300, "'TemplateId': mailgate does not keep templates"),
    ({"TemplateAlias": "welcome"}, 422, 300, "'TemplateAlias'"),
    ({"TemplateModel": {"name": "Bob"}}, 422, 300, "'TemplateModel'"),
    ({"InlineCss": True}, 422, 300, "'InlineCss'"),
    ({"TrackOpens": True}, 422, 300, "'TrackOpens'"),
    ({"TrackOpens": "yes"}, 422, 403, "'TrackOpens' must be true or false"),
    ({"TrackLinks": "HtmlAndText"}, 422, 300, "'TrackLinks'"),
    ({"TrackLinks": "Always"}, 422, 300, "'TrackLinks' must be None"),
    ({"SendAt": "2030-01-01T00:00:00Z"}, 422, 300, "Unknown field 'SendAt'"),
    (
        {"Attachments": [{"Name": "logo.png", "Content": "aGk=", "ContentID": "cid:logo"}]},
        422,
        300,
        "'Attachments[0].ContentID'",
    ),
    (
        {"Attachments": [{"Name": "a.txt", "Content": "not base64!"}]},
        422,
        300,
        "'Attachments[0].Content': ",
    ),
    ({"Attachments": [{"Name": "", "Content": "aGk="}]}, 422, 300, "'Attachments[0]"),
    ({"Attachments": [{"Content": "aGk="}]}, 422, 300, "must have a Name and a Content"),
    (
        {"Attachments": [{"Name": "a.txt", "Content": "aGk=", "Disposition": "inline"}]},
        422,
        300,
        "Unknown field 'Attachments[0].Disposition'",
    ),
    ({"Attachments": "a.txt"}, 422, 403, "'Attachments' must be an array"),
    ({"Attachments": ["a.txt"]}, 422, 403, "'Attachments[0]' must be an object"),
    ({"Attachments": [{"Name": 1, "Content": "aGk="}]}, 422, 403, "'Attachments[0].Name'"),
    ({"Headers": ["X-A: 1"]}, 422, 403, "'Headers[0]' must be an object"),
    ({"Headers": [{"Name": "X-A", "Value": 1}]}, 422, 403, "'Headers[0]' must be an object"),
    ({"TextBody": "x" * (10 * 1024 * 1024 + 1)}, 413, 300, "'TextBody': "),
]


@pytest.mark.refusal
@pytest.mark.parametrize(
    ("fields", "status", "code", "says"),
    REFUSED,
    ids=[f"{next(iter(f))}-{c}-{i}" for i, (f, _, c, _) in enumerate(REFUSED)],
)
async def test_refusals_are_postmarks_and_store_nothing(
    postmark: httpx.AsyncClient,
    store: Store,
    metrics: Metrics,
    fields: dict[str, Any],
    status: int,
    code: int,
    says: str,
) -> None:
    response = await postmark.post("/email", json=postmark_message(**fields))
    message = refusal(response, status, code)
    assert says in message, message
    assert await stored(store) == 0
    refused = metrics.registry.get_sample_value(
        "mailgate_requests_refused_total", {"code": "invalid_request"}
    ) or metrics.registry.get_sample_value(
        "mailgate_requests_refused_total", {"code": "payload_too_large"}
    )
    assert refused == 1


@pytest.mark.parametrize(
    ("content", "code", "says"),
    [
        (b'{"From": "a@example.com",', 402, "Received invalid JSON input"),
        (b"\xff\xfe not utf-8", 402, "Received invalid JSON input"),
        (b"", 409, "JSON data required."),
        (b'["a"]', 403, "Incompatible JSON input: 'body' must be a JSON object"),
    ],
)
async def test_a_body_that_is_not_one_json_message(
    postmark: httpx.AsyncClient, store: Store, content: bytes, code: int, says: str
) -> None:
    headers = {"Content-Type": "application/json"}
    response = await postmark.post("/email", content=content, headers=headers)
    assert says in refusal(response, 422, code)
    assert await stored(store) == 0


async def test_keys(
    app: Any, postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    body = postmark_message()
    missing = await postmark.post("/email", json=body, headers={"X-Postmark-Server-Token": ""})
    assert "X-Postmark-Server-Token" in refusal(missing, 401, 10)
    unknown = await postmark.post(
        "/email", json=body, headers={"X-Postmark-Server-Token": "mg_not-a-key"}
    )
    refusal(unknown, 401, 10)
    # mailgate's own header is not where a Postmark client puts its key.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mailgate.test/compat/postmark"
    ) as bare:
        bearer = await bare.post(
            "/email", json=body, headers={"Authorization": admin.headers["Authorization"]}
        )
    refusal(bearer, 401, 10)
    reader = await new_key(admin, "read")
    no_send = await postmark.post("/email", json=body, headers={"X-Postmark-Server-Token": reader})
    assert "lacks the 'send' scope" in refusal(no_send, 401, 10)
    batch = await postmark.post(
        "/email/batch", json=[body], headers={"X-Postmark-Server-Token": reader}
    )
    refusal(batch, 401, 10)
    sender = await new_key(admin, "send")
    sent = await postmark.post("/email", json=body, headers={"X-Postmark-Server-Token": sender})
    assert sent.status_code == 200
    assert await stored(store) == 1


async def test_tenant_rules(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    key = await new_key(admin, "send", sender_domains=["shop.example"], daily_quota=2)
    token = {"X-Postmark-Server-Token": key}
    outside = await postmark.post("/email", json=postmark_message(), headers=token)
    message = refusal(outside, 422, 400)
    assert message.startswith(
        "The 'From' address you supplied (Ada Lovelace <ada@example.com>) is not a Sender "
        "Signature on your account"
    ), message
    assert "shop.example" in message
    inside = postmark_message(From="Shop <hello@shop.example>")
    assert (await postmark.post("/email", json=inside, headers=token)).status_code == 200
    batch = await postmark.post("/email/batch", json=[inside, inside], headers=token)
    assert batch.status_code == 200
    first, second = batch.json()
    assert first["ErrorCode"] == 0 and first["MessageID"].startswith("msg_")
    assert second["ErrorCode"] == 405 and "quota" in second["Message"]
    over = await postmark.post("/email", json=inside, headers=token)
    assert "Not allowed to send" in refusal(over, 422, 405)
    assert 1 <= int(over.headers["Retry-After"]) <= 86401
    assert await stored(store) == 2


async def test_the_rate_limit_is_postmarks_429(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    key = await new_key(admin, "send", rate_limit="1/h")
    token = {"X-Postmark-Server-Token": key}
    assert (
        await postmark.post("/email", json=postmark_message(), headers=token)
    ).status_code == 200
    limited = await postmark.post("/email", json=postmark_message(), headers=token)
    assert "Rate limit exceeded" in refusal(limited, 429, 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    batch = await postmark.post("/email/batch", json=[postmark_message()], headers=token)
    refusal(batch, 429, 429)
    assert await stored(store) == 1


async def test_a_disabled_tenant_may_not_send(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    key = await new_key(admin, "send", name="shop")
    tenant = await tenant_of(admin, key)
    assert (await admin.post(f"/v1/tenants/{tenant}/disable")).status_code == 200
    response = await postmark.post(
        "/email", json=postmark_message(), headers={"X-Postmark-Server-Token": key}
    )
    assert "This account may not send" in refusal(response, 422, 413)
    assert await stored(store) == 0


async def test_a_batch_answers_each_message_in_order(
    postmark: httpx.AsyncClient, admin: httpx.AsyncClient, store: Store
) -> None:
    batch = [
        postmark_message(To="bob@example.org", Tag="one"),
        postmark_message(To="Carol <carol@>"),
        "not a message",
        postmark_message(TemplateId=7),
        postmark_message(To="dan@example.net", Metadata={"n": "4"}),
    ]
    response = await postmark.post("/email/batch", json=batch)
    assert response.status_code == 200
    answers = response.json()
    assert [a["ErrorCode"] for a in answers] == [0, 300, 403, 300, 0]
    assert answers[0]["To"] == "bob@example.org" and answers[4]["To"] == "dan@example.net"
    assert set(answers[0]) == {"To", "SubmittedAt", "MessageID", "ErrorCode", "Message"}
    assert set(answers[1]) == {"ErrorCode", "Message"}
    assert answers[1]["Message"].startswith("Invalid 'To' address: 'Carol <carol@>'.")
    assert "'TemplateId'" in answers[3]["Message"]
    assert await stored(store) == 2
    fifth = (await admin.get(f"/v1/messages/{answers[4]['MessageID']}")).json()
    assert fifth["to"] == [{"email": "dan@example.net"}] and fifth["metadata"] == {"n": "4"}
    first = (await admin.get(f"/v1/messages/{answers[0]['MessageID']}")).json()
    assert first["tags"] == ["one"]


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (postmark_message(), 403, "must be a JSON array of messages"),
        ([postmark_message()] * 501, 410, "Too many batch messages: 501 (at most 500)."),
        ("[{", 402, "Received invalid JSON input"),
    ],
)
async def test_a_batch_refused_whole(
    postmark: httpx.AsyncClient, store: Store, body: Any, code: int, says: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = await postmark.post(
        "/email/batch", content=content, headers={"Content-Type": "application/json"}
    )
    assert says in refusal(response, 422, code)
    assert await stored(store) == 0


async def test_an_empty_batch_answers_an_empty_list(postmark: httpx.AsyncClient) -> None:
    response = await postmark.post("/email/batch", json=[])
    assert (response.status_code, response.json()) == (200, [])


async def test_a_store_that_cannot_commit_is_postmarks_503() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    settings = Settings(database={"url": f"postgresql://mailgate@127.0.0.1:{port}/mailgate"})
    store = Store(settings.database)
    app = create_app(settings, store, Metrics())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mailgate.test",
        headers={"X-Postmark-Server-Token": "mg_whatever"},
    ) as client:
        for path, body in (("/email", postmark_message()), ("/email/batch", [postmark_message()])):
            response = await client.post(f"/compat/postmark{path}", json=body)
            assert "nothing was accepted" in refusal(response, 503, 100)
            assert response.headers["Retry-After"] == "1"
    await store.close()


async def test_the_openapi_document_names_the_routes_and_their_scope(
    admin: httpx.AsyncClient,
) -> None:
    paths = (await admin.get("/openapi.json")).json()["paths"]
    for path in ("/compat/postmark/email", "/compat/postmark/email/batch"):
        assert paths[path]["post"]["x-mailgate-scope"] == "send"
    assert "/email" not in paths  # the root copies are not documented
