"""Drop the inbox's body_hash index: no query reads it (deduplication runs in memory, seeded by received_at), and
each webhook's hash landed on a random page of it, so every group commit wrote one more page per webhook to the
WAL before its fsync (bench/ingest.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_webhook_inbox_body_hash", table_name="webhook_inbox")


def downgrade() -> None:
    op.create_index("ix_webhook_inbox_body_hash", "webhook_inbox", ["body_hash"])
