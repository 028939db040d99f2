"""Send one message through mailgate and wait until a provider has it.

    MAILGATE_URL=http://127.0.0.1:8025 MAILGATE_KEY=mg_... python docs/examples/send_message.py

Uses httpx; any HTTP client works. The Idempotency-Key makes the POST safe
to repeat after a timeout: mailgate answers with the original message.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import httpx


def main() -> int:
    client = httpx.Client(
        base_url=os.environ.get("MAILGATE_URL", "http://127.0.0.1:8025"),
        headers={"Authorization": f"Bearer {os.environ['MAILGATE_KEY']}"},
        timeout=10,
    )
    response = client.post(
        "/v1/messages",
        headers={"Idempotency-Key": str(uuid.uuid4())},
        json={
            "from": "Ada Lovelace <ada@example.com>",
            "to": ["bob@example.org"],
            "subject": "Your receipt",
            "text": "Thanks for your order.",
            "html": "<p>Thanks for your order.</p>",
            "tags": ["receipt"],
            "metadata": {"order_id": "1042"},
        },
    )
    response.raise_for_status()
    message = response.json()
    print(f"accepted {message['id']} ({message['status']})")

    deadline = time.monotonic() + 30
    while message["status"] in ("queued", "scheduled", "sending"):
        if time.monotonic() > deadline:
            print("still not sent after 30 s; see GET /v1/messages/" + message["id"])
            return 1
        time.sleep(0.2)
        message = client.get(f"/v1/messages/{message['id']}").json()
    print(f"{message['status']} via {message['provider']} as {message['provider_message_id']}")
    for event in message["events"]:
        print(f"  {event['at']}  {event['type']}")
    return 0 if message["status"] in ("sent", "delivered") else 1


if __name__ == "__main__":
    sys.exit(main())
