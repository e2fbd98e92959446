"""Modbus/TCP assets: the Modbus port, passive inventory, longer actions, write windows.

Revision ID: 0015_modbus
Revises: 0014_nodes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0015_modbus"
down_revision = "0014_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        # An asset of another protocol with a Modbus/TCP port (an asset of protocol
        # "modbus" has it in ``port``); tunnels to it are protocol-aware.
        batch.add_column(sa.Column("modbus_port", sa.Integer(), nullable=True))
        # Passive inventory: what the device said in a vendor's own 43/14 read.
        batch.add_column(sa.Column("ot_vendor", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ot_product", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ot_revision", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ot_seen_at", UTCDateTime(), nullable=True))
        batch.drop_constraint("ck_assets_protocol", type_="check")
        batch.create_check_constraint(
            "ck_assets_protocol", "protocol in ('ssh', 'vnc', 'rdp', 'modbus')"
        )
        batch.create_check_constraint(
            "ck_assets_modbus_port", "modbus_port is null or modbus_port between 1 and 65535"
        )
    with op.batch_alter_table("grants") as batch:
        # modbus-write:unit=1:co=0-15:hr=100-119:always and the like
        batch.alter_column("action", type_=sa.String(96), existing_type=sa.String(32),
                           existing_nullable=False)  # fmt: skip
    op.create_table(
        "modbus_write_windows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False, index=True),
        sa.Column("asset", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("armed_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=False),
        sa.Column("closed_by", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("modbus_write_windows")
    with op.batch_alter_table("grants") as batch:
        batch.alter_column("action", type_=sa.String(32), existing_type=sa.String(96),
                           existing_nullable=False)  # fmt: skip
    with op.batch_alter_table("assets") as batch:
        batch.drop_constraint("ck_assets_modbus_port", type_="check")
        batch.drop_constraint("ck_assets_protocol", type_="check")
        batch.create_check_constraint("ck_assets_protocol", "protocol in ('ssh', 'vnc', 'rdp')")
        for column in ("ot_seen_at", "ot_revision", "ot_product", "ot_vendor", "modbus_port"):
            batch.drop_column(column)
