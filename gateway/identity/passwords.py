"""Password hashing with argon2id, and the password policy.

Hashing uses argon2-cffi's RFC 9106 low-memory profile (its defaults: t=3, m=64 MiB, p=4);
``needs_rehash`` tells a login to upgrade an older hash transparently. The policy refuses
short passwords, passwords from the shipped common-password list and passwords containing
the username. Does not count failures or know about logins.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.config import PasswordSettings
from gateway.errors import ConduitError

_hasher = PasswordHasher()  # argon2id with the library's current RFC 9106 parameters
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
# Long enough for any passphrase, short enough that hashing it is not a denial of service.
MAX_PASSWORD_LENGTH = 1024


class PasswordPolicyError(ConduitError):
    """A new password does not meet the policy; the message says which rule."""


def hash_slots() -> int:
    """How many argon2 computations to run at once: enough to keep this process's CPUs
    busy, as each one already runs ``parallelism`` lanes in threads (4), and no more.

    More only share the CPUs: each login then waits for the whole burst instead of its turn
    (bench/ssh_relay.py, 50 password + code logins at once on 2 CPUs: median 0.83x
    ProxyJump with 1 at a time, 1.42x with 4), and every one holds 64 MiB meanwhile.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // _hasher.parallelism)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
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


def verify_or_dummy(stored_hash: str | None, password: str) -> bool:
    """Verify against ``stored_hash``, or spend the same time on a dummy hash and fail."""
    if len(password) > MAX_PASSWORD_LENGTH:
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
        lowered = password.lower()
        if self.reject_common and lowered in self.common:
            raise PasswordPolicyError("password is too common: choose another")
        if username and username.lower() in lowered:
            raise PasswordPolicyError("password must not contain the username")
