"""What `MessageIn` accepts and refuses, and how it names the field."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from mailgate.api.addresses import parse_address
from mailgate.api.errors import validation_error
from mailgate.api.schemas import MessageIn, ValidBatchIn
from mailgate.errors import InvalidRequest, PayloadTooLarge
from mailgate.message import Address
from tests.helpers import message


def refusal(body: dict[str, Any]) -> tuple[str | None, str]:
    """(field, message) of the first problem with `body`."""
    try:
        MessageIn.model_validate(body).to_email()
    except ValidationError as exc:
        error = validation_error(exc)
        return error.field, error.message
    except (InvalidRequest, PayloadTooLarge) as exc:
        return exc.field, exc.message
    raise AssertionError("accepted")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ada@example.com", Address("ada@example.com")),
        ("Ada Lovelace <ada@example.com>", Address("ada@example.com", "Ada Lovelace")),
        ('"Lovelace, Ada" <ada@example.com>', Address("ada@example.com", "Lovelace, Ada")),
        ("Jöhn Dœ <john@example.com>", Address("john@example.com", "Jöhn Dœ")),
        ("<ada@example.com>", Address("ada@example.com")),
        ("  ada@EXAMPLE.com ", Address("ada@example.com")),
        ("用户@例子.广告", Address("用户@例子.广告")),
    ],
)
def test_addresses_parse(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


def test_a_full_message_maps_every_field() -> None:
    attachment = base64.b64encode(b"%PDF-1.4").decode()
    model = MessageIn.model_validate(
        message(
            to="bob@example.org",
            cc=[{"email": "carol@example.org", "name": "Carol"}],
            bcc=["dave@example.org"],
            reply_to="help@example.com",
            html="<p>Hi</p>",
            headers={"X-Campaign": "autumn", "List-Unsubscribe": "<mailto:u@example.com>"},
            attachments=[
                {"filename": "a.pdf", "content_type": "application/pdf", "content": attachment}
            ],
            tags=["welcome", "welcome", "onboarding"],
            metadata={"user_id": "42"},
        )
    )
    email = model.to_email()
    assert email.sender == Address("ada@example.com", "Ada Lovelace")
    assert email.to == (Address("bob@example.org"),)
    assert email.cc == (Address("carol@example.org", "Carol"),)
    assert email.reply_to == (Address("help@example.com"),)
    assert email.attachments[0].data() == b"%PDF-1.4"
    assert email.tags == ("welcome", "onboarding")
    assert email.metadata == {"user_id": "42"}


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"to": None}, "to", "required"),
        ({"to": []}, "to", "at least 1"),
        ({"subject": None}, "subject", "required"),
        ({"text": None}, "text", "text or html"),
        ({"from": "not an address"}, "from", "invalid address"),
        ({"from": "a@localhost"}, "from", "invalid address"),
        ({"to": ["ok@example.org", "bad@"]}, "to[1]", "invalid address"),
        ({"cc": {"email": "x@example.org", "nmae": "typo"}}, "cc[0]", "unknown address key"),
        ({"to": [f"u{i}@example.org" for i in range(51)]}, "to", "at most 50"),
        ({"bcc": [f"u{i}@example.org" for i in range(51)]}, "bcc", "at most 50"),
        ({"txt": "typo"}, "txt", "unknown field"),
        ({"subject": 42}, "subject", "valid string"),
        ({"tags": ["x"] * 11}, "tags", "at most 10"),
        ({"metadata": {"user id": "1"}}, "metadata.user id", "metadata key"),
        ({"metadata": {"mailgate_id": "1"}}, "metadata.mailgate_id", "mailgate's own"),
        ({"metadata": {"n": 1}}, "metadata.n", "valid string"),
        ({"metadata": {f"k{i}": "v" * 999 for i in range(9)}}, "metadata", "8000"),
        ({"headers": {"Bad Header": "x"}}, "headers.Bad Header", "not a valid header"),
        ({"headers": {"Subject": "x"}}, "headers.Subject", "message's own fields"),
        ({"headers": {"X-Mailgate-Id": "x"}}, "headers.X-Mailgate-Id", "mailgate's own"),
        ({"headers": {"X-Long": "x" * 999}}, "headers.X-Long", "at most 998"),
        (
            {"attachments": [{"filename": "a", "content": "!!!"}]},
            "attachments[0].content",
            "base64",
        ),
        ({"attachments": [{"content": "aGk="}]}, "attachments[0].filename", "required"),
        (
            {"attachments": [{"filename": "a", "content_type": "nonsense", "content": "aGk="}]},
            "attachments[0].content_type",
            "pattern",
        ),
    ],
)
def test_bad_messages_name_the_field(fields: dict[str, Any], field: str, says: str) -> None:
    got_field, got_message = refusal(message(**fields))
    assert got_field == field
    assert says in got_message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.org"}, "subject"),
        ({"subject": "Hi\nthere"}, "subject"),
        ({"from": "Ada <ada@example.com>\r\nBcc: victim@example.org"}, "from"),
        ({"from": "Ada\r\nBcc: v@example.org <ada@example.com>"}, "from"),
        ({"from": {"email": "ada@example.com", "name": "Ada\nBcc: v@example.org"}}, "from"),
        ({"to": ["bob@example.org\r\nBcc: v@example.org"]}, "to[0]"),
        ({"reply_to": "r@example.org\n"}, "reply_to[0]"),
        ({"headers": {"X-Note": "a\r\nBcc: v@example.org"}}, "headers.X-Note"),
        ({"tags": ["ok", "bad\r\ntag"]}, "tags[1]"),
        ({"metadata": {"k": "v\r\nX: y"}}, "metadata.k"),
        (
            {"attachments": [{"filename": "a\r\n.txt", "content": "aGk="}]},
            "attachments[0].filename",
        ),
    ],
)
def test_header_injection_is_refused(fields: dict[str, Any], field: str) -> None:
    got_field, got_message = refusal(message(**fields))
    assert got_field == field
    assert "line breaks" in got_message or "invalid" in got_message


def test_sizes() -> None:
    big = "x" * (10 * 1024 * 1024 + 1)
    assert refusal(message(text=big)) == (
        "text",
        f"text and html are {len(big)} bytes; the limit is 10 MB",
    )
    assert refusal(message(text="small", html=big))[0] == "html"
    ten_mb = base64.b64encode(b"\0" * (10 * 1024 * 1024)).decode()
    files = [{"filename": f"f{i}", "content": ten_mb} for i in range(3)]
    assert refusal(message(attachments=files))[0] == "attachments"
    MessageIn.model_validate(message(attachments=files[:2])).to_email()  # 20 MB is fine


def test_schedule() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert MessageIn.model_validate(message()).schedule(now) is None
    later = MessageIn.model_validate(message(send_at="2026-01-02T09:00:00+02:00"))
    assert later.schedule(now) == datetime(2026, 1, 2, 7, tzinfo=UTC)
    past = MessageIn.model_validate(message(send_at="2025-12-31T00:00:00Z"))
    assert past.schedule(now) is None  # due already: send now
    with pytest.raises(InvalidRequest, match="time zone"):
        MessageIn.model_validate(message(send_at="2026-01-02T09:00:00")).schedule(now)
    with pytest.raises(InvalidRequest, match="366 days"):
        far = (now + timedelta(days=400)).isoformat()
        MessageIn.model_validate(message(send_at=far)).schedule(now)


def test_a_valid_batch_validated_at_once_is_what_each_validated_alone_makes() -> None:
    """The batch route validates an all-valid batch in one pass (`ValidBatchIn`); every
    message must come out as `MessageIn` makes it from the parsed item."""
    attachment = {"filename": "a.txt", "content": base64.b64encode(b"hi").decode()}
    items = [
        message(),
        message(**{"from": "Ann <ann@example.com>"}, cc=["c@example.net"], bcc=["b@example.net"]),
        message(reply_to=["r@example.com"], html="<p>hi</p>", text=None),
        message(headers={"X-Campaign": "7"}, metadata={"order": "42"}, tags=["a", "b", "a"]),
        message(attachments=[attachment], send_at="2030-01-02T03:04:05+01:00"),
        message(to=[{"email": "x@example.org", "name": "X, Y"}], provider="sendgrid"),
    ]
    whole = ValidBatchIn.model_validate_json(json.dumps({"messages": items})).messages
    assert whole == [MessageIn.model_validate(item) for item in items]


def test_a_batch_with_one_bad_message_is_not_valid_at_once() -> None:
    items = [message(), message(to=["not an address"])]
    with pytest.raises(ValidationError):
        ValidBatchIn.model_validate_json(json.dumps({"messages": items}))
