"""Recorded output bytes of a recording, beside its stored size (format 2 compresses).

Revision ID: 0016_recording_output_bytes
Revises: 0015_modbus
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_recording_output_bytes"
down_revision = "0015_modbus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: not known (recorded before this column, or closed by crash recovery).
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("output_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("output_bytes")
