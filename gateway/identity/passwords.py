"""Password hashing with argon2id, and the password policy.

Hashing uses argon2-cffi's RFC 9106 low-memory profile (its defaults: t=3, m=64 MiB, p=4);
``needs_rehash`` tells a login to upgrade an older hash transparently. The policy refuses
short passwords, passwords from the shipped common-password list and passwords containing
the username. Does not count failures or know about logins.

A hash with the current parameters is verified in memory kept resident between logins
(``_Resident``): the same argon2id computation, but the kernel does not fault in and zero a
fresh 64 MiB for every login, and the lanes run on at most this process's CPUs. Anything
else (older parameters, another variant) goes to argon2-cffi's own verifier.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION, Type, core, ffi

from gateway.config import PasswordSettings
from gateway.errors import ConduitError

log = logging.getLogger(__name__)
_hasher = PasswordHasher()  # argon2id with the library's current RFC 9106 parameters
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
# Long enough for any passphrase, short enough that hashing it is not a denial of service.
MAX_PASSWORD_LENGTH = 1024


class PasswordPolicyError(ConduitError):
    """A new password does not meet the policy; the message says which rule."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def hash_threads() -> int:
    """Threads one verification runs its lanes on: the lanes (4), but no more than CPUs.

    The lanes fix the result; threads only share the work. Four threads on 2 CPUs took 95 ms
    and 140 ms of CPU per verification here, two took 83 ms and 154 ms (resident memory).
    """
    return max(1, min(_hasher.parallelism, _cpus()))


def hash_slots() -> int:
    """How many argon2 computations to run at once: enough to keep this process's CPUs
    busy, as each one already runs ``hash_threads()`` threads, and no more.

    More only share the CPUs: each login then waits for the whole burst instead of its turn
    (bench/ssh_relay.py, 50 password + code logins at once on 2 CPUs: median 0.83x
    ProxyJump with 1 at a time, 1.42x with 4), and every one holds 64 MiB meanwhile.
    """
    return max(1, _cpus() // hash_threads())


def hash_password(password: str) -> str:
    return _hasher.hash(password)


# The PHC string argon2 writes: variant, version, parameters, salt and hash in unpadded
# standard base64. Only this exact form, with the current parameters, is verified here.
_ENCODED = re.compile(
    r"\$argon2id\$v=([1-9]\d{0,2})\$m=([1-9]\d{0,9}),t=([1-9]\d{0,9}),p=([1-9]\d{0,2})"
    r"\$([A-Za-z0-9+/]{11,86})\$([A-Za-z0-9+/]{22,86})"
)
# argon2.h's codes (argon2-cffi does not export its ``lib`` to type checkers; a test pins them)
ARGON2_OK = 0
ARGON2_MEMORY_ALLOCATION_ERROR = -22
ARGON2_DEFAULT_FLAGS = 0
_local = threading.local()  # the resident buffer of the verification this thread runs


def _allocate(memory: Any, size: int) -> int:
    """argon2's allocation: the calling thread's resident buffer, if it is the right size."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or ffi.sizeof(buffer) != size:
        return ARGON2_MEMORY_ALLOCATION_ERROR
    memory[0] = buffer
    return ARGON2_OK


def _keep(memory: Any, size: int) -> None:
    """argon2's release: it has already wiped the blocks (tested); the buffer stays."""


try:
    _ALLOCATE = ffi.callback("int(uint8_t **, size_t)")(_allocate)
    _KEEP = ffi.callback("void(uint8_t *, size_t)")(_keep)
except MemoryError:  # no write+execute memory for callbacks (hardened kernels): library only
    _ALLOCATE = _KEEP = None


def _unpadded_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


class _Resident:
    """Verifies hashes made with the current parameters in buffers kept between logins.

    At most ``buffers`` run here at once (the login semaphore's slots); a caller that finds
    none free, or a hash this cannot take, gets ``None`` and argon2-cffi's verifier.
    """

    def __init__(self, hasher: PasswordHasher, buffers: int, threads: int) -> None:
        self._hasher = hasher
        self._threads = min(threads, hasher.parallelism)  # more threads than lanes idle
        self._size = hasher.memory_cost * 1024
        self._free: list[Any] = []
        self._made = 0
        self._most = buffers
        self._lock = threading.Lock()

    def _take(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._made >= self._most:
                return None
            self._made += 1
        return ffi.new("uint8_t[]", self._size)

    def _give_back(self, buffer: Any) -> None:
        with self._lock:
            self._free.append(buffer)

    def _parse(self, stored_hash: str) -> tuple[bytes, bytes] | None:
        """(salt, hash) when ``stored_hash`` is argon2id v19 with the current parameters."""
        match = _ENCODED.fullmatch(stored_hash)
        if match is None:
            return None
        version, memory, time, lanes = (int(match.group(n)) for n in range(1, 5))
        current = self._hasher
        if (version, memory, time, lanes) != (
            ARGON2_VERSION,
            current.memory_cost,
            current.time_cost,
            current.parallelism,
        ):
            return None
        # The pattern's lengths give a salt of at least 8 bytes and a hash of at least 16.
        salt, digest = _unpadded_b64(match.group(5)), _unpadded_b64(match.group(6))
        if salt is None or digest is None:
            return None
        return salt, digest

    def verify(self, stored_hash: str, password: str) -> bool | None:
        """True or False, or None: not verified here, ask argon2-cffi."""
        parsed = self._parse(stored_hash)
        if parsed is None or _ALLOCATE is None:
            return None
        salt, digest = parsed
        buffer = self._take()
        if buffer is None:
            return None
        secret = password.encode("utf-8")
        out = ffi.new("uint8_t[]", len(digest))
        context = ffi.new(
            "argon2_context *",
            {
                "out": out,
                "outlen": len(digest),
                "pwd": ffi.from_buffer(secret),
                "pwdlen": len(secret),
                "salt": ffi.from_buffer(salt),
                "saltlen": len(salt),
                "secret": ffi.NULL,
                "secretlen": 0,
                "ad": ffi.NULL,
                "adlen": 0,
                "t_cost": self._hasher.time_cost,
                "m_cost": self._hasher.memory_cost,
                "lanes": self._hasher.parallelism,
                "threads": self._threads,
                "version": ARGON2_VERSION,
                "allocate_cbk": _ALLOCATE,
                "free_cbk": _KEEP,
                "flags": ARGON2_DEFAULT_FLAGS,
            },
        )
        _local.buffer = buffer
        try:
            result = core(context, Type.ID.value)
        finally:
            _local.buffer = None
            self._give_back(buffer)
        if result != ARGON2_OK:
            log.warning("resident argon2 verification failed (code %d): library verifier", result)
            return None
        return hmac.compare_digest(bytes(ffi.buffer(out)), digest)


_resident = _Resident(_hasher, buffers=hash_slots(), threads=hash_threads())


def verify_password(stored_hash: str, password: str) -> bool:
    resident = _resident.verify(stored_hash, password)
    if resident is not None:
        return resident
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


@functools.cache
def _dummy_hash() -> str:
    # A real hash with the current parameters, of a password nobody knows: verifying
    # against it costs what verifying a real user's hash costs.
    return _hasher.hash(secrets.token_urlsafe(32))


def is_text(password: str) -> bool:
    """False for a string with lone surrogates: bytes that were not UTF-8, read through
    ``surrogateescape`` (stdin in the C locale). Such a password can be neither hashed nor
    held by any stored hash."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def verify_or_dummy(stored_hash: str | None, password: str) -> bool:
    """Verify against ``stored_hash``, or spend the same time on a dummy hash and fail.

    Passwords no stored hash can match (too long, not text) fail at once."""
    if len(password) > MAX_PASSWORD_LENGTH or not is_text(password):
        return False
    if stored_hash is None:
        verify_password(_dummy_hash(), password)
        return False
    return verify_password(stored_hash, password)


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip())


@dataclass(frozen=True)
class PasswordPolicy:
    """Rules for new passwords; ``from_settings`` reads them from the [passwords] section."""

    min_length: int = 12
    reject_common: bool = True
    common: frozenset[str] = field(default_factory=common_passwords, repr=False)

    @classmethod
    def from_settings(cls, settings: PasswordSettings) -> PasswordPolicy:
        return cls(min_length=settings.min_length, reject_common=settings.reject_common)

    def check(self, password: str, username: str = "") -> None:
        """Raise ``PasswordPolicyError`` naming the first rule ``password`` breaks."""
        if len(password) < self.min_length:
            raise PasswordPolicyError(f"password must be at least {self.min_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordPolicyError(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        if not is_text(password):
            raise PasswordPolicyError("password must be UTF-8 text")
        lowered = password.lower()
        if self.reject_common and lowered in self.common:
            raise PasswordPolicyError("password is too common: choose another")
        if username and username.lower() in lowered:
            raise PasswordPolicyError("password must not contain the username")
