"""Live sessions shared across processes and nodes, with kill requests.

Revision ID: 0007_live
Revises: 0006_ssh
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0007_live"
down_revision = "0006_ssh"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "live_sessions",
        sa.Column("session_id", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False, index=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("asset", sa.String(64), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("valid_until", UTCDateTime(), nullable=True),
        sa.Column("kill_reason", sa.String(64), nullable=True),
        sa.Column("kill_requested_by", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("live_sessions")
