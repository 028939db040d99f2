"""Drop-in provider send APIs: SendGrid, Mailgun and Postmark code works against mailgate.

Each module translates one provider's send request into `MessageIn` fields
and hands them to the one accept path (`common.Ingress`), then answers in
that provider's own success and error shapes, so the provider's SDK parses
the answer. The routes are served under `/compat/<provider>` and, for
client libraries that drop a base URL's path, without the prefix
(docs/drop-in.md; the interface page pins the paths).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from mailgate.api.context import ApiContext
from mailgate.compat import mailgun, postmark, sendgrid

ROUTERS: dict[str, Callable[[ApiContext], APIRouter]] = {
    "sendgrid": sendgrid.router,
    "mailgun": mailgun.router,
    "postmark": postmark.router,
}


def compat_routers(ctx: ApiContext) -> dict[str, APIRouter]:
    """Each provider's routes, by name; the app serves them under `/compat/<name>` and,
    undocumented, at the root as well."""
    return {name: make(ctx) for name, make in ROUTERS.items()}
