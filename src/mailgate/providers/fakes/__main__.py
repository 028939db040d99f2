"""Run one fake provider on its own: `python -m mailgate.providers.fakes sendgrid --port 9101`.

For benchmarks and drills where the fake must not share a process with mailgate.
It prints the URL to put in `base_url` (for `smtp`, the `host:port` of the relay).
"""

from __future__ import annotations

import argparse
import asyncio

from mailgate.providers.fakes import (
    FakeBrevo,
    FakeMailgun,
    FakeMailjet,
    FakeMandrill,
    FakePostmark,
    FakeProvider,
    FakeResend,
    FakeSendGrid,
    FakeSes,
    FakeSmtp,
    FakeSparkPost,
)
from mailgate.serving import serve_asgi

TYPES = [
    "sendgrid",
    "mailgun",
    "ses",
    "postmark",
    "resend",
    "brevo",
    "mailjet",
    "sparkpost",
    "mandrill",
    "smtp",
]


def build_fake(args: argparse.Namespace) -> FakeProvider:
    keep = args.keep
    match args.type:
        case "sendgrid":
            return FakeSendGrid(args.api_key, keep=keep)
        case "mailgun":
            return FakeMailgun(args.api_key, args.domain, keep=keep)
        case "ses":
            return FakeSes(args.api_key, args.api_secret, region=args.region, keep=keep)
        case "postmark":
            return FakePostmark(args.api_key, keep=keep)
        case "resend":
            return FakeResend(args.api_key, keep=keep)
        case "brevo":
            return FakeBrevo(args.api_key, keep=keep)
        case "mailjet":
            return FakeMailjet(args.api_key, args.api_secret, keep=keep)
        case "sparkpost":
            return FakeSparkPost(args.api_key, keep=keep)
        case "mandrill":
            return FakeMandrill(args.api_key, keep=keep)
        case _:
            return FakeSmtp(keep=keep)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mailgate.providers.fakes")
    parser.add_argument("type", choices=TYPES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="fake-key", help="API key (SES: access key id)")
    parser.add_argument(
        "--api-secret", default="fake-secret", help="Mailjet secret key, SES secret access key"
    )
    parser.add_argument("--domain", default="mg.example.test", help="Mailgun sending domain")
    parser.add_argument("--region", default="us-east-1", help="SES region")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--keep", type=int, default=1000, help="messages kept for inspection")
    args = parser.parse_args()
    fake = build_fake(args)
    fake.behaviour.latency = args.latency
    asyncio.run(_serve(fake, args.host, args.port))


async def _serve(fake: FakeProvider, host: str, port: int) -> None:
    if isinstance(fake, FakeSmtp):
        await fake.start(host, port)
        try:
            print(f"{host}:{fake.port}", flush=True)  # noqa: T201 - the caller reads it
            await asyncio.Event().wait()
        finally:
            await fake.stop()
        return
    async with serve_asgi(fake.app(), host=host, port=port) as server:
        print(server.url, flush=True)  # noqa: T201 - the caller reads the URL
        await asyncio.Event().wait()


if __name__ == "__main__":
    main()
