"""Schema migrations (Alembic), run on a connection we hold.

Every process may call `upgrade` at start (`database.auto_migrate`): the
upgrade runs inside one write transaction that first takes the database's
write lock (`BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL), so
two processes starting together migrate once and the second sees the result.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from mailgate.store.engine import Database

_LOCK_KEY = 0x6D61696C67617465  # "mailgate"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def _upgrade(conn: Connection, revision: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    command.upgrade(_config(conn), revision)


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def upgrade(database: Database, revision: str = "head") -> None:
    await database.write(_upgrade, revision)


def _downgrade(conn: Connection, revision: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    command.downgrade(_config(conn), revision)


async def downgrade(database: Database, revision: str) -> None:
    """Go back to `revision` (what each migration's `downgrade` undoes is lost)."""
    await database.write(_downgrade, revision)


async def current(database: Database) -> str | None:
    """The revision the database is at, or None when it has no schema yet."""
    return await database.read(_current)
