"""Small secrets sealed under the master key (AES-256-GCM, context-bound).

Used for TOTP secrets and, later, vaulted credentials. The associated data binds a
ciphertext to what it belongs to (e.g. ``b"totp:user:42"``), so a sealed value copied onto
another row does not open. Does not store anything or manage key rotation.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConduitError

VERSION = b"\x01"
NONCE_BYTES = 12


class SealError(ConduitError):
    """A sealed value did not open: wrong key, wrong context, or tampered."""


def seal(master_key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + AESGCM(master_key).encrypt(nonce, plaintext, VERSION + context)


def unseal(master_key: bytes, sealed: bytes, context: bytes) -> bytes:
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != VERSION:
        raise SealError("stored secret is unreadable", "sealed value has a bad version or size")
    nonce = sealed[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(master_key).decrypt(nonce, sealed[1 + NONCE_BYTES :], VERSION + context)
    except InvalidTag:
        raise SealError(
            "stored secret is unreadable", "sealed value failed authentication"
        ) from None
