"""SMTP submission beside single HTTP accepts, 16 clients each, against one `mailgate serve`.

    .venv/bin/python -m bench.smtp                  # 3 repeats, about 30 seconds
    .venv/bin/python -m bench.smtp --repeats 5 --messages 3000

One `serve --no-worker` on SQLite in a temporary directory, with SMTP
submission on (plain, on loopback) and fake providers that receive nothing
(the worker is off), so only accepting is measured. Each repeat measures,
alternating which goes first:

- SMTP: 16 aiosmtplib sessions, each authenticated once (AUTH PLAIN) and
  kept open, sending one message after another (MAIL, RCPT, DATA, each
  waiting for its reply: aiosmtplib does not pipeline) until `--messages`
  are accepted;
- HTTP (the baseline): `POST /v1/messages`, one message per request, 16 in
  flight over one aiohttp session.

The message is the same both ways (`bench.harness.MESSAGE`: sender, one
recipient, subject, a short text, a tag), built once, so the load
generator does little per message. Both kinds of client are warmed up
first. Reported: accepted/s (median of the repeats, and each run) and the
ratio SMTP / HTTP; CPU per accepted message of the serve process (from
/proc) and of this process (the load generator), each way; and, measured in
this process, the CPU of turning one message into a validated `MessageIn`
each way (the MIME parse and field mapping for SMTP, one JSON validation
for HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiohttp
import aiosmtplib

from bench.harness import MESSAGE, Service, cpu_seconds, service
from mailgate.api.schemas import MessageIn
from mailgate.ingest import message_fields, parse_message

CLIENTS = 16
WARM_UP = 200
SENDER, RECIPIENT = "bench@example.com", "reader@example.org"
Lane = Callable[[], Awaitable[None]]
"""One client: each call sends one message and returns once it is accepted."""


def mime_message() -> bytes:
    """`MESSAGE` as the bytes an SMTP client sends after DATA."""
    msg = EmailMessage()
    msg["From"] = str(MESSAGE["from"])
    msg["To"] = RECIPIENT
    msg["Subject"] = str(MESSAGE["subject"])
    msg["X-Mailgate-Tag"] = "bench"
    msg.set_content(str(MESSAGE["text"]))
    return msg.as_bytes().replace(b"\n", b"\r\n")


RAW = mime_message()
PAYLOAD = json.dumps(MESSAGE).encode()


@dataclass
class Runs:
    rates: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)
    client_us: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    rate: float
    server_us: float
    client_us: float


async def measured(pid: int, n: int, lanes: list[Lane]) -> Result:
    """Run the lanes until `n` messages are accepted: rate, and CPU µs per message of the
    serve process and of this one."""
    todo = iter(range(n))

    async def lane(send: Lane) -> None:
        for _ in todo:
            await send()

    server_before, client_before = cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(lane(send) for send in lanes))
    elapsed = time.perf_counter() - started
    server = cpu_seconds(pid) - server_before
    client = time.process_time() - client_before
    return Result(n / elapsed, server / n * 1e6, client / n * 1e6)


async def smtp_sessions(svc: Service, stack: AsyncExitStack) -> list[Lane]:
    """16 authenticated sessions, each a lane that sends one message per call."""
    assert svc.smtp is not None
    host, port = svc.smtp
    lanes: list[Lane] = []
    for _ in range(CLIENTS):
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=60)
        await stack.enter_async_context(smtp)
        await smtp.ehlo()
        await smtp.auth_plain("bench", svc.key)

        async def send(smtp: aiosmtplib.SMTP = smtp) -> None:
            _, reply = await smtp.sendmail(SENDER, [RECIPIENT], RAW)
            assert reply.startswith("2.0.0 queued as msg_"), reply

        lanes.append(send)
    return lanes


def http_lanes(svc: Service, session: aiohttp.ClientSession) -> list[Lane]:
    url = f"{svc.url}/v1/messages"

    async def post() -> None:
        async with session.post(url, data=PAYLOAD) as r:
            await r.read()
            assert r.status == 202, r.status

    return [post] * CLIENTS


def translation_us(n: int = 2000) -> tuple[float, float]:
    """CPU µs to turn one message into a validated `MessageIn`: from the bytes after DATA
    (as `ingest/smtp.py` does) and from the JSON body (as the API route does)."""

    def smtp() -> None:
        fields = message_fields(parse_message(RAW), mail_from=SENDER, rcpt_tos=[RECIPIENT])
        MessageIn.model_validate(fields)

    def http() -> None:
        MessageIn.model_validate_json(PAYLOAD)

    costs = []
    for job in (smtp, http):
        job()
        started = time.process_time()
        for _ in range(n):
            job()
        costs.append((time.process_time() - started) / n * 1e6)
    return costs[0], costs[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000, help="per measure and repeat")
    args = parser.parse_args()
    runs = {"smtp": Runs(), "http": Runs()}
    async with AsyncExitStack() as stack:
        svc = await stack.enter_async_context(service(worker=False, smtp_server=True))
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        headers = {"Authorization": f"Bearer {svc.key}", "Content-Type": "application/json"}
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, headers=headers)
        )
        lanes = {"smtp": await smtp_sessions(svc, stack), "http": http_lanes(svc, session)}
        for name in lanes:  # warm up connections, caches, the server's code paths
            await measured(svc.pid, WARM_UP, lanes[name])
        for i in range(args.repeats):
            for name in ("smtp", "http") if i % 2 == 0 else ("http", "smtp"):
                result = await measured(svc.pid, args.messages, lanes[name])
                print(
                    f"    run {i + 1} {name}: {result.rate:,.0f}/s, serve CPU "
                    f"{result.server_us:.0f} µs/message, load generator {result.client_us:.0f} µs",
                    flush=True,
                )
                runs[name].rates.append(result.rate)
                runs[name].server_us.append(result.server_us)
                runs[name].client_us.append(result.client_us)
    smtp_parse, http_parse = translation_us()
    for name, label in (
        ("smtp", f"SMTP, {CLIENTS} sessions"),
        ("http", f"HTTP single POST, {CLIENTS} in flight (baseline)"),
    ):
        r = runs[name]
        each = " / ".join(f"{x:,.0f}" for x in r.rates)
        print(
            f"{label}: {statistics.median(r.rates):,.0f} accepted/s ({each}); "
            f"serve CPU {statistics.median(r.server_us):.0f} µs/message, "
            f"load generator {statistics.median(r.client_us):.0f} µs/message"
        )
    smtp, http = runs["smtp"], runs["http"]
    each = " / ".join(f"{s / h:.2f}" for s, h in zip(smtp.rates, http.rates, strict=True))
    print(
        f"SMTP / HTTP: {statistics.median(smtp.rates) / statistics.median(http.rates):.2f}x "
        f"accepted/s (each repeat: {each}), "
        f"{statistics.median(smtp.server_us) / statistics.median(http.server_us):.1f}x "
        "serve CPU per message"
    )
    print(
        f"message to a validated MessageIn, in process: SMTP (MIME parse) {smtp_parse:.0f} µs, "
        f"HTTP (JSON) {http_parse:.0f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
