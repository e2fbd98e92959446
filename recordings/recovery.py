"""Crash recovery: close a recording whose writer died, so it is signed evidence again.

A recording without a footer is verified up to its last intact chunk; the partial tail
(a chunk the crash cut short) is cut off and a footer with end reason ``incomplete`` is
signed. Recovery only ever removes bytes that did not authenticate at the end of the file.
Callers must recover only recordings their own records say were open when the node
stopped: a closed recording whose footer was cut off by an attacker looks the same.
Does not scan for such recordings (the gateway knows which sessions were live).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recordings.container import signed_footer
from recordings.store import RecordingStore
from recordings.verify import (
    INCOMPLETE_REASON,
    DataKeyResolver,
    Integrity,
    VerifyResult,
    verify_recording,
)


def recover_recording(
    store: RecordingStore,
    recording_id: str,
    resolve_data_key: DataKeyResolver,
    signing_key: Ed25519PrivateKey,
    verify_keys: Mapping[str, Ed25519PublicKey],
) -> VerifyResult:
    """Close ``recording_id`` as incomplete if it has no footer; return the final verdict.

    Recordings that are intact, tampered, truncated or already closed are left untouched
    and their verdict is returned. A file that ends before its header cannot be signed
    (there is nothing to bind the signature to) and is also returned as found.
    """
    with store.open_read(recording_id) as stream:
        found = verify_recording(stream, resolve_data_key, verify_keys)
    if found.status is not Integrity.INCOMPLETE or found.signed or found.header is None:
        return found
    footer = signed_footer(
        signing_key,
        found.header.recording_id,
        found.header_digest,
        found.chain_hash,
        found.intact_chunks,
        INCOMPLETE_REASON,
        found.header.format_version,
    )
    sink = store.reopen_for_recovery(recording_id, found.intact_length)
    try:
        sink.write(footer)
        sink.sync()
    finally:
        sink.close()
    with store.open_read(recording_id) as stream:
        return verify_recording(stream, resolve_data_key, verify_keys)
