"""Alerting: incidents, storm roll-ups and the durable notification outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types in monitor.store.tables: a migration must not change when the tables do.
_ID = sa.String().with_variant(sa.String(collation="C"), "postgresql")
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEY = sa.String(length=64)


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("key", _KEY, nullable=False),
        sa.Column("connection_id", _ID, nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("alert", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("since", _ts(), nullable=False),
        sa.Column("detected_at", _ts(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("health", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("store_name", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("link_url", sa.Text(), nullable=True),
        sa.Column("cleared_at", _ts(), nullable=True),
        sa.Column("resolved_at", _ts(), nullable=True),
        sa.Column("storm_key", _KEY, nullable=True),
        sa.Column("announced", sa.Boolean(), nullable=False),
        sa.Column("announced_reason", sa.String(), nullable=False),
        sa.Column("attempted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_phase"), "incidents", ["phase"])
    op.create_index(op.f("ix_incidents_connection_id_alert"), "incidents", ["connection_id", "alert"])
    op.create_index(op.f("ix_incidents_resolved_at"), "incidents", ["resolved_at"])

    op.create_table(
        "storms",
        sa.Column("key", _KEY, nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("alert", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("since", _ts(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("open_count", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("examples", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("last_cleared_at", _ts(), nullable=True),
        sa.Column("resolved_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_storms")),
    )
    op.create_index(op.f("ix_storms_resolved_at"), "storms", ["resolved_at"])

    op.create_table(
        "outbox",
        sa.Column("id", _AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("group_key", _KEY, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("parent", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("detected_at", _ts(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _ts(), nullable=False),
        sa.Column("first_attempt_at", _ts(), nullable=True),
        sa.Column("settled_at", _ts(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=True),
        sa.Column("slack_channel", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_outbox_state_channel_id"), "outbox", ["state", "channel", "id"])
    op.create_index(op.f("ix_outbox_group_key_id"), "outbox", ["group_key", "id"])
    op.create_index(op.f("ix_outbox_created_at"), "outbox", ["created_at"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("storms")
    op.drop_table("incidents")
