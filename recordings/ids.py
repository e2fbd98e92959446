"""Recording and data-key identifiers: generation from ``secrets`` and strict validation.

An id is 32 lowercase hex digits (128 random bits). Anything else is refused before it can
be used to build a path or a lookup, so ids from user input never reach the filesystem
unchecked. Does not know where recordings are stored (see ``recordings.store``).
"""

from __future__ import annotations

import re
import secrets
from typing import TypeGuard

# fullmatch with an explicit class: no "\d" (Unicode digits), no "$" (accepts a trailing "\n").
_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class InvalidRecordingId(ValueError):
    """Raised for any string that is not a well-formed recording or data-key id."""


def new_recording_id() -> str:
    """Return a fresh random recording id."""
    return secrets.token_hex(16)


def new_data_key_id() -> str:
    """Return a fresh random data-key id (same shape as a recording id, separate namespace)."""
    return secrets.token_hex(16)


def is_valid_id(value: object) -> TypeGuard[str]:
    """True if ``value`` is a str of exactly 32 lowercase hex digits."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


def check_id(value: object) -> str:
    """Return ``value`` if it is a valid id, else raise :class:`InvalidRecordingId`."""
    if not is_valid_id(value):
        # repr() bounded: the value may be hostile and huge.
        raise InvalidRecordingId(f"invalid id {str(value)[:80]!r}")
    return value
