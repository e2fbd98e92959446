"""Identity: TOTP replay guard and lock on users; pending logins, portal sessions,
authentication failures, recovery codes, API tokens, SSH public keys, connect codes.

Revision ID: 0003_identity
Revises: 0002_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0003_identity"
down_revision = "0002_audit"
branch_labels = None
depends_on = None


def _user_fk() -> sa.Column[int]:
    return sa.Column(
        "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("locked_until", UTCDateTime(), nullable=True))
    op.create_table(
        "pending_logins",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("id_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("password_ok", sa.Boolean(), nullable=False),
        sa.Column("next_path", sa.String(512), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("id_sha256", sa.String(64), nullable=False, unique=True),
        _user_fk(),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("mfa_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(200), nullable=False),
    )
    op.create_index("ix_portal_sessions_user_id", "portal_sessions", ["user_id"])
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        _user_fk(),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
    )
    op.create_index("ix_auth_failures_user_id", "auth_failures", ["user_id"])
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer(), primary_key=True),
        _user_fk(),
        sa.Column("code_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("user_id", "code_sha256"),
    )
    op.create_index("ix_recovery_codes_user_id", "recovery_codes", ["user_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        _user_fk(),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.String(500), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "ssh_public_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        _user_fk(),
        sa.Column("fingerprint", sa.String(100), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("openssh", sa.Text(), nullable=False),
        sa.Column("comment", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("user_id", "fingerprint"),
    )
    op.create_index("ix_ssh_public_keys_user_id", "ssh_public_keys", ["user_id"])
    op.create_table(
        "connect_codes",
        sa.Column("id", sa.Integer(), primary_key=True),
        _user_fk(),
        sa.Column("asset", sa.String(128), nullable=False),
        sa.Column("code_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_connect_codes_user_id", "connect_codes", ["user_id"])


def downgrade() -> None:
    for table in (
        "connect_codes",
        "ssh_public_keys",
        "api_tokens",
        "recovery_codes",
        "auth_failures",
        "portal_sessions",
    ):
        op.drop_index(f"ix_{table}_user_id", table_name=table)
        op.drop_table(table)
    op.drop_table("pending_logins")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("locked_until")
        batch.drop_column("totp_last_step")
