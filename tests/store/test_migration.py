"""The tenants migration on a store that already holds keys and mail (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from mailgate.config import DatabaseSettings
from mailgate.store import Scope, Store, queue
from mailgate.store import migrate as migrations
from mailgate.store.keys import hash_key
from mailgate.store.tables import Timestamp
from tests.conftest import _require
from tests.helpers import new_message

OLD_SECRET = "mg_" + "k" * 43


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/old.db"
        return
    base = _require(os.environ.get("MAILGATE_TEST_DATABASE_URL") or None)
    name = f"mailgate_migration_{os.getpid()}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(
            make_url(base).set(drivername="postgresql+asyncpg"), isolation_level="AUTOCOMMIT"
        )
        async with engine.connect() as conn:
            await conn.execute(text(statement))
        await engine.dispose()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def old_store(empty_database: str) -> AsyncIterator[Store]:
    """A store at revision 0002 (before tenants) holding a key and a queued message."""
    store = Store(DatabaseSettings(url=empty_database))
    await migrations.upgrade(store.db, "0002")
    item = new_message()
    await store.db.write(_old_rows, item)
    yield store
    await store.close()


def _old_rows(conn: Connection, item: object) -> None:
    keys = sa.table(
        "api_keys",
        *(sa.column(c) for c in ("id", "tenant_id", "name", "prefix", "key_hash")),
        sa.column("created_at", Timestamp()),
    )
    conn.execute(
        keys.insert().values(
            id="key_OLD", tenant_id="default", name="old", prefix=OLD_SECRET[:9],
            key_hash=hash_key(OLD_SECRET), created_at=datetime.now(UTC),
        )
    )  # fmt: skip
    queue.enqueue(conn, [item])  # type: ignore[list-item]


async def test_the_default_tenant_owns_what_was_stored(old_store: Store) -> None:
    await old_store.migrate()
    assert await migrations.current(old_store.db) == migrations.head()
    found = await old_store.find_key(OLD_SECRET)
    assert found is not None
    key, tenant = found
    assert key.scopes == tuple(Scope) and key.is_admin  # old keys keep every scope
    assert tenant.id == "default" and tenant.enabled and tenant.sender_domains == ()
    [listed] = await old_store.list_messages("default", limit=10)
    assert listed.tenant_id == "default"
    assert [t.id for t in await old_store.list_tenants()] == ["default"]


async def test_the_migration_goes_down_and_up_again(old_store: Store) -> None:
    await old_store.migrate()
    await old_store.create_key("new", tenant_id="default", scopes=[Scope.SEND])
    await migrations.downgrade(old_store.db, "0002")  # scopes are lost on the way down
    assert await migrations.current(old_store.db) == "0002"
    await old_store.migrate()
    keys = await old_store.list_keys()
    assert {k.name: k.scopes for k in keys} == {"old": tuple(Scope), "new": tuple(Scope)}
