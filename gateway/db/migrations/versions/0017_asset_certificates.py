"""Pinned TLS certificates of desktop (VNC, RDP) targets.

Revision ID: 0017_asset_certificates
Revises: 0016_recording_output_bytes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0017_asset_certificates"
down_revision = "0016_recording_output_bytes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset_certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("asset", sa.String(64), nullable=False, index=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("asset", "sha256"),
    )


def downgrade() -> None:
    op.drop_table("asset_certificates")
