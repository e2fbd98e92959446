"""The audit chain's arithmetic: event values, canonical encoding, hashes, checkpoint messages.

Pure functions and frozen values only: no database, no clock, no I/O. Also holds the guard
that keeps secrets out of event details. Storage lives in ``gateway.audit.log``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConduitError

# The chain starts from a fixed value so the first event is hashed like every other one.
GENESIS_HASH = "0" * 64
# A version tag inside every hashed encoding: a future format change cannot be confused
# with a tampered row.
HASH_VERSION = 1
CHECKPOINT_DOMAIN = b"conduit-audit-checkpoint-v1\n"

RESULTS = ("success", "failure", "denied", "error")
MAX_DETAIL_BYTES = 16 * 1024
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(?:[.:-][a-z0-9_]+)*$")
_FIELD_LIMITS = {"actor": 200, "source": 100, "target": 500}

# Detail keys whose words name secret material. Callers pass identifiers only; a key ending
# in one of the identifier words (``token_id``, ``host_key_fingerprint``) names an
# identifier of a secret, not the secret, and is allowed.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "passphrase", "secret", "token", "code", "key", "otp",
        "totp", "pin", "credential", "credentials", "cookie", "private",
    }
)  # fmt: skip
_IDENTIFIER_WORDS = frozenset({"id", "fingerprint"})


class AuditError(ConduitError):
    """The audit log cannot do what was asked (e.g. checkpoint an empty chain)."""


@dataclass(frozen=True)
class AuditEvent:
    """One audit event as stored: its fields, the previous event's hash and its own."""

    id: int
    time: dt.datetime
    actor: str
    source: str
    action: str
    target: str
    result: str
    detail: str  # canonical JSON text, exactly as hashed
    prev_hash: str
    hash: str

    def detail_object(self) -> dict[str, Any]:
        # A tampered row may hold anything; exports must still show it rather than stop.
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {"unparsed": self.detail}
        return value if isinstance(value, dict) else {"value": value}

    def as_json(self) -> dict[str, Any]:
        """The JSON-lines export form: every stored field, detail as an object."""
        return {
            "id": self.id,
            "time": format_time(self.time),
            "actor": self.actor,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "result": self.result,
            "detail": self.detail_object(),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that event ``event_id`` had hash ``event_hash`` at ``time``."""

    id: int
    event_id: int
    event_hash: str
    time: dt.datetime
    key_id: str
    signature: bytes


def format_time(when: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds: the one textual form used in hashes and exports."""
    if when.tzinfo is None:
        raise ValueError("naive datetime in the audit log")
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(
    *,
    id: int,
    time: dt.datetime,
    actor: str,
    source: str,
    action: str,
    target: str,
    result: str,
    detail: str,
    prev_hash: str,
) -> bytes:
    # JSON with sorted keys and no whitespace: unambiguous (strings are quoted and
    # escaped, so no field can spill into the next) and easy to reproduce outside Python.
    fields = {
        "v": HASH_VERSION,
        "id": id,
        "time": format_time(time),
        "actor": actor,
        "source": source,
        "action": action,
        "target": target,
        "result": result,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(**fields: Any) -> str:
    return hashlib.sha256(canonical_bytes(**fields)).hexdigest()


def recompute_hash(event: AuditEvent) -> str:
    return event_hash(
        id=event.id,
        time=event.time,
        actor=event.actor,
        source=event.source,
        action=event.action,
        target=event.target,
        result=event.result,
        detail=event.detail,
        prev_hash=event.prev_hash,
    )


def checkpoint_message(event_id: int, event_hash: str, time: dt.datetime) -> bytes:
    return CHECKPOINT_DOMAIN + f"{event_id}\n{event_hash}\n{format_time(time)}".encode()


def _words(key: str) -> list[str]:
    # camelCase and snake/kebab case alike: "apiToken" and "api_token" both hold "token".
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _check_keys(value: object, path: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise ValueError(f"audit detail key {key!r} at {path or 'top'} is not a string")
            words = _words(key)
            if words and words[-1] not in _IDENTIFIER_WORDS and _SECRET_WORDS.intersection(words):
                raise ValueError(
                    f"audit detail key {path}{key!r} looks like a secret; pass identifiers only"
                )
            _check_keys(inner, f"{path}{key}.")
    elif isinstance(value, list | tuple):
        for inner in value:
            _check_keys(inner, path)


def encode_detail(detail: Mapping[str, object] | None) -> str:
    """Canonical JSON text for ``detail``; ``ValueError`` for secret-like keys or oversize."""
    if detail is None:
        return "{}"
    _check_keys(detail, "")
    try:
        text = json.dumps(
            detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except TypeError as exc:
        raise ValueError(f"audit detail is not plain JSON: {exc}") from None
    if len(text.encode()) > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail is larger than {MAX_DETAIL_BYTES} bytes")
    return text


def clean_text(value: str, limit: int) -> str:
    """Escape control characters and cap the length of a caller-supplied field.

    Actor, source and target often come from the network (a username typed at a login
    prompt). Refusing odd values would let an attacker keep a failed login out of the log,
    so they are made inert instead: a control character cannot start a forged line in a
    syslog file, and the cut is marked.
    """
    escaped = "".join(
        c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" if ord(c) < 256 else "\ufffd"
        for c in value
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "\u2026"


def clean_fields(*, actor: str, source: str, target: str) -> tuple[str, str, str]:
    return (
        clean_text(actor, _FIELD_LIMITS["actor"]),
        clean_text(source, _FIELD_LIMITS["source"]),
        clean_text(target, _FIELD_LIMITS["target"]),
    )


def check_code_fields(*, actor: str, action: str, result: str) -> None:
    """Action and result come from Conduit's own code: a wrong one is a bug, so it raises."""
    if not _ACTION.match(action) or len(action) > 64:
        raise ValueError(f"audit action {action!r} is not like 'login.failure'")
    if result not in RESULTS:
        raise ValueError(f"audit result {result!r} is not one of {', '.join(RESULTS)}")
    if not actor:
        raise ValueError("audit actor is empty: use 'system' or 'anonymous'")
