"""Recordings catalog and the full-text index of terminal output.

Revision ID: 0005_recordings
Revises: 0004_authz

``recordings`` is the catalog (one row per recording: who, where, when, how it ended, its
size and last integrity verdict). ``recording_lines`` holds the interpreted screen text, one
row per line with its time offset. The search index over it is dialect-specific:
PostgreSQL gets a generated ``tsvector`` ('simple' configuration, over the text with
punctuation turned into spaces so words split as in FTS5) with a GIN index, SQLite
an external-content FTS5 table kept in step by triggers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.db.types import UTCDateTime

revision = "0005_recordings"
down_revision = "0004_authz"
branch_labels = None
depends_on = None

LineId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE recording_lines_fts USING fts5("
    "text, content='recording_lines', content_rowid='id', tokenize='unicode61')",
    "CREATE TRIGGER recording_lines_fts_insert AFTER INSERT ON recording_lines BEGIN "
    "INSERT INTO recording_lines_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER recording_lines_fts_delete AFTER DELETE ON recording_lines BEGIN "
    "INSERT INTO recording_lines_fts(recording_lines_fts, rowid, text) "
    "VALUES ('delete', old.id, old.text); END",
]


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("asset", sa.String(200), nullable=False),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("node", sa.String(100), nullable=False),
        sa.Column("data_key_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("integrity", sa.String(16), nullable=False),
        sa.Column("integrity_detail", sa.String(200), nullable=False),
        sa.Column("verified_at", UTCDateTime(), nullable=True),
        sa.Column("indexed_lines", sa.Integer(), nullable=False),
    )
    op.create_index("ix_recordings_started_at", "recordings", ["started_at"])
    op.create_index("ix_recordings_state_node", "recordings", ["state", "node"])
    op.create_table(
        "recording_lines",
        sa.Column("id", LineId, primary_key=True, autoincrement=True),
        sa.Column(
            "recording_id",
            sa.String(32),
            sa.ForeignKey("recordings.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("offset_us", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_recording_lines_recording", "recording_lines", ["recording_id", "offset_us"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE recording_lines ADD COLUMN tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, "
            "regexp_replace(text, '[^[:alnum:]_]+', ' ', 'g'))) STORED"
        )
        op.execute("CREATE INDEX ix_recording_lines_tsv ON recording_lines USING GIN (tsv)")
    else:
        for statement in SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_recording_lines_tsv")
    else:
        op.execute("DROP TRIGGER IF EXISTS recording_lines_fts_insert")
        op.execute("DROP TRIGGER IF EXISTS recording_lines_fts_delete")
        op.execute("DROP TABLE IF EXISTS recording_lines_fts")
    op.drop_index("ix_recording_lines_recording", table_name="recording_lines")
    op.drop_table("recording_lines")
    op.drop_index("ix_recordings_state_node", table_name="recordings")
    op.drop_index("ix_recordings_started_at", table_name="recordings")
    op.drop_table("recordings")
