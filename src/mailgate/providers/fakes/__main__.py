"""Run one fake provider on its own: `python -m mailgate.providers.fakes sendgrid --port 9101`.

For benchmarks and drills where the fake must not share a process with mailgate.
"""

from __future__ import annotations

import argparse
import asyncio

from mailgate.providers.fakes.base import FakeProvider
from mailgate.providers.fakes.mailgun import FakeMailgun
from mailgate.providers.fakes.sendgrid import FakeSendGrid
from mailgate.serving import serve_asgi


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mailgate.providers.fakes")
    parser.add_argument("type", choices=["sendgrid", "mailgun"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="fake-key")
    parser.add_argument("--domain", default="mg.example.test")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--keep", type=int, default=1000, help="messages kept for inspection")
    args = parser.parse_args()
    fake: FakeProvider
    if args.type == "sendgrid":
        fake = FakeSendGrid(args.api_key, keep=args.keep)
    else:
        fake = FakeMailgun(args.api_key, args.domain, keep=args.keep)
    fake.behaviour.latency = args.latency
    asyncio.run(_serve(fake, args.host, args.port))


async def _serve(fake: FakeProvider, host: str, port: int) -> None:
    async with serve_asgi(fake.app(), host=host, port=port) as server:
        print(server.url, flush=True)  # noqa: T201 - the caller reads the URL
        await asyncio.Event().wait()


if __name__ == "__main__":
    main()
