"""Table shapes of the recordings catalog and its text index, on the shared metadata.

Only shapes: migration ``0005_recordings`` creates them (plus the dialect-specific search
index: a generated tsvector on PostgreSQL, an FTS5 table on SQLite), and the rules live in
``catalog`` and ``search``. Does not hold recording content: that stays encrypted in the
store; only interpreted terminal text is copied here for search.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime

LineId = BigInteger().with_variant(Integer(), "sqlite")

STATE_OPEN = "open"
STATE_CLOSED = "closed"
UNVERIFIED = "unverified"


class RecordingRow(Base):
    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    username: Mapped[str] = mapped_column(String(200))
    asset: Mapped[str] = mapped_column(String(200))
    protocol: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(64))
    # The node whose writer owns the file while it is open: only it may recover it.
    node: Mapped[str] = mapped_column(String(100))
    # ... and which of its worker processes (``conduit serve --workers N``; 0 with one).
    worker: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    data_key_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    end_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # stored: the file's size
    # Event payload bytes the session produced and the writer recorded; None when not known
    # (closed by crash recovery, or recorded before format 2). Compare with size_bytes.
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    integrity: Mapped[str] = mapped_column(String(16), default=UNVERIFIED)
    integrity_detail: Mapped[str] = mapped_column(String(200), default="")
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    indexed_lines: Mapped[int] = mapped_column(Integer, default=0)


class RecordingLineRow(Base):
    __tablename__ = "recording_lines"

    id: Mapped[int] = mapped_column(LineId, primary_key=True, autoincrement=True)
    recording_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("recordings.id", ondelete="CASCADE")
    )
    offset_us: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
