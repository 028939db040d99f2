"""What every fake provider shares: switchable behaviour and a record of what it took.

A fake is a small ASGI app that answers on the provider's real path with the
provider's real success and error formats (`reference/providers.md`). Tests,
drills and the simulated providers of `mailgate serve` steer it through
`behaviour` (in process) or `POST /_fake/behaviour` (over HTTP) and read
what it received from `received` / `GET /_fake/messages`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HANG_SECONDS = 3600.0


@dataclass
class Behaviour:
    """How the fake answers the next requests.

    `status`: answer every send with this error status (in the provider's
    own error format) instead of taking the message; `error`: the
    provider's own error code or name to answer with, where it has them
    (Postmark's ErrorCode, SES's exception name, Mandrill's `name`). `fail_count`: only the
    next N sends fail that way, then the fake recovers. `hang`: never answer
    (a timeout for the caller). `latency`: seconds to wait before answering.
    `retry_after`: the `Retry-After` header sent with a 429.
    """

    status: int | None = None
    error: str | None = None
    fail_count: int | None = None
    hang: bool = False
    latency: float = 0.0
    retry_after: str | None = None

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown behaviour {key!r}")
            setattr(self, key, value)


@dataclass(frozen=True, slots=True)
class Received:
    """One message the fake took."""

    provider_message_id: str
    mailgate_id: str | None
    fields: dict[str, Any]
    at: float = field(default_factory=time.time)


class FakeProvider:
    """State and control routes shared by the fakes; subclasses add the send route."""

    def __init__(self, *, keep: int | None = None) -> None:
        self.behaviour = Behaviour()
        self.received: deque[Received] = deque(maxlen=keep)
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.taken = 0
        self.request_times: list[float] = []
        """When each authorised request reached `misbehave` (taken or not; probes too)."""

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                *self.routes(),
                Route("/_fake/behaviour", self._set_behaviour, methods=["POST"]),
                Route("/_fake/messages", self._messages, methods=["GET", "DELETE"]),
                Route("/_fake/stats", self._stats, methods=["GET"]),
                Route("/_fake/counts", self._counts, methods=["GET"]),
            ]
        )

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.received.clear()
        self.counts.clear()
        self.requests = 0
        self.taken = 0
        self.request_times.clear()

    def record(
        self, provider_message_id: str, mailgate_id: str | None, fields: dict[str, Any]
    ) -> None:
        self.taken += 1
        self.received.append(Received(provider_message_id, mailgate_id, fields))
        if mailgate_id is not None:
            self.counts[mailgate_id] += 1

    async def misbehave(
        self, request: Request, error: Callable[[int], Response]
    ) -> Response | None:
        """Apply the current behaviour: wait, hang, or answer with an error; None = go on."""
        self.request_times.append(time.time())
        b = self.behaviour
        if b.latency:
            await asyncio.sleep(b.latency)
        if b.hang:
            # Never answer; stop waiting once the caller gives up and hangs up.
            deadline = time.monotonic() + HANG_SECONDS
            while time.monotonic() < deadline and not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=504)
        if b.status is None:
            return None
        if b.fail_count is not None:
            if b.fail_count <= 0:
                return None
            b.fail_count -= 1
        response = error(b.status)
        if b.status == 429 and b.retry_after is not None:
            response.headers["Retry-After"] = b.retry_after
        return response

    async def _set_behaviour(self, request: Request) -> Response:
        try:
            self.behaviour.update(await request.json())
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(asdict(self.behaviour))

    async def _stats(self, _: Request) -> Response:
        """Counts only: cheap to poll while thousands of messages arrive."""
        doubles = sum(1 for n in self.counts.values() if n > 1)
        return JSONResponse(
            {
                "requests": self.requests,
                "taken": self.taken,
                "unique": len(self.counts),
                "doubles": doubles,
            }
        )

    async def _counts(self, _: Request) -> Response:
        """How many times each mailgate id was taken (doubles show as 2 or more)."""
        return JSONResponse(dict(self.counts))

    async def _messages(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.reset()
            return Response(status_code=204)
        return JSONResponse(
            {
                "requests": self.requests,
                "messages": [
                    {
                        "provider_message_id": r.provider_message_id,
                        "mailgate_id": r.mailgate_id,
                        "fields": r.fields,
                        "at": r.at,
                    }
                    for r in self.received
                ],
            }
        )
