"""Shared fixtures: real stores (SQLite always, PostgreSQL when configured), real fake
providers over HTTP on loopback, the API in process.

PostgreSQL: set `MAILGATE_TEST_DATABASE_URL` (e.g. postgresql://postgres@127.0.0.1/test).
The run creates its own database beside the one named, migrates it once and
empties it between tests. Without the variable the PostgreSQL cases are
skipped, except under `CI=true`, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from mailgate.api import create_app
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.providers.fakes import FakeMailgun, FakeSendGrid
from mailgate.serving import serve_asgi
from mailgate.store import Store
from mailgate.store.tables import metadata
from tests.helpers import MAILGUN_DOMAIN, MAILGUN_KEY, SENDGRID_KEY, Fakes, make_settings

ENGINES = ["sqlite", "postgresql"]


def _postgres_base_url() -> str | None:
    return os.environ.get("MAILGATE_TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A database of this run's own on the configured PostgreSQL server, migrated once."""
    base = _postgres_base_url()
    if base is None:
        yield None
        return
    name = f"mailgate_test_{os.getpid()}"
    url = make_url(base).set(database=name)

    async def admin(statement: str) -> None:
        engine = create_async_engine(
            make_url(base).set(drivername="postgresql+asyncpg"), isolation_level="AUTOCOMMIT"
        )
        async with engine.connect() as conn:
            await conn.execute(text(statement))
        await engine.dispose()

    async def migrate() -> None:
        store = Store(
            Settings(database={"url": url.render_as_string(hide_password=False)}).database
        )
        await store.migrate()
        await store.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(migrate())
    yield url.render_as_string(hide_password=False)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> str:
    """Every store test runs on SQLite, and on PostgreSQL when one is configured."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mailgate.db"
    return _require(postgres_url)


def _require(postgres_url: str | None) -> str:
    if postgres_url is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but MAILGATE_TEST_DATABASE_URL is not set")
        pytest.skip("PostgreSQL not configured (MAILGATE_TEST_DATABASE_URL)")
    return postgres_url


@pytest.fixture
async def pg_store(postgres_url: str | None) -> AsyncIterator[Store]:
    """An empty PostgreSQL store, for the tests that are about PostgreSQL itself."""
    store = Store(make_settings(_require(postgres_url)).database)
    await _empty(store)
    yield store
    await store.close()


async def _empty(store: Store) -> None:
    names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
    truncate = text(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    await store.db.write(lambda conn: conn.execute(truncate))
    await store.ensure_default_tenant()


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    sendgrid = FakeSendGrid(SENDGRID_KEY)
    mailgun = FakeMailgun(MAILGUN_KEY, MAILGUN_DOMAIN)
    async with serve_asgi(sendgrid.app()) as sg, serve_asgi(mailgun.app()) as mg:
        yield Fakes(sendgrid, mailgun, sg.url, mg.url)
        await sendgrid.close()  # the sessions their event posts used
        await mailgun.close()
        sg.stop()  # both at once: each takes a few ticks to stop
        mg.stop()


@pytest.fixture
def settings(database_url: str, fakes: Fakes) -> Settings:
    return make_settings(database_url, fakes)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated, empty store."""
    store = Store(make_settings(database_url).database)
    if store.db.is_sqlite:
        await store.migrate()
    else:
        await _empty(store)
    yield store
    await store.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def api_key(store: Store) -> str:
    _, secret = await store.create_key("test", tenant_id="default")
    return secret


@pytest.fixture
async def client(
    settings: Settings, store: Store, metrics: Metrics, api_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, authenticated."""
    app = create_app(settings, store, metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://mailgate.test",
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        yield client
