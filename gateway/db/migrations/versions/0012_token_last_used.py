"""When each API token was last used, for the admins' list of every token.

Revision ID: 0012_token_last_used
Revises: 0011_recordings_history
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0012_token_last_used"
down_revision = "0011_recordings_history"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("last_used_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("last_used_at")
