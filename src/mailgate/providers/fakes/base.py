"""What every fake provider shares: switchable behaviour and a record of what it took.

A fake is a small ASGI app that answers on the provider's real path with the
provider's real success and error formats (`reference/providers.md`). Tests,
drills and the simulated providers of `mailgate serve` steer it through
`behaviour` (in process) or `POST /_fake/behaviour` (over HTTP) and read
what it received from `received` / `GET /_fake/messages`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HANG_SECONDS = 3600.0
EVENT_DELAY_SECONDS = 0.05
"""How long after taking a message a fake posts its events (a real provider: seconds)."""

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the simulated mailbox of one recipient does with one message.

    `kind`: `delivered`, `deferred`, `bounced` (`bounce`: "hard" or "soft"),
    `complained`, `opened`, `clicked` or `unsubscribed`.
    """

    kind: str
    recipient: str
    received: Received
    bounce: str | None = None


def outcomes(recipient: str, received: Received) -> list[Outcome]:
    """The events a recipient's address asks for, by its local part.

    `bounce@` bounces (hard), `softbounce@` bounces (soft) after a deferral,
    `complaint@` is delivered then marked as spam, `unsubscribe@` is
    delivered then unsubscribes, `defer@` is deferred then delivered,
    `open@` is delivered, opened and clicked; any other is delivered.
    A `+tag` after the keyword is ignored (`bounce+1@example.com`).
    """
    local = recipient.split("@", 1)[0].lower().split("+", 1)[0]

    def made(*kinds: str, bounce: str | None = None) -> list[Outcome]:
        return [Outcome(k, recipient, received, bounce if k == "bounced" else None) for k in kinds]

    match local:
        case "bounce":
            return made("bounced", bounce="hard")
        case "softbounce":
            return made("deferred", "bounced", bounce="soft")
        case "complaint":
            return made("delivered", "complained")
        case "unsubscribe":
            return made("delivered", "unsubscribed")
        case "defer":
            return made("deferred", "delivered")
        case "open":
            return made("delivered", "opened", "clicked")
        case _:
            return made("delivered")


@dataclass(frozen=True, slots=True)
class SignedPost:
    """One event webhook request a fake makes, as the real provider would sign it."""

    headers: dict[str, str]
    body: bytes


class FakeProvider:
    """State and control routes shared by the fakes; subclasses add the send route.

    A fake whose `webhook_url` is set posts each taken message's events
    there, signed the provider's real way (`signed_posts`, per fake), the
    way the simulated providers of `mailgate serve` close a message's life.
    """

    def __init__(self, *, keep: int | None = None) -> None:
        self.webhook_url: str | None = None
        self.events_posted = 0
        self.event_failures = 0
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
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
        self,
        provider_message_id: str,
        mailgate_id: str | None,
        fields: dict[str, Any],
        recipients: Sequence[str] = (),
    ) -> None:
        self.taken += 1
        received = Received(provider_message_id, mailgate_id, fields)
        self.received.append(received)
        if mailgate_id is not None:
            self.counts[mailgate_id] += 1
        if self.webhook_url is not None and recipients:
            happened = [o for r in recipients for o in outcomes(r, received)]
            task = asyncio.get_running_loop().create_task(self._post_events(happened))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """The requests the real provider's event webhook would make for these outcomes."""
        raise NotImplementedError(f"{type(self).__name__} posts no events")

    async def _post_events(self, happened: list[Outcome]) -> None:
        """Post in order, each after the one before was answered; a few tries each."""
        await asyncio.sleep(EVENT_DELAY_SECONDS)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for post in self.signed_posts(happened):
            for attempt in range(5):
                url = self.webhook_url
                if url is None:
                    return
                try:
                    async with self._http.post(url, data=post.body, headers=post.headers) as r:
                        await r.read()
                        if r.status < 300:
                            self.events_posted += 1
                            break
                        log.warning("fake: event webhook answered %d", r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("fake: event webhook failed: %s", exc)
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                self.event_failures += 1

    async def drain_events(self) -> None:
        """Wait for the events posted so far to be answered."""
        while self._event_tasks:
            await asyncio.gather(*list(self._event_tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._event_tasks):
            task.cancel()
        await asyncio.gather(*self._event_tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

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
