"""Indexes for the auditors' session history: keyset pages newest first, by user, by asset.

Revision ID: 0011_recordings_history
Revises: 0010_asset_admin

The history page reads ``ORDER BY started_at DESC, id DESC LIMIT n`` after the last row
shown, optionally for one user or one asset. ``(started_at, id)`` serves the unfiltered
page from the index alone (no sort); ``(username, started_at)`` and ``(asset, started_at)``
serve the filtered ones without reading other people's rows. The old single-column
``started_at`` index is kept: retention and recovery use it.
"""

from __future__ import annotations

from alembic import op

revision = "0011_recordings_history"
down_revision = "0010_asset_admin"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_recordings_started_id": ["started_at", "id"],
    "ix_recordings_user_started": ["username", "started_at"],
    "ix_recordings_asset_started": ["asset", "started_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "recordings", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="recordings")
