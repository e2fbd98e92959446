"""Cluster membership: a row per serving process (node and worker) with its heartbeat, and
the worker that owns each live session.

Revision ID: 0014_nodes
Revises: 0013_zone_approver_group
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0014_nodes"
down_revision = "0013_zone_approver_group"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("worker", sa.Integer(), primary_key=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False, index=True),
    )
    with op.batch_alter_table("live_sessions") as batch:
        batch.add_column(sa.Column("worker", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("live_sessions") as batch:
        batch.drop_column("worker")
    op.drop_table("nodes")
