"""`verify_webhook` against signatures made by the Standard Webhooks reference library and
by mailgate's own sender."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from mailgate.client import WebhookVerificationError, verify_webhook
from mailgate.delivery.webhooks import sign

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
BODY = json.dumps({"type": "message.delivered", "data": {"message_id": "msg_1"}}).encode()


def signed(body: bytes = BODY, at: float | None = None, secret: str = SECRET) -> dict[str, str]:
    when = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    signature = standardwebhooks.Webhook(secret).sign("evt_1", when, body.decode())
    return {
        "Webhook-Id": "evt_1",
        "Webhook-Timestamp": str(int(when.timestamp())),
        "Webhook-Signature": signature,
    }


def test_a_good_signature_gives_the_payload() -> None:
    assert verify_webhook(SECRET, signed(), BODY) == json.loads(BODY)
    # What mailgate's worker sends verifies too.
    stamp = int(time.time())
    headers = {"webhook-id": "evt_2", "webhook-timestamp": str(stamp),
               "webhook-signature": sign(SECRET, "evt_2", stamp, BODY)}  # fmt: skip
    assert verify_webhook(SECRET, headers, BODY)["type"] == "message.delivered"
    # One of several signatures (a secret being rotated) is enough.
    other = signed(secret="whsec_" + base64.b64encode(b"x" * 24).decode())["Webhook-Signature"]
    both = {**signed(), "Webhook-Signature": other + " " + signed()["Webhook-Signature"]}
    assert verify_webhook(SECRET, both, BODY)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda h, b: (h, b + b" "), "no signature matches"),
        (lambda h, b: ({**h, "Webhook-Id": "evt_9"}, b), "no signature matches"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "Webhook-Id"}, b), "missing"),
        (lambda h, b: ({**h, "Webhook-Timestamp": "soon"}, b), "not a number"),
        (lambda h, b: (signed(at=time.time() - 600), b), "too far"),
        (lambda h, b: (signed(at=time.time() + 600), b), "too far"),
        (lambda h, b: ({**h, "Webhook-Signature": "v2," + h["Webhook-Signature"][3:]}, b),
         "no signature matches"),
    ],
)  # fmt: skip
def test_anything_else_is_refused(change: object, why: str) -> None:
    headers, body = change(signed(), BODY)  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError, match=why):
        verify_webhook(SECRET, headers, body)


def test_a_wrong_secret_or_a_body_that_is_not_an_object() -> None:
    with pytest.raises(WebhookVerificationError, match="not a whsec_ secret"):
        verify_webhook("whsec_***", signed(), BODY)
    with pytest.raises(WebhookVerificationError, match="not a JSON object"):
        verify_webhook(SECRET, signed(b"[1]"), b"[1]")
