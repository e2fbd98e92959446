"""A zone's approver group: the role or organisation whose members may approve there.

Revision ID: 0013_zone_approver_group
Revises: 0012_token_last_used
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_zone_approver_group"
down_revision = "0012_token_last_used"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.add_column(sa.Column("approver_group", sa.String(72), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("approver_group")
