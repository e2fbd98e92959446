"""Vaulted target credentials and pinned target host keys.

Revision ID: 0006_ssh
Revises: 0005_recordings
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0006_ssh"
down_revision = "0005_recordings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset_credentials",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "asset", sa.String(64), sa.ForeignKey("assets.name", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("asset", "account"),
        sa.CheckConstraint("kind in ('password', 'private-key')", name="ck_credentials_kind"),
    )
    op.create_table(
        "asset_host_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "asset",
            sa.String(64),
            sa.ForeignKey("assets.name", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("key", sa.String(16384), nullable=False),
        sa.Column("fingerprint", sa.String(100), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("asset", "fingerprint"),
    )


def downgrade() -> None:
    op.drop_table("asset_host_keys")
    op.drop_table("asset_credentials")
