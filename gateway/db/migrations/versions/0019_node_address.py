"""Cross-node live watch: each member's portal address and certificate, one-time watch grants.

Revision ID: 0019_node_address
Revises: 0018_worker_owner
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0019_node_address"
down_revision = "0018_worker_owner"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "nodes", sa.Column("portal_address", sa.String(300), nullable=False, server_default="")
    )
    op.add_column(
        "nodes", sa.Column("portal_certificate", sa.Text, nullable=False, server_default="")
    )
    op.create_table(
        "watch_grants",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("worker", sa.Integer, nullable=False),
        sa.Column("portal_session_id", sa.Integer, nullable=False),
        sa.Column("watcher", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("via_node", sa.String(255), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("watch_grants")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("portal_certificate")
        batch.drop_column("portal_address")
