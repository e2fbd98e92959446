"""``conduit recordings verify|export|list|search|retention`` handlers, driven through the
parser they ship with (in-process: ``gateway.cli.main`` wires them separately)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from gateway.audit import AuditLog
from gateway.cli.common import common_parser as _common
from gateway.cli.recordings import add_recordings_commands, describe
from gateway.config import Overrides, load_settings
from gateway.db import migrate
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import ConduitError
from gateway.keys import load_keyring
from gateway.recorder import RecordingService, SessionInfo
from recordings import (
    DataKeyRing,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    signing_key_id,
    verify_recording,
)
from recordings.terminal import TerminalEvent, resize_payload
from tests.support import clean_env, conduit

INFO = SessionInfo(username="bob", asset="hmi-02", protocol="ssh", session_id="s-9")


def frame_offsets(raw: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of every frame after the magic (FORMAT.md: type u8, length u32, crc)."""
    frames, pos = [], 8
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos + 1 : pos + 5])[0]
        frames.append((raw[pos : pos + 1], pos, pos + 9 + length))
        pos += 9 + length
    return frames


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="conduit")
    add_recordings_commands(parser.add_subparsers(dest="command", required=True), _common())
    args = parser.parse_args(list(argv))
    code: int = args.handler(args)
    return code


class Site:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.settings = load_settings(None, Overrides(data_dir=data))
        self.keys = load_keyring(self.settings)
        self.now = dt.datetime.now(dt.UTC)

    async def _record(self, outputs: list[bytes], started: dt.datetime) -> str:
        engine = make_engine(self.settings)
        try:
            await migrate.upgrade(engine)
            sessions = make_sessionmaker(engine)

            def clock() -> dt.datetime:
                return started

            audit = AuditLog(sessions, self.keys.signing_key, clock)
            service = RecordingService.from_settings(
                self.settings, self.keys, sessions, clock, audit
            )
            writer = await service.start(INFO, kind=Kind.TERMINAL, on_failure=print)
            writer.record(TerminalEvent.RESIZE, resize_payload(100, 30))
            for payload in outputs:
                writer.record(TerminalEvent.OUTPUT, payload)
            return (await service.close(writer, "closed")).id
        finally:
            await engine.dispose()

    def record(self, outputs: list[bytes], started: dt.datetime | None = None) -> str:
        return asyncio.run(self._record(outputs, started or self.now))

    async def _recover(self, recording_id: str) -> None:
        engine = make_engine(self.settings)
        try:
            sessions = make_sessionmaker(engine)
            async with sessions() as db, db.begin():
                await db.execute(
                    text("UPDATE recordings SET state='open' WHERE id=:i"), {"i": recording_id}
                )
            audit = AuditLog(sessions, self.keys.signing_key, lambda: self.now)
            service = RecordingService.from_settings(
                self.settings, self.keys, sessions, lambda: self.now, audit
            )
            await service.recover_open()
        finally:
            await engine.dispose()

    def crash_and_recover(self, recording_id: str) -> None:
        """As after a crash: the footer is gone and the catalog still says open; recover."""
        raw = self.path_of(recording_id).read_bytes()
        _, footer, _ = frame_offsets(raw)[-1]
        self.path_of(recording_id).write_bytes(raw[:footer])
        asyncio.run(self._recover(recording_id))

    def path_of(self, recording_id: str) -> Path:
        (path,) = self.settings.recordings_dir.glob(f"*/*/*/{recording_id}.rec")
        return path

    def audit_actions(self) -> list[tuple[str, str, str]]:
        async def read() -> list[tuple[str, str, str]]:
            engine = make_engine(self.settings)
            try:
                log = AuditLog(make_sessionmaker(engine), self.keys.signing_key, dt.datetime.now)
                return [(e.action, e.result, e.target) async for e in log.events()]
            finally:
                await engine.dispose()

        return asyncio.run(read())


@pytest.fixture
def site(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    data = tmp_path / "data"
    assert conduit("init", "--data-dir", str(data), env=clean_env()).returncode == 0
    for name in [k for k in os.environ if k.startswith("CONDUIT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONDUIT_DATABASE__URL", database_url)
    return Site(data)


def test_verify_names_tampered_chunk_and_exits_non_zero(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    good = site.record([b"fine\r\n"], started=site.now - dt.timedelta(minutes=1))
    bad = site.record([b"a" * 70_000, b"b" * 1000])
    assert run("recordings", "verify", good, "--data-dir", str(site.data)) == 0
    assert capsys.readouterr().out.startswith(f"{good} intact (format 2, BLAKE3; 1 chunks")
    path = site.path_of(bad)
    data = bytearray(path.read_bytes())
    chunks = [(start, end) for kind, start, end in frame_offsets(bytes(data)) if kind == b"C"]
    data[(chunks[1][0] + chunks[1][1]) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert run("recordings", "verify", bad, "--data-dir", str(site.data)) == 1
    assert capsys.readouterr().out.startswith(f"{bad} tampered (chunk 1:")
    assert run("recordings", "verify", "--all", "--data-dir", str(site.data)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"[1/2] {good} intact")
    assert lines[1].startswith(f"[2/2] {bad} tampered (chunk 1:")
    assert lines[2] == "verified 2 recording(s), 1 with problems: 1 intact, 1 tampered"
    assert ("recording.verify", "failure", "") in site.audit_actions()
    # The same through the installed command, as an operator runs it.
    env = clean_env(CONDUIT_DATABASE__URL=os.environ["CONDUIT_DATABASE__URL"])
    real = conduit("recordings", "verify", "--all", "--data-dir", str(site.data), env=env)
    assert real.returncode == 1, real.stderr
    assert f"{bad} tampered (chunk 1:" in real.stdout


def test_verify_reports_truncated_and_rejects_bad_ids(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    recording_id = site.record([b"a" * 70_000, b"b" * 70_000, b"c"])
    path = site.path_of(recording_id)
    raw = path.read_bytes()
    frames = frame_offsets(raw)
    assert [kind for kind, _, _ in frames] == [b"H", b"C", b"C", b"C", b"F"]
    _, last_chunk, _ = frames[3]
    _, footer, _ = frames[4]
    # Drop the last chunk but keep the signed footer: the footer counts a missing chunk.
    path.write_bytes(raw[:last_chunk] + raw[footer:])
    assert run("recordings", "verify", recording_id, "--data-dir", str(site.data)) == 1
    assert "truncated (1 chunk(s) missing; format 2, BLAKE3)" in capsys.readouterr().out
    with pytest.raises(ConduitError, match="invalid id"):
        run("recordings", "verify", "../etc/passwd", "--data-dir", str(site.data))


def test_closed_recording_cut_before_its_footer_is_truncated_and_exits_non_zero(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The catalog says these were closed: a missing footer is a cut, not a crash."""
    no_footer = site.record([b"a" * 70_000, b"b"])
    no_tail = site.record([b"c" * 70_000, b"d" * 70_000, b"e"])
    raw = site.path_of(no_footer).read_bytes()
    _, footer, _ = frame_offsets(raw)[-1]
    site.path_of(no_footer).write_bytes(raw[:footer])
    raw = site.path_of(no_tail).read_bytes()
    _, last_chunk, _ = frame_offsets(raw)[-2]
    site.path_of(no_tail).write_bytes(raw[:last_chunk])
    for recording_id in (no_footer, no_tail):
        assert run("recordings", "verify", recording_id, "--data-dir", str(site.data)) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"{recording_id} truncated (") and "no footer" in out, out
    assert run("recordings", "verify", "--all", "--data-dir", str(site.data)) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "verified 2 recording(s), 2 with problems: 2 truncated"
    )
    # An export hands out what authenticated, and says (and exits) that it was cut.
    out = tmp_path / "cut.cast"
    export = ["recordings", "export", no_footer, "--output", str(out)]
    assert run(*export, "--data-dir", str(site.data)) == 1
    assert "truncated (closed recording has no footer" in capsys.readouterr().err


def test_crash_recovered_recording_is_incomplete_in_the_summary_and_exit_code(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    good = site.record([b"fine\r\n"], started=site.now - dt.timedelta(minutes=1))
    crashed = site.record([b"a" * 70_000, b"b"])
    site.crash_and_recover(crashed)
    assert run("recordings", "verify", good, "--data-dir", str(site.data)) == 0
    assert run("recordings", "verify", crashed, "--data-dir", str(site.data)) == 1
    assert f"{crashed} incomplete (" in capsys.readouterr().out
    assert run("recordings", "verify", "--all", "--data-dir", str(site.data)) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "verified 2 recording(s), 1 with problems: 1 intact, 1 incomplete"
    )


def test_export_asciicast_is_parsable_and_audited(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording_id = site.record([b"$ echo h\xc3", b"\xa9llo\r\nh\xc3\xa9llo\r\n"])
    out = tmp_path / "session.cast"
    code = run(
        "recordings", "export", recording_id, "--output", str(out), "--data-dir", str(site.data)
    )
    assert code == 0
    header, *events = [json.loads(line) for line in out.read_text().splitlines()]
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    assert all(kind == "o" and isinstance(t, float) for t, kind, _ in events)
    assert "".join(text for _, _, text in events) == "$ echo héllo\r\nhéllo\r\n"
    assert out.stat().st_mode & 0o777 == 0o600
    assert ("recording.download", "success", recording_id) in site.audit_actions()
    raw = tmp_path / "session.raw"
    assert run("recordings", "export", recording_id, "--format", "raw", "--output", str(raw),
               "--data-dir", str(site.data)) == 0  # fmt: skip
    assert raw.read_bytes() == "$ echo héllo\r\nhéllo\r\n".encode()
    assert "exported" in capsys.readouterr().err


def test_list_search_and_retention(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    old = site.record([b"ancient\r\n"], started=site.now - dt.timedelta(days=100))
    new = site.record([b"$ systemctl status historian\r\n"])
    assert run("recordings", "list", "--data-dir", str(site.data)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(new) and out[2].startswith(old) and "closed/intact" in out[1]
    assert out[0].split()[-3:] == ["OUTPUT", "STORED", "STATE/INTEGRITY"]
    # Output bytes as recorded, stored bytes as the file is, side by side.
    output, stored = out[1].split()[-3:-1]
    assert int(output) == 4 + len(b"$ systemctl status historian\r\n")  # resize + output
    assert int(stored) == site.path_of(new).stat().st_size
    assert run("recordings", "search", "historian", "--data-dir", str(site.data)) == 0
    assert re.fullmatch(
        rf"{new} +\d+\.\d{{3}}s \$ systemctl status \[historian\]\n", capsys.readouterr().out
    )
    os.environ["CONDUIT_RECORDINGS__RETENTION_DAYS"] = "30"
    try:
        assert run("recordings", "retention", "--data-dir", str(site.data)) == 0
    finally:
        del os.environ["CONDUIT_RECORDINGS__RETENTION_DAYS"]
    assert capsys.readouterr().out == f"deleted {old}\n"
    assert ("recording.delete", "success", old) in site.audit_actions()
    with pytest.raises(ConduitError, match=f"no recording {old}"):
        run("recordings", "verify", old, "--data-dir", str(site.data))


def test_verify_line_names_format_and_hash_of_a_previous_release_recording(
    tmp_path: Path,
) -> None:
    """The committed format-1 recording (tests/recordings/fixtures) reads as format 1, SHA-256."""
    fixture = Path(__file__).resolve().parent / "recordings" / "fixtures" / "v1"
    recording_id = (fixture / "recording_id").read_text().strip()
    shutil.copytree(fixture, tmp_path / "v1")
    for key in (tmp_path / "v1" / "keys").iterdir():
        key.chmod(0o600)
    (tmp_path / "v1" / "keys").chmod(0o700)
    master = MasterKey("m1", bytes(range(32)))
    ring = DataKeyRing(LocalDataKeyStore(tmp_path / "v1" / "keys"), master)
    public = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))).public_key()
    store = LocalRecordingStore(tmp_path / "v1" / "rec")
    with store.open_read(recording_id) as stream:
        result = verify_recording(stream, ring.resolve, {signing_key_id(public): public})
    assert describe(result) == "intact (format 1, SHA-256; 13 chunks, end reason closed)"
