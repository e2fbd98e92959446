"""Recording keys: per-recording data keys wrapped by a master key, and master-key rotation.

Each recording is encrypted with its own random 256-bit data key. The data key is stored
only wrapped (AES-256-GCM under a master key, bound to both key ids), outside the recording,
so rotating the master key rewraps small key records and never rewrites a recording.
Also derives the signing-key id that headers carry. Does not load keys from files or
environment variables (the gateway does) and does not choose where wrapped keys live
(see ``recordings.store``).
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recordings.ids import check_id, new_data_key_id

KEY_BYTES = 32
_NONCE_BYTES = 12
_WRAP_CONTEXT = b"conduit recording data-key wrap v1\x00"
_MASTER_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RecordingKeyError(Exception):
    """Base for data-key problems."""


class UnknownKey(RecordingKeyError):
    """A wrapped key names a master key (or a data key id) we do not have."""


class UnwrapFailed(RecordingKeyError):
    """The wrapped data key does not authenticate under the named master key."""


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A 256-bit master key and its id. ``repr`` never shows the key bytes."""

    key_id: str
    key: bytes

    def __post_init__(self) -> None:
        if _MASTER_KEY_ID.fullmatch(self.key_id) is None:
            raise ValueError("master key id must match [A-Za-z0-9._-]{1,64}")
        if len(self.key) != KEY_BYTES:
            raise ValueError("master key must be 32 bytes")

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"


@dataclass(frozen=True)
class WrappedDataKey:
    """A data key encrypted under a master key; safe to store in plain sight."""

    data_key_id: str
    master_key_id: str
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": 1,
                "data_key_id": self.data_key_id,
                "master_key_id": self.master_key_id,
                "nonce": self.nonce.hex(),
                "ciphertext": self.ciphertext.hex(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WrappedDataKey:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("unsupported wrapped-key record")
        return cls(
            data_key_id=check_id(doc["data_key_id"]),
            master_key_id=str(doc["master_key_id"]),
            nonce=bytes.fromhex(doc["nonce"]),
            ciphertext=bytes.fromhex(doc["ciphertext"]),
        )


def _aad(master_key_id: str, data_key_id: str) -> bytes:
    # Binding both ids stops a wrapped key being swapped in under another id.
    return _WRAP_CONTEXT + master_key_id.encode() + b"\x00" + data_key_id.encode()


def wrap_data_key(master: MasterKey, data_key_id: str, data_key: bytes) -> WrappedDataKey:
    """Encrypt ``data_key`` under ``master``."""
    check_id(data_key_id)
    if len(data_key) != KEY_BYTES:
        raise ValueError("data key must be 32 bytes")
    nonce = os.urandom(_NONCE_BYTES)
    ct = AESGCM(master.key).encrypt(nonce, data_key, _aad(master.key_id, data_key_id))
    return WrappedDataKey(data_key_id, master.key_id, nonce, ct)


def unwrap_data_key(masters: Mapping[str, MasterKey], wrapped: WrappedDataKey) -> bytes:
    """Decrypt a wrapped data key with whichever master key it names."""
    master = masters.get(wrapped.master_key_id)
    if master is None:
        raise UnknownKey(f"no master key {wrapped.master_key_id!r}")
    try:
        return AESGCM(master.key).decrypt(
            wrapped.nonce, wrapped.ciphertext, _aad(master.key_id, wrapped.data_key_id)
        )
    except InvalidTag as exc:
        raise UnwrapFailed(f"data key {wrapped.data_key_id} does not unwrap") from exc


def rewrap_data_key(
    masters: Mapping[str, MasterKey], wrapped: WrappedDataKey, new_master: MasterKey
) -> WrappedDataKey:
    """Re-encrypt one data key under ``new_master``; the recording itself is untouched."""
    return wrap_data_key(new_master, wrapped.data_key_id, unwrap_data_key(masters, wrapped))


class DataKeyStore(ABC):
    """Where wrapped data keys live. A local directory today, object storage later."""

    @abstractmethod
    def put(self, wrapped: WrappedDataKey) -> None:
        """Store a new wrapped key; refuse to overwrite an existing id."""

    @abstractmethod
    def replace(self, wrapped: WrappedDataKey) -> None:
        """Atomically replace an existing wrapped key (used by rotation)."""

    @abstractmethod
    def get(self, data_key_id: str) -> WrappedDataKey:
        """Return the wrapped key; raise :class:`UnknownKey` if absent."""

    @abstractmethod
    def ids(self) -> Iterator[str]:
        """Every stored data-key id."""


def rotate_master_key(
    store: DataKeyStore, masters: Mapping[str, MasterKey], new_master: MasterKey
) -> int:
    """Rewrap every data key not yet under ``new_master``; return how many were rewrapped.

    Safe to re-run after an interruption: keys already under the new master are skipped.
    """
    count = 0
    ring = {**masters, new_master.key_id: new_master}
    for data_key_id in list(store.ids()):
        wrapped = store.get(data_key_id)
        if wrapped.master_key_id == new_master.key_id:
            continue
        store.replace(rewrap_data_key(ring, wrapped, new_master))
        count += 1
    return count


class DataKeyRing:
    """Creates and resolves data keys: the current master wraps, any known master unwraps."""

    def __init__(
        self, store: DataKeyStore, current: MasterKey, older: Mapping[str, MasterKey] | None = None
    ) -> None:
        self._store = store
        self._current = current
        self._masters = {**(older or {}), current.key_id: current}

    def new_data_key(self) -> tuple[str, bytes]:
        """Generate, wrap and store a fresh data key; return (id, key)."""
        data_key_id = new_data_key_id()
        data_key = os.urandom(KEY_BYTES)
        self._store.put(wrap_data_key(self._current, data_key_id, data_key))
        return data_key_id, data_key

    def resolve(self, data_key_id: str) -> bytes:
        """Return the plaintext data key for ``data_key_id``."""
        return unwrap_data_key(self._masters, self._store.get(check_id(data_key_id)))


def signing_key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable id of an Ed25519 public key (first 16 bytes of SHA-256, hex)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(raw)
    return digest.finalize()[:16].hex()
