"""Several worker processes per node: the worker that owns an open recording (so a worker's
start-up recovers only its own leftovers, not a sibling's live recordings), and one-time
socket tickets in the database (a ticket issued by one worker is redeemed by another).

Revision ID: 0018_worker_owner
Revises: 0017_asset_certificates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0018_worker_owner"
down_revision = "0017_asset_certificates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("worker", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "socket_tickets",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("portal_session", sa.Integer(), nullable=False, index=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("asset", sa.String(64), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("socket_tickets")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("worker")
