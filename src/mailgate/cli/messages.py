"""`mailgate send`, `status` and `retry`: a message through the one accept path, its story,
and failed mail queued again."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from mailgate import service
from mailgate.api.accept import Acceptor
from mailgate.api.errors import validation_error
from mailgate.api.render import message_json, new_message_json
from mailgate.api.schemas import MessageIn
from mailgate.cli.common import (
    ConfigOption,
    JsonOption,
    app,
    gateway,
    out,
    over_http,
    print_json,
    settings_from,
    usage_error,
    with_store,
)
from mailgate.client import Client
from mailgate.message import Status
from mailgate.metrics import Metrics
from mailgate.store import CLI, DEFAULT_TENANT, NewMessage, Store, utcnow
from mailgate.store.messages import MessageFilter

TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        help="The tenant the message belongs to (default: default; over --url, the key's).",
        show_default=False,
    ),
]
NO_SENDER = "give --from, or set the tenant's default_from or delivery.default_from"


@app.command()
def send(
    to: Annotated[list[str], typer.Option("--to", help="Recipient (repeat for more).")],
    subject: Annotated[str, typer.Option("--subject", "-s")],
    text: Annotated[str | None, typer.Option(help="Plain-text body.")] = None,
    html: Annotated[str | None, typer.Option(help="HTML body.")] = None,
    sender: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Sender (default: the tenant's default_from, else delivery.default_from).",
        ),
    ] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag")] = None,
    tenant: TenantOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a message (the tenant's rules apply); a running worker delivers it."""
    settings = service.effective_settings(settings_from(config))
    if text is None and html is None:
        raise usage_error("give --text or --html")
    raw = {"to": to, "cc": cc or [], "bcc": bcc or [], "subject": subject, "tags": tag or []}
    raw |= {k: v for k, v in (("text", text), ("html", html)) if v is not None}
    if sender is not None:
        raw["from"] = sender
    try:
        message = MessageIn.model_validate(raw)
        # Without --from: the tenant's default_from, else the config's default sender.
        fallback = settings.delivery.default_from
        with_fallback = MessageIn.model_validate({**raw, "from": fallback}) if fallback else None
    except ValidationError as exc:
        problem = validation_error(exc)
        raise usage_error(f"({problem.field}) {problem.message}") from None

    if gateway.remote:
        if tenant is not None:
            raise usage_error("--tenant: over --url a message belongs to the key's tenant")

        def call(client: Client) -> dict[str, Any]:
            chosen = raw
            if sender is None and client.me()["tenant"]["default_from"] is None:
                if fallback is None:
                    raise usage_error(NO_SENDER)
                chosen = {**raw, "from": fallback}
            return client.send(chosen)

        data = over_http(call)
    else:

        async def job(store: Store) -> NewMessage:
            owner = await store.get_tenant(tenant or DEFAULT_TENANT)
            chosen = message
            if message.sender is None and owner.default_from is None:
                if with_fallback is None:
                    raise usage_error(NO_SENDER)
                chosen = with_fallback
            acceptor = Acceptor(store, Metrics(), (p.name for p in settings.providers))
            item, _ = await acceptor.accept(chosen, owner)
            return item

        data = new_message_json(with_store(settings, job))
    if as_json:
        print_json(data)
    else:
        out.print(f"{data['id']} queued", highlight=False)


@app.command()
def status(
    message_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a message (of any tenant): status, attempts and events."""
    if gateway.remote:
        data = over_http(lambda client: client.get(message_id))
    else:
        settings = settings_from(config)
        data = message_json(with_store(settings, lambda store: store.get_message(None, message_id)))
    if as_json:
        print_json(data)
        return
    out.print(f"[bold]{data['id']}[/bold]  {data['status']}", highlight=False)
    recipients = ", ".join(a["email"] for a in data["to"])
    out.print(f"from {data['from']['email']} to {recipients}: {data['subject']}", highlight=False)
    if data["tenant_id"] != DEFAULT_TENANT:
        out.print(f"tenant {data['tenant_id']}", highlight=False)
    if data["provider"]:
        out.print(
            f"provider {data['provider']} ({data['provider_message_id'] or 'no id yet'})",
            highlight=False,
        )
    if data["last_error"]:
        out.print(f"last error: {data['last_error']}", highlight=False)
    if data["attempts"]:
        table = Table(
            "started", "provider", "ms", "outcome", "error", title="attempts", title_justify="left"
        )
        for a in data["attempts"]:
            table.add_row(
                a["started_at"],
                a["provider"] or "?",
                str(a["duration_ms"]),
                a["outcome"],
                a["error"] or "",
            )
        out.print(table)
    table = Table("at", "event", "detail", title="events", title_justify="left")
    for e in data["events"]:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if v is not None)
        table.add_row(e["at"], e["type"], detail)
    out.print(table)


def _time(value: str | None, option: str) -> datetime | None:
    """An RFC 3339 time, or a span back from now: `30m`, `2h`, `1d`."""
    if value is None:
        return None
    if (match := _SPAN.fullmatch(value.strip())) is not None:
        amount, unit = int(match[1]), match[2]
        return utcnow() - timedelta(**{_UNITS[unit]: amount})
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise usage_error(f"{option}: give an RFC 3339 time or a span such as 2h") from None
    if at.tzinfo is None:
        raise usage_error(f"{option}: the time needs a zone (e.g. ...Z)")
    return at


_SPAN = re.compile(r"(\d{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@app.command()
def retry(
    status: Annotated[
        str, typer.Option(help="Which messages: only failed mail can be retried.")
    ] = "failed",
    provider: Annotated[str | None, typer.Option(help="Last tried through this provider.")] = None,
    tag: Annotated[str | None, typer.Option(help="Carrying this tag.")] = None,
    to: Annotated[str | None, typer.Option(help="Addressed to this recipient.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created at or after (RFC 3339, or 30m, 2h, 1d ago).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Created before (same forms).")] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's (default: every tenant's).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count the matches; change nothing.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue every failed message matching the filters again (one transaction, audited)."""
    if status != Status.FAILED.value:
        raise usage_error("--status: only failed messages can be retried")
    where = MessageFilter(
        status=status,
        provider=provider,
        tag=tag,
        to=to,
        since=_time(since, "--since"),
        until=_time(until, "--until"),
    )
    if gateway.remote:
        filters = {k: v for k, v in asdict(where).items() if k != "status"}
        counts = over_http(
            lambda client: client.retry_failed(**filters, tenant=tenant, dry_run=dry_run)
        )
        matched, retried = counts["matched"], counts["retried"]
    else:
        settings = settings_from(config)

        async def job(store: Store) -> tuple[int, int]:
            if tenant is not None:
                await store.get_tenant(tenant)  # NotFound names it
            return await store.retry_matching(tenant, where, dry_run=dry_run, actor=CLI)

        matched, retried = with_store(settings, job)
    if as_json:
        print_json({"matched": matched, "retried": retried})
    elif dry_run:
        out.print(f"{matched} failed messages match; nothing changed (--dry-run)")
    else:
        out.print(f"{retried} of {matched} matching messages queued again")
