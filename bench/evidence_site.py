"""A throwaway site for the evidence benchmarks: a data directory, recordings, an auditor.

``conduit init`` and ``db upgrade`` make the data directory (SQLite); recordings are written
in this process by the real recordings service and ``RecordingWriter`` (no SSH: output
events are recorded directly, on a stepping clock so a recording of many events spans
minutes of replay time); the auditor is made with the CLI and signed in by a portal session
created in the database, as a login with password and TOTP would (login is
``bench.login``'s subject). A real ``conduit serve`` then reads the same directory. Does not
time anything (``bench.evidence`` does).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from gateway.audit import AuditLog
from gateway.config import Overrides, Settings, load_settings
from gateway.db.models import User
from gateway.identity import portal_sessions
from gateway.keys import load_keyring
from gateway.recorder import catalog
from gateway.recorder.service import RecordingService, SessionInfo
from gateway.services import Services, utc_now
from gateway.web.auth import SESSION_COOKIE
from recordings import Kind
from recordings.terminal import TerminalEvent, resize_payload
from tests.support import conduit, init_data_dir

AUDITOR = "audrey"
PASSWORD = "Bench-Evidence-Passphrase-9"  # noqa: S105 - a throwaway benchmark account
EVENT_BYTES = 64 << 10  # one output event: what a relay hands the recorder per read, at most
STEP_SECONDS = 0.01  # replay time between two recorded events
COLS, ROWS = 120, 40


class SteppingClock:
    """The writer's monotonic clock: moved by the bench, one step per event."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    data_dir: Path
    settings: Settings
    services: Services
    clock: SteppingClock

    @classmethod
    async def create(cls, root: Path) -> Site:
        data_dir = root / "data"
        init_data_dir(data_dir)
        secret = root / "auditor.totp"
        done = conduit("user", "add", AUDITOR, "--role", "auditor", "--password-stdin",
                       "--totp-secret-file", str(secret), "--data-dir", str(data_dir),
                       stdin=PASSWORD + "\n")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        settings = load_settings(None, Overrides(data_dir=data_dir), environ={})
        keys = load_keyring(settings, environ={})
        services = Services.build(settings, keys)
        clock = SteppingClock()
        services.recordings = RecordingService(
            sessions=services.sessions, store_root=settings.recordings_dir,
            master_key=keys.master_key, signing_key=keys.signing_key, clock=utc_now,
            audit=AuditLog(services.sessions, keys.signing_key, utc_now),
            node=settings.server.node_name or socket.gethostname(), monotonic=clock,
        )  # fmt: skip
        return cls(data_dir, settings, services, clock)

    async def close(self) -> None:
        await self.services.close()

    async def record(self, user: str, asset: str, blocks: Callable[[int], bytes | None]) -> str:
        """One terminal recording: a resize, then ``blocks(i)`` as output events until it
        returns None; closed and signed. Small recordings are verified and indexed as the
        service does at close; a large one is verified only (its text is not indexed, so
        the server does not spend the measurement indexing it in the background)."""
        info = SessionInfo(user, asset, "ssh", f"bench-{user}-{asset}")
        self.clock.now = 0.0
        writer = await self.services.recordings.start(
            info, kind=Kind.TERMINAL, on_failure=lambda reason: None
        )
        writer.record(TerminalEvent.RESIZE, resize_payload(COLS, ROWS))
        size, i = 0, 0
        while (block := blocks(i)) is not None:
            self.clock.now += STEP_SECONDS
            await writer.room(32 << 20)
            writer.record(TerminalEvent.OUTPUT, block)
            size, i = size + len(block), i + 1
        if size <= 8 << 20:
            await self.services.recordings.close(writer, "closed")
            return writer.recording_id
        outcome = await writer.close("closed")
        async with self.services.sessions() as db, db.begin():
            file_size = self.services.recordings._file_size(writer.recording_id)
            await catalog.mark_closed(db, writer.recording_id, ended_at=utc_now(),
                                      end_reason=outcome.end_reason, size=file_size,
                                      output=outcome.output_bytes)  # fmt: skip
        await self.services.recordings.verify(writer.recording_id)
        return writer.recording_id

    async def auditor_cookie(self) -> tuple[str, str]:
        """A signed-in auditor's session cookie: (name, value)."""
        async with self.services.sessions() as db, db.begin():
            user_id = await db.scalar(select(User.id).where(User.username == AUDITOR))
            assert user_id is not None  # noqa: S101 - made in create()
            now = utc_now()
            raw = await portal_sessions.create(db, int(user_id), now, now, "127.0.0.1", "bench")
        return SESSION_COOKIE, raw

    def export(self, recording_id: str, out: Path) -> subprocess.CompletedProcess[str]:
        """The baseline: ``conduit recordings export`` of the recording to a file."""
        return conduit("recordings", "export", recording_id, "--output", str(out),
                       "--data-dir", str(self.data_dir), timeout=3600)  # fmt: skip


def big_output(total: int) -> Callable[[int], bytes | None]:
    """Output blocks of ``EVENT_BYTES`` until ``total`` bytes: numbered text lines."""
    line = b" the quick brown fox jumps over the lazy dog; pump 3 pressure nominal\r\n"
    body = line * (EVENT_BYTES // len(line))

    def block(i: int) -> bytes | None:
        if i * EVENT_BYTES >= total:
            return None
        head = f"block {i:08d} starts here\r\n".encode()
        return (head + body)[:EVENT_BYTES]

    return block
