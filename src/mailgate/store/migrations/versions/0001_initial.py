"""The first schema: messages (the queue), bodies, recipients, tags, attempts, events,
API keys, provider state and nodes.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailgate.store.tables import Timestamp

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_QUEUED = "status IN ('queued', 'scheduled')"


def _bigint_pk() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _message_fk(*, primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", name=None, ondelete="CASCADE"),
        primary_key=primary_key,
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("envelope", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("send_at", Timestamp(), nullable=True),
        sa.Column("next_attempt_at", Timestamp(), nullable=False),
        sa.Column("window_start", Timestamp(), nullable=False),
        sa.Column("rounds", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", Timestamp(), nullable=True),
        sa.Column("forced_provider", sa.String(64), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp(), nullable=False),
        sa.Column("updated_at", Timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index(
        "ix_messages_due",
        "messages",
        ["next_attempt_at"],
        sqlite_where=sa.text(_QUEUED),
        postgresql_where=sa.text(_QUEUED),
    )
    op.create_index(
        "uq_messages_idempotency",
        "messages",
        ["tenant_id", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_messages_tenant_id_id", "messages", ["tenant_id", "id"])
    op.create_index("ix_messages_status_tenant_id_id", "messages", ["status", "tenant_id", "id"])

    op.create_table(
        "message_bodies",
        _message_fk(primary_key=True),
        sa.Column("body", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_message_bodies"),
    )
    op.create_table(
        "message_recipients",
        _message_fk(primary_key=True),
        sa.Column("email", sa.String(320), primary_key=True, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "email", name="pk_message_recipients"),
    )
    op.create_index(
        "ix_message_recipients_email_message_id", "message_recipients", ["email", "message_id"]
    )
    op.create_table(
        "message_tags",
        _message_fk(primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "tag", name="pk_message_tags"),
    )
    op.create_index("ix_message_tags_tag_message_id", "message_tags", ["tag", "message_id"])

    op.create_table(
        "attempts",
        _bigint_pk(),
        _message_fk(),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("started_at", Timestamp(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
    )
    op.create_index("ix_attempts_message_id", "attempts", ["message_id"])
    op.create_index("ix_attempts_provider_started_at", "attempts", ["provider", "started_at"])

    op.create_table(
        "events",
        _bigint_pk(),
        _message_fk(),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", Timestamp(), nullable=False),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_message_id", "events", ["message_id"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp(), nullable=False),
        sa.Column("revoked_at", Timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )

    op.create_table(
        "provider_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("simulated_failure", sa.String(16), server_default="off", nullable=False),
        sa.Column("breaker_state", sa.String(16), server_default="closed", nullable=False),
        sa.Column("breaker_changed_at", Timestamp(), nullable=True),
        sa.Column("paused_until", Timestamp(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", Timestamp(), nullable=True),
        sa.Column("updated_at", Timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_provider_state"),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", Timestamp(), nullable=False),
        sa.Column("seen_at", Timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
    )


def downgrade() -> None:
    for table in (
        "nodes",
        "provider_state",
        "api_keys",
        "events",
        "attempts",
        "message_tags",
        "message_recipients",
        "message_bodies",
        "messages",
    ):
        op.drop_table(table)
