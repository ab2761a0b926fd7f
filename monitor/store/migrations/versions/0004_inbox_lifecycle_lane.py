"""The inbox's pending rows by lane: lifecycle rows first, each lane in arrival order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pending = sa.text("processed_at IS NULL")
    op.create_index(
        "ix_webhook_inbox_pending",
        "webhook_inbox",
        [sa.text("is_lifecycle DESC"), "id"],
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.drop_index("ix_webhook_inbox_processed_at_id", table_name="webhook_inbox")


def downgrade() -> None:
    op.create_index("ix_webhook_inbox_processed_at_id", "webhook_inbox", ["processed_at", "id"])
    op.drop_index("ix_webhook_inbox_pending", table_name="webhook_inbox")
