"""Schema migrations: apply them, and check at start that the schema is current.

Alembic runs on a connection we hand it (``config.attributes``) so one code path serves
SQLite and PostgreSQL, the CLI and the tests. Does not create the database server or file
permissions beyond what the driver does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import SchemaError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("no migrations found")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, progress: Callable[[str], None] | None = None) -> list[str]:
    """Apply every pending migration; returns the revisions applied, in order."""
    script = ScriptDirectory.from_config(alembic_config())
    before = await current_revision(engine)
    pending = [
        rev.revision
        for rev in reversed(list(script.walk_revisions("base", "heads")))
        if before is None or rev.revision not in _ancestors(script, before)
    ]

    def _run(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), "head")

    total = len(pending)
    if progress is not None:
        progress(f"{total} migration(s) to apply" if total else "schema is current")
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    if progress is not None:
        for index, rev in enumerate(pending, 1):
            progress(f"[{index}/{total}] applied {rev}")
    return pending


def _ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    return {rev.revision for rev in script.iterate_revisions(revision, "base")}


async def require_current(engine: AsyncEngine) -> str:
    """Refuse to serve on a schema that is behind or ahead of this code."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        shown = current or "empty"
        raise SchemaError(
            f"database schema is at {shown}, this Conduit needs {head}: run `conduit db upgrade`"
        )
    return current
