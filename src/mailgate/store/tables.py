"""The tables. The `messages` table is the queue (DESIGN.md, "The database is the queue").

Message headers and addresses (`envelope`) stay on the queue row so listing
never reads bodies; text, html, custom headers and attachments live in
`message_bodies` and are read only when a worker sends. Every message and key
carries a `tenant_id`; the tenant `default` always exists.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

DEFAULT_TENANT = "default"
HELD = datetime(9999, 1, 1, tzinfo=UTC)
"""`next_attempt_at` of a disabled tenant's waiting messages: never due until it is enabled."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Timestamp(TypeDecorator[datetime]):
    """An aware UTC datetime on every engine.

    PostgreSQL keeps `timestamptz`; SQLite keeps SQLAlchemy's fixed-width text
    form of the naive UTC time, which sorts and compares chronologically.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a Timestamp column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> JSON:
    return JSON(none_as_null=True)


# The due index's condition, also used verbatim in the queries that must use
# it: SQLite picks a partial index only when the query repeats its condition
# with the same constants (a bound `status IN (?, ?)` does not).
WAITING = "status IN ('queued', 'scheduled')"

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False, server_default=DEFAULT_TENANT),
    Column("status", String(16), nullable=False),
    Column("envelope", _json(), nullable=False),
    Column("send_at", Timestamp(), nullable=True),
    Column("next_attempt_at", Timestamp(), nullable=False),
    Column("window_start", Timestamp(), nullable=False),
    Column("rounds", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", Text, nullable=True),
    Column("lease_until", Timestamp(), nullable=True),
    Column("forced_provider", String(64), nullable=True),
    Column("provider", String(64), nullable=True),
    Column("provider_message_id", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    Index(
        "ix_messages_due",
        "next_attempt_at",
        sqlite_where=text(WAITING),
        postgresql_where=text(WAITING),
    ),
    Index(
        "uq_messages_idempotency",
        "tenant_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("ix_messages_tenant_id_id", "tenant_id", "id"),
    # Status first: lists by status, counts by status, and finds the few
    # `sending` rows whose lease ran out, all from one index.
    Index("ix_messages_status_tenant_id_id", "status", "tenant_id", "id"),
    # Provider events that do not carry our id are matched by the provider's.
    Index(
        "ix_messages_provider_message_id",
        "provider_message_id",
        sqlite_where=text("provider_message_id IS NOT NULL"),
        postgresql_where=text("provider_message_id IS NOT NULL"),
    ),
)

message_bodies = Table(
    "message_bodies",
    metadata,
    Column(
        "message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("body", _json(), nullable=False),
)

message_recipients = Table(
    "message_recipients",
    metadata,
    Column(
        "message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("email", String(320), primary_key=True),
    # What the provider's events said about this recipient (None: nothing yet;
    # shown as `sent` once the message is).
    Column("status", String(16), nullable=True),
    Column("at", Timestamp(), nullable=True),
    Column("detail", _json(), nullable=True),
    Index("ix_message_recipients_email_message_id", "email", "message_id"),
)

message_tags = Table(
    "message_tags",
    metadata,
    Column(
        "message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("tag", String(128), primary_key=True),
    Index("ix_message_tags_tag_message_id", "tag", "message_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("provider", String(64), nullable=True),
    Column("started_at", Timestamp(), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_attempts_message_id", "message_id"),
    Index("ix_attempts_provider_started_at", "provider", "started_at"),
)

events = Table(
    "events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("at", Timestamp(), nullable=False),
    Column("detail", _json(), nullable=False),
    Index("ix_events_message_id", "message_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False, server_default=DEFAULT_TENANT),
    Column("name", Text, nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", _json(), nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Column("revoked_at", Timestamp(), nullable=True),
    Index("ix_api_keys_tenant_id_id", "tenant_id", "id"),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False),
    Column("sender_domains", _json(), nullable=False),
    Column("default_from", Text, nullable=True),
    Column("providers", _json(), nullable=True),
    Column("rate_limit", String(32), nullable=True),
    Column("daily_quota", Integer, nullable=True),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
)

tenant_quota = Table(
    "tenant_quota",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("used", Integer, nullable=False, server_default=text("0")),
)

tenant_rate = Table(
    "tenant_rate",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    # The rate window's number: the Unix time divided by the window's length.
    Column("period", BigInteger, nullable=False),
    Column("used", Integer, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", Timestamp(), nullable=False),
    # None for a change made with the CLI, which holds the database rather than a key.
    Column("key_id", String(32), nullable=True),
    Column("tenant_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", _json(), nullable=False),
    Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),
)

provider_state = Table(
    "provider_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=True),
    Column("simulated_failure", String(16), nullable=False, server_default="off"),
    Column("breaker_state", String(16), nullable=False, server_default="closed"),
    Column("breaker_changed_at", Timestamp(), nullable=True),
    Column("paused_until", Timestamp(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", Timestamp(), nullable=True),
    Column("updated_at", Timestamp(), nullable=False),
    Column("probed_at", Timestamp(), nullable=True),
    Column("probe_error", Text, nullable=True),
)

provider_events = Table(
    "provider_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("provider", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("at", Timestamp(), nullable=False),
    Column("detail", _json(), nullable=False),
    Index("ix_provider_events_provider_id", "provider", "id"),
)

provider_quota = Table(
    "provider_quota",
    metadata,
    Column("provider", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("used", Integer, nullable=False, server_default=text("0")),
)

provider_event_keys = Table(
    "provider_event_keys",
    metadata,
    # Each provider event recorded, by its dedupe key, so a repeat is recorded
    # once; also each one-time signature token seen (`replay:<token>`).
    Column("provider", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("at", Timestamp(), nullable=False),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("email", String(320), primary_key=True),
    Column("reason", String(16), nullable=False),
    Column("message_id", String(32), nullable=True),
    Column("detail", _json(), nullable=True),
    Column("created_at", Timestamp(), nullable=False),
    Index("ix_suppressions_tenant_id_created_at", "tenant_id", "created_at"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("events", _json(), nullable=False),
    Column("description", Text, nullable=True),
    Column("secret", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text, nullable=True),
    # The first failure since the last success; a day of them disables the endpoint.
    Column("failing_since", Timestamp(), nullable=True),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    Index("ix_webhooks_tenant_id_id", "tenant_id", "id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("webhook_id", String(32), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("message_id", String(32), nullable=True),
    Column("event_type", String(32), nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("payload", _json(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("tries", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", Timestamp(), nullable=False),
    Column("lease_owner", Text, nullable=True),
    Column("lease_until", Timestamp(), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index("ix_webhook_deliveries_webhook_id_message_id_id", "webhook_id", "message_id", "id"),
    Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    # The few in flight, for finding those whose lease ran out.
    Index(
        "ix_webhook_deliveries_leased",
        "lease_until",
        sqlite_where=text("status = 'delivering'"),
        postgresql_where=text("status = 'delivering'"),
    ),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("delivery_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("at", Timestamp(), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_webhook_attempts_delivery_id", "delivery_id"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Timestamp(), nullable=False),
    Column("seen_at", Timestamp(), nullable=False),
    Column("stopped_at", Timestamp(), nullable=True),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    # sha256 of the token the cookie carries: the table alone opens no session.
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Column("expires_at", Timestamp(), nullable=False),
    Index("ix_console_sessions_expires_at", "expires_at"),
)

console_secrets = Table(
    "console_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
)
