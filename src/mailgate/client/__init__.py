"""A Python client for mailgate's HTTP API: `Client` (blocking) and `AsyncClient` (asyncio).

    from mailgate.client import Client

    with Client("http://127.0.0.1:8025", key) as mg:
        sent = mg.send(from_="Shop <shop@example.com>", to="ada@example.org",
                       subject="Receipt", text="Thank you.")
        mg.wait(sent["id"], until="delivered")

Importing it loads none of the server (no FastAPI, SQLAlchemy or store):
only httpx, aiohttp and the standard library.
"""

from mailgate.client.aio import AsyncClient
from mailgate.client.core import RetryPolicy
from mailgate.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
)
from mailgate.client.sync import Client
from mailgate.client.webhooks import verify_webhook

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WebhookVerificationError",
    "verify_webhook",
]
