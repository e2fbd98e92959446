"""The register of SSH user certificates issued by the gateway's user CA.

Revision ID: 0009_ssh_certs
Revises: 0008_live_bytes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0009_ssh_certs"
down_revision = "0008_live_bytes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssh_certificates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("serial", sa.BigInteger(), nullable=False, unique=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key_fingerprint", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(200), nullable=False),
        sa.Column("issued_via", sa.String(16), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("valid_after", UTCDateTime(), nullable=False),
        sa.Column("valid_before", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_ssh_certificates_user_id", "ssh_certificates", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_ssh_certificates_user_id", table_name="ssh_certificates")
    op.drop_table("ssh_certificates")
