"""`mailgate serve`, `mailgate worker` and `mailgate db`: running the service and its schema."""

from __future__ import annotations

from typing import Annotated

import typer

from mailgate import service, supervisor
from mailgate.cli.common import ConfigOption, app, err, out, run, settings_from, with_store
from mailgate.config import Settings
from mailgate.store import Store
from mailgate.store import migrate as migrations

db_app = typer.Typer(help="Schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.command()
def serve(
    config: ConfigOption = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; deliver with `mailgate worker`.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="API processes (server.workers).")
    ] = None,
    one_process: Annotated[
        bool,
        typer.Option(
            "--one-process",
            help="API and worker in one process (server.one_process); by default a machine "
            "with more than one core delivers from a process of its own.",
        ),
    ] = False,
) -> None:
    """Run the HTTP API and, unless --no-worker, a delivery worker."""
    settings = settings_from(config)
    overrides: dict[str, object] = {
        k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None
    }
    if one_process:
        overrides["one_process"] = True
    if overrides:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update=overrides)}
        )
    service.configure_logging(settings.server.log_level)
    if supervisor.supervised(settings, worker=not no_worker):
        run(
            lambda: supervisor.supervise(
                settings,
                api_processes=settings.server.workers,
                worker=not no_worker,
                announce=_announce,
            )
        )
    else:
        run(lambda: service.serve(settings, worker=not no_worker, announce=_announce))


@app.command()
def worker(
    config: ConfigOption = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Override delivery.concurrency.")
    ] = None,
) -> None:
    """Run a delivery worker (no API)."""
    settings = settings_from(config)
    if concurrency is not None:
        settings = settings.model_copy(
            update={"delivery": settings.delivery.model_copy(update={"concurrency": concurrency})}
        )
    service.configure_logging(settings.server.log_level)
    run(lambda: service.work(settings))


def _announce(line: str) -> None:
    err.print(line, highlight=False, soft_wrap=True)


def _without_auto_migrate(settings: Settings) -> Settings:
    """`db` commands migrate (or report) on purpose, never as a side effect of opening."""
    database = settings.database.model_copy(update={"auto_migrate": False})
    return settings.model_copy(update={"database": database})


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Bring the schema up to date (also done by serve/worker when database.auto_migrate)."""
    no_auto = _without_auto_migrate(settings_from(config))

    async def job(store: Store) -> str | None:
        await store.migrate()
        return await migrations.current(store.db)

    revision = with_store(no_auto, job)
    out.print(f"schema at revision {revision}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the schema revision (and whether it is the newest)."""
    no_auto = _without_auto_migrate(settings_from(config))
    revision = with_store(no_auto, lambda s: migrations.current(s.db))
    head = migrations.head()
    note = "up to date" if revision == head else f"behind: newest is {head}"
    out.print(f"{revision or 'empty'} ({note})")
