"""Byte counts of live sessions, published by the owner node for every process to list.

Revision ID: 0008_live_bytes
Revises: 0007_live
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_live_bytes"
down_revision = "0007_live"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("live_sessions") as batch:
        batch.add_column(sa.Column("bytes_up", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("bytes_down", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("live_sessions") as batch:
        batch.drop_column("bytes_down")
        batch.drop_column("bytes_up")
