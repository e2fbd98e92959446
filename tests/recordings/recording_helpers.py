"""Helpers shared by the recordings tests: throwaway keys, a store, a writer shortcut.

A plain module (not conftest) so tests can import it by a name no other package uses."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from recordings import (
    DataKeyRing,
    Event,
    Kind,
    LocalDataKeyStore,
    LocalRecordingStore,
    MasterKey,
    RecordingReader,
    RecordingWriter,
    VerifyResult,
    WriterPolicy,
    signing_key_id,
    start_recording,
    verify_recording,
)
from recordings.container import MAGIC, read_frame

T = TypeVar("T")

STARTED_AT = datetime(2026, 11, 27, 7, 0, 0, tzinfo=UTC)


@dataclass
class Env:
    root: Path
    store: LocalRecordingStore
    key_store: LocalDataKeyStore
    master: MasterKey
    data_keys: DataKeyRing
    signing_key: Ed25519PrivateKey
    verify_keys: dict[str, Ed25519PublicKey]
    failures: list[str]
    format_version: int = 2  # what start()/write() record in: 1 (previous release) or 2

    async def start(
        self,
        *,
        kind: Kind = Kind.TERMINAL,
        policy: WriterPolicy | None = None,
        metadata: dict[str, str] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> RecordingWriter:
        """A recording started at STARTED_AT in this store; failures go to ``self.failures``."""
        return await start_recording(
            store=self.store,
            data_keys=self.data_keys,
            signing_key=self.signing_key,
            kind=kind,
            started_at=STARTED_AT,
            metadata={} if metadata is None else metadata,
            clock=time.monotonic,
            on_failure=self.failures.append if on_failure is None else on_failure,
            policy=policy,
            format_version=self.format_version,
        )

    async def write(
        self,
        events: Iterable[tuple[int, bytes]],
        *,
        end_reason: str = "closed",
        kind: Kind = Kind.TERMINAL,
        policy: WriterPolicy | None = None,
    ) -> str:
        metadata = {"user": "alice", "asset": "plc-eng-01", "cols": "100", "rows": "30"}
        writer = await self.start(kind=kind, policy=policy, metadata=metadata)
        for event_type, payload in events:
            assert writer.record(event_type, payload)
        outcome = await writer.close(end_reason)
        assert outcome.footer_written
        return writer.recording_id

    def path(self, recording_id: str) -> Path:
        return self.store.root / "2026" / "11" / "27" / f"{recording_id}.rec"

    def verify(self, recording_id: str) -> VerifyResult:
        with self.store.open_read(recording_id) as stream:
            return verify_recording(stream, self.data_keys.resolve, self.verify_keys)

    def verify_bytes(self, data: bytes) -> VerifyResult:
        return verify_recording(io.BytesIO(data), self.data_keys.resolve, self.verify_keys)

    def read_bytes(self, data: bytes) -> tuple[list[Event], VerifyResult]:
        reader = RecordingReader(io.BytesIO(data), self.data_keys.resolve, self.verify_keys)
        events = list(reader.events())
        assert reader.result is not None
        return events, reader.result

    def read(self, recording_id: str) -> tuple[list[Event], VerifyResult]:
        with self.store.open_read(recording_id) as stream:
            reader = RecordingReader(stream, self.data_keys.resolve, self.verify_keys)
            events = list(reader.events())
        assert reader.result is not None
        return events, reader.result


def make_env(root: Path, format_version: int = 2) -> Env:
    key_store = LocalDataKeyStore(root / "keys")
    master = MasterKey("m1", bytes(range(32)))
    signing_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    public = signing_key.public_key()
    return Env(
        root=root,
        store=LocalRecordingStore(root / "rec"),
        key_store=key_store,
        master=master,
        data_keys=DataKeyRing(key_store, master),
        signing_key=signing_key,
        verify_keys={signing_key_id(public): public},
        failures=[],
        format_version=format_version,
    )


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(frame type, start offset, end offset) of every frame after MAGIC."""
    stream = io.BytesIO(data)
    stream.seek(len(MAGIC))
    found = []
    while True:
        start = stream.tell()
        frame = read_frame(stream)
        if frame is None:
            return found
        found.append((frame[0], start, stream.tell()))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code (module-level builders used by Hypothesis tests)."""
    return asyncio.run(coro)
