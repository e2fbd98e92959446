"""Assets an admin can disable, and who set each vaulted credential.

Revision ID: 0010_asset_admin
Revises: 0009_ssh_certs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_asset_admin"
down_revision = "0009_ssh_certs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("asset_credentials") as batch:
        batch.add_column(sa.Column("set_by", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("asset_credentials") as batch:
        batch.drop_column("set_by")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("disabled")
