"""Assets, zones, grants, access requests, and Casbin's policy table.

Revision ID: 0004_authz
Revises: 0003_identity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0004_authz"
down_revision = "0003_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("max_request_hours", sa.Integer(), nullable=False),
        sa.Column("record_input", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("protocol in ('ssh', 'vnc', 'rdp')", name="ck_assets_protocol"),
        sa.CheckConstraint("port between 1 and 65535", name="ck_assets_port"),
    )
    op.create_table(
        "zones",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("max_request_hours", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "asset_zones",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "asset", sa.String(64), sa.ForeignKey("assets.name", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "zone", sa.String(64), sa.ForeignKey("zones.name", ondelete="CASCADE"), nullable=False
        ),
        sa.UniqueConstraint("asset", "zone"),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("object", sa.String(80), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("effect", sa.String(8), nullable=False),
        sa.Column("schedule", sa.String(500), nullable=True),
        sa.Column("valid_from", UTCDateTime(), nullable=True),
        sa.Column("valid_until", UTCDateTime(), nullable=True),
        sa.Column("request_id", sa.String(40), nullable=True, index=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.CheckConstraint("effect in ('allow', 'deny')", name="ck_grants_effect"),
    )
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("requester", sa.String(64), nullable=False, index=True),
        sa.Column("assets", sa.Text(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("start", UTCDateTime(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("pending_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "access_request_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "request_id",
            sa.String(40),
            sa.ForeignKey("access_requests.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
    )
    # Bumped in the same transaction as every policy change, so each gateway process can
    # tell with one cheap read that its in-memory policy index is stale.
    op.create_table(
        "policy_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO policy_version (id, version) VALUES (1, 0)")
    # The table casbin-async-sqlalchemy-adapter reads and writes (its default shape).
    op.create_table(
        "casbin_rule",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ptype", sa.String(255)),
        sa.Column("v0", sa.String(255)),
        sa.Column("v1", sa.String(255)),
        sa.Column("v2", sa.String(255)),
        sa.Column("v3", sa.String(255)),
        sa.Column("v4", sa.String(255)),
        sa.Column("v5", sa.String(255)),
    )


def downgrade() -> None:
    for table in (
        "casbin_rule",
        "policy_version",
        "access_request_events",
        "access_requests",
        "grants",
        "asset_zones",
        "zones",
        "assets",
    ):
        op.drop_table(table)
