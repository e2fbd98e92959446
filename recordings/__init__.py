"""Session recordings: formats, the durable encrypted container, storage, verification.

Owns the terminal and desktop recording formats, the chunked AES-256-GCM, hash-chained,
Ed25519-signed container, crash recovery, search and replay. It never imports ``gateway``:
keys, clock and storage locations are passed in. It does not decide who may view a
recording (that is ``rbac``) and does not audit views (that is ``gateway.audit``).
"""

from recordings.container import Header, Kind
from recordings.events import Event
from recordings.ids import InvalidRecordingId, check_id, new_recording_id
from recordings.keys import (
    DataKeyRing,
    DataKeyStore,
    MasterKey,
    WrappedDataKey,
    rewrap_data_key,
    rotate_master_key,
    signing_key_id,
)
from recordings.recovery import recover_recording
from recordings.store import (
    LocalDataKeyStore,
    LocalRecordingStore,
    RecordingNotFound,
    RecordingSink,
    RecordingStore,
    UnsafePath,
)
from recordings.terminal import TerminalEvent, export_asciicast
from recordings.verify import Integrity, RecordingReader, VerifyResult, verify_recording
from recordings.writer import (
    RECORDING_FAILED,
    CloseOutcome,
    RecordingUnavailable,
    RecordingWriter,
    WriterPolicy,
    start_recording,
)

__all__ = [
    "RECORDING_FAILED",
    "CloseOutcome",
    "DataKeyRing",
    "DataKeyStore",
    "Event",
    "Header",
    "Integrity",
    "InvalidRecordingId",
    "Kind",
    "LocalDataKeyStore",
    "LocalRecordingStore",
    "MasterKey",
    "RecordingNotFound",
    "RecordingReader",
    "RecordingSink",
    "RecordingStore",
    "RecordingUnavailable",
    "RecordingWriter",
    "TerminalEvent",
    "UnsafePath",
    "VerifyResult",
    "WrappedDataKey",
    "WriterPolicy",
    "check_id",
    "export_asciicast",
    "new_recording_id",
    "recover_recording",
    "rewrap_data_key",
    "rotate_master_key",
    "signing_key_id",
    "start_recording",
    "verify_recording",
]
