"""Initial schema: connections, transitions, webhook inbox, inventories.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types in monitor.store.tables: a migration must not change when the tables do.
_ID = sa.String().with_variant(sa.String(collation="C"), "postgresql")
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("id", _ID, nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("lifecycle_stage", sa.String(length=32), nullable=False),
        sa.Column("health", sa.String(length=32), nullable=False),
        sa.Column("stage_since", _ts(), nullable=False),
        sa.Column("health_since", _ts(), nullable=False),
        sa.Column("first_seen_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("access_token", sa.String(), nullable=True),
        sa.Column("created_at", _ts(), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("store_name", sa.String(), nullable=True),
        sa.Column("link_url", sa.Text(), nullable=True),
        sa.Column("disabled_reason", sa.String(), nullable=True),
        sa.Column("is_disabled", sa.Boolean(), nullable=False),
        sa.Column("needs_update", sa.Boolean(), nullable=False),
        sa.Column("is_unhealthy", sa.Boolean(), nullable=False),
        sa.Column("ready_at", _ts(), nullable=True),
        sa.Column("historical_completed_at", _ts(), nullable=True),
        sa.Column("passed_historical", sa.Boolean(), nullable=False),
        sa.Column("last_progress_at", _ts(), nullable=True),
        sa.Column("num_batches_completed", sa.Integer(), nullable=True),
        sa.Column("synced_count", sa.BigInteger(), nullable=True),
        sa.Column("last_sync_completed_at", _ts(), nullable=True),
        sa.Column("last_data_at", _ts(), nullable=True),
        sa.Column("sync_period_seconds", sa.Integer(), nullable=True),
        sa.Column("last_status_at", _ts(), nullable=True),
        sa.Column("last_webhook_at", _ts(), nullable=True),
        sa.Column("absent_inventories", sa.Integer(), nullable=False),
        sa.Column("deleted_at", _ts(), nullable=True),
        sa.Column("pending_webhooks", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connections")),
    )
    op.create_index(op.f("ix_connections_health"), "connections", ["health"])
    op.create_index(op.f("ix_connections_lifecycle_stage"), "connections", ["lifecycle_stage"])
    op.create_index(op.f("ix_connections_platform"), "connections", ["platform"])

    op.create_table(
        "transitions",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("connection_id", _ID, nullable=False),
        sa.Column("dimension", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=64), nullable=False),
        sa.Column("to_state", sa.String(length=64), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"], ["connections.id"], name=op.f("fk_transitions_connection_id_connections")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transitions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_transitions_at"), "transitions", ["at"])
    op.create_index(op.f("ix_transitions_connection_id_id"), "transitions", ["connection_id", "id"])

    op.create_table(
        "webhook_inbox",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("connection_id", sa.String(), nullable=True),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("access_token", sa.String(), nullable=True),
        sa.Column("is_lifecycle", sa.Boolean(), nullable=False),
        sa.Column("processed_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_inbox")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_webhook_inbox_body_hash"), "webhook_inbox", ["body_hash"])
    op.create_index(op.f("ix_webhook_inbox_processed_at_id"), "webhook_inbox", ["processed_at", "id"])
    op.create_index(op.f("ix_webhook_inbox_received_at"), "webhook_inbox", ["received_at"])

    op.create_table(
        "inventories",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("listed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventories")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_inventories_at"), "inventories", ["at"])


def downgrade() -> None:
    op.drop_table("inventories")
    op.drop_table("webhook_inbox")
    op.drop_table("transitions")
    op.drop_table("connections")
