"""Full-text search over interpreted terminal text: store lines, find words, return hits.

Lines come from ``recordings.screen`` with their time offsets; a hit is (recording id,
time offset, snippet) so an auditor can jump straight to it in the player. PostgreSQL
matches with ``plainto_tsquery('simple', ...)`` against a generated tsvector (GIN index);
SQLite with FTS5, the query reduced to quoted words so FTS5 syntax cannot be injected.
Both mean "every word, in any order". PostgreSQL's parser would keep ``password.txt`` or
``plc-eng-01`` as one token, so its tsvector is built from the text with punctuation turned
into spaces, which splits words the way FTS5's unicode61 tokenizer does. Does not interpret
escape sequences (the screen interpreter does) and does not decide who may search.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.recorder.tables import RecordingLineRow
from recordings.screen import TextLine

MAX_LINE_CHARS = 2000
MAX_QUERY_WORDS = 16
SNIPPET_CHARS = 160
INSERT_BATCH = 1000
_WORD = re.compile(r"\w+")

_PG_SEARCH = text(
    "SELECT l.recording_id, l.offset_us, l.text, r.started_at "
    "FROM recording_lines AS l JOIN recordings AS r ON r.id = l.recording_id, "
    "plainto_tsquery('simple', :query) AS q "
    "WHERE l.tsv @@ q ORDER BY r.started_at DESC, l.recording_id, l.offset_us, l.id LIMIT :limit"
)
_SQLITE_SEARCH = text(
    "SELECT l.recording_id, l.offset_us, l.text, r.started_at "
    "FROM recording_lines_fts JOIN recording_lines AS l ON l.id = recording_lines_fts.rowid "
    "JOIN recordings AS r ON r.id = l.recording_id "
    "WHERE recording_lines_fts MATCH :query "
    "ORDER BY r.started_at DESC, l.recording_id, l.offset_us, l.id LIMIT :limit"
)


@dataclass(frozen=True)
class SearchHit:
    recording_id: str
    offset_us: int
    snippet: str
    recording_started_at: dt.datetime

    @property
    def offset_seconds(self) -> float:
        return self.offset_us / 1_000_000


async def index_lines(db: AsyncSession, recording_id: str, lines: Iterable[TextLine]) -> int:
    """Insert the lines of one recording; returns how many were stored."""
    batch: list[dict[str, object]] = []
    count = 0
    for line in lines:
        batch.append(
            {
                "recording_id": recording_id,
                "offset_us": line.offset_us,
                "text": line.text[:MAX_LINE_CHARS],
            }
        )
        if len(batch) >= INSERT_BATCH:
            await db.execute(insert(RecordingLineRow), batch)
            count += len(batch)
            batch = []
    if batch:
        await db.execute(insert(RecordingLineRow), batch)
        count += len(batch)
    return count


def fts5_query(query: str) -> str:
    """Every word of ``query`` as an FTS5 string literal, implicitly ANDed."""
    words = _WORD.findall(query)[:MAX_QUERY_WORDS]
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


async def search_text(db: AsyncSession, query: str, *, limit: int = 100) -> list[SearchHit]:
    """Lines containing every word of ``query``, newest recording first, then by offset."""
    words: list[str] = _WORD.findall(query)[:MAX_QUERY_WORDS]
    if not words:
        return []
    if db.get_bind().dialect.name == "postgresql":
        result = await db.execute(_PG_SEARCH, {"query": " ".join(words), "limit": limit})
    else:
        result = await db.execute(_SQLITE_SEARCH, {"query": fts5_query(query), "limit": limit})
    hits = []
    for recording_id, offset_us, line, started_at in result.all():
        if isinstance(started_at, str):  # raw SQL on SQLite bypasses the column type
            started_at = dt.datetime.fromisoformat(started_at)
        if started_at.tzinfo is None:
            started_at = started_at.replace(tzinfo=dt.UTC)
        hits.append(SearchHit(str(recording_id), int(offset_us), snippet(line, words), started_at))
    return hits


def snippet(line: str, words: list[str], width: int = SNIPPET_CHARS) -> str:
    """The line around the first hit, every query word in ``[brackets]``.

    Built here rather than by ``snippet()``/``ts_headline`` so both databases show the same
    thing, from the original text (punctuation kept).
    """
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    first = pattern.search(line)
    start = max(0, (first.start() if first else 0) - width // 3)
    cut = line[start : start + width]
    marked = pattern.sub(lambda m: f"[{m.group()}]", cut)
    return ("..." if start else "") + marked + ("..." if start + width < len(line) else "")
