"""The HTTP edge's size limits: what a request may cost before it is refused.

Two layers, because the cheapest refusals happen before the app runs:

- `mailgate.serving.HeadLimitedHttpToolsProtocol` bounds the request head
  inside the server, while it is still being read (fixed, generous caps:
  431 past them).
- `RequestLimits`, an ASGI middleware, applies the configured limits
  (`ServerSettings`) once the head is parsed: path and query length (414),
  header bytes and count (431), and the body, counted as it is read (413).

Both answer in the API's error shape, `{"error": {"code", "message", "field"}}`,
and close the connection: what the client still sends is not read. They build
that answer themselves, as they run outside FastAPI's exception handlers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailgate.config import ServerSettings
from mailgate.serving import error_body as _error_body


class RequestLimits:
    """Refuse requests over the configured limits before the app reads them.

    The path, query string and headers are checked first (414, 431). A
    `Content-Length` over `max_request_bytes` is refused at once, unread (413);
    a chunked body is counted as the app reads it and cut off at the limit, so
    at most the limit plus uvicorn's read-ahead (it stops reading a connection
    whose app does not consume the body) is ever held. Every refusal says
    `connection: close`, so the server stops reading and the client stops
    sending.
    """

    def __init__(self, app: ASGIApp, *, settings: ServerSettings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_request_bytes
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_query_bytes = settings.max_query_bytes
        self.max_path_bytes = settings.max_path_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_head(scope)
        if refusal is not None:
            await _refuse(send, *refusal)
            return
        if self._declared_too_large(scope):
            await self._refuse_body(send)
            return
        await self._call_counting_body(scope, receive, send)

    def _check_head(self, scope: Scope) -> tuple[int, str, str, str] | None:
        """(status, code, message, field) for the first head limit broken, or None."""
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        if len(path) > self.max_path_bytes:
            message = f"the path is longer than {self.max_path_bytes} bytes"
            return 414, "uri_too_long", message, "path"
        if len(scope["query_string"]) > self.max_query_bytes:
            message = f"the query string is longer than {self.max_query_bytes} bytes"
            return 414, "uri_too_long", message, "query"
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.max_headers:
            message = f"the request has more than {self.max_headers} headers"
            return 431, "headers_too_large", message, "headers"
        # Counted as on the wire, `name: value\r\n`, so small headers are not free.
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_header_bytes:
            message = f"the request headers are larger than {self.max_header_bytes} bytes"
            return 431, "headers_too_large", message, "headers"
        return None

    def _declared_too_large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value) > self.max_body_bytes
                except ValueError:
                    return False  # the server refuses a malformed length itself
        return False

    async def _call_counting_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        refused = False
        answered = False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body went over the limit, whatever the app answers (FastAPI
            # turns a failed body read into a 400) is replaced by our 413.
            nonlocal answered
            if refused:
                if message["type"] == "http.response.start" and not answered:
                    answered = True
                    await self._refuse_body(send)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _TooLarge:
            pass
        if refused and not answered:
            await self._refuse_body(send)

    async def _refuse_body(self, send: Send) -> None:
        message = f"the request body is larger than {self.max_body_bytes} bytes"
        await _refuse(send, 413, "payload_too_large", message, "body")


async def _refuse(send: Send, status: int, code: str, message: str, field: str) -> None:
    body = _error_body(code, message, field)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """The body went over the limit; raised into the app from `receive`."""
