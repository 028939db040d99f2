"""Tenants, scoped keys and the audit log.

The tenant `default` is created and owns everything stored so far (every
row already says `tenant_id = 'default'`). Keys made before scopes existed
keep every scope.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from mailgate.store.tables import Timestamp

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

EVERY_SCOPE = ["send", "read", "manage", "admin"]


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("sender_domains", _json(), nullable=False),
        sa.Column("default_from", sa.Text(), nullable=True),
        sa.Column("providers", _json(), nullable=True),
        sa.Column("rate_limit", sa.String(32), nullable=True),
        sa.Column("daily_quota", sa.Integer(), nullable=True),
        sa.Column("created_at", Timestamp(), nullable=False),
        sa.Column("updated_at", Timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        tenants,
        [
            {
                "id": "default",
                "name": "default",
                "enabled": True,
                "sender_domains": [],
                "default_from": None,
                "providers": None,
                "rate_limit": None,
                "daily_quota": None,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    op.create_table(
        "tenant_quota",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", name="pk_tenant_quota"),
    )
    op.create_table(
        "tenant_rate",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("period", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_rate"),
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", Timestamp(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_tenant_id_id", "audit_log", ["tenant_id", "id"])

    # Keys made before scopes existed keep every scope.
    op.add_column("api_keys", sa.Column("scopes", _json(), nullable=True))
    keys = sa.table("api_keys", sa.column("scopes", _json()))
    op.execute(keys.update().values(scopes=EVERY_SCOPE))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("scopes", existing_type=_json(), nullable=False)
    op.create_index("ix_api_keys_tenant_id_id", "api_keys", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_tenant_id_id", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")
    op.drop_index("ix_audit_log_tenant_id_id", table_name="audit_log")
    for table in ("audit_log", "tenant_rate", "tenant_quota", "tenants"):
        op.drop_table(table)
