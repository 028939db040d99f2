"""Checking a webhook from mailgate in a receiver written in Python.

mailgate signs its webhooks the Standard Webhooks way: `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature`, which holds one
or more `v1,<base64>` values separated by spaces, each an HMAC-SHA256 over
`{id}.{timestamp}.{body}` keyed with the base64 part of the endpoint's
`whsec_` secret. Check the raw body, before any JSON parsing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from mailgate.client.errors import WebhookVerificationError

TOLERANCE_SECONDS = 300


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's payload if its signature is right and its timestamp within `tolerance`
    seconds of `now`; else `WebhookVerificationError`. Store `webhook-id` to drop repeats."""
    lower = {k.lower(): v for k, v in headers.items()}
    event_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not event_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now (a replay?)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not a whsec_ secret") from None
    signed = f"{event_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            break
    else:
        raise WebhookVerificationError("no signature matches")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return payload
