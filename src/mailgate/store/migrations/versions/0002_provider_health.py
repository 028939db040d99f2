"""Provider health: events (breaker changes, switches, drills, probes), daily quota
counters, the last health probe, and when a node stopped cleanly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailgate.store.tables import Timestamp

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("provider_state", sa.Column("probed_at", Timestamp(), nullable=True))
    op.add_column("provider_state", sa.Column("probe_error", sa.Text(), nullable=True))
    op.add_column("nodes", sa.Column("stopped_at", Timestamp(), nullable=True))
    op.create_table(
        "provider_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", Timestamp(), nullable=False),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provider_events"),
    )
    op.create_index("ix_provider_events_provider_id", "provider_events", ["provider", "id"])
    op.create_table(
        "provider_quota",
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("provider", "day", name="pk_provider_quota"),
    )


def downgrade() -> None:
    op.drop_table("provider_quota")
    op.drop_index("ix_provider_events_provider_id", table_name="provider_events")
    op.drop_table("provider_events")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("stopped_at")
    with op.batch_alter_table("provider_state") as batch:
        batch.drop_column("probe_error")
        batch.drop_column("probed_at")
