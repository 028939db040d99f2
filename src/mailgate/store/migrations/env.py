"""Alembic environment: always run by `mailgate.store.migrate` on a connection it holds."""

from __future__ import annotations

from alembic import context

from mailgate.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mailgate db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
