"""Password verification in resident memory (gateway/identity/passwords.py ``_Resident``).

The resident verifier re-implements only the call into argon2, not the algorithm: these
tests hold it to argon2-cffi's own answers, and show that anything it cannot take, and any
failure inside it, ends in argon2-cffi's verifier rather than in a login.
"""

from __future__ import annotations

import threading

import pytest
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ffi

from gateway.identity import passwords
from gateway.identity.passwords import (
    PasswordPolicy,
    PasswordPolicyError,
    _Resident,
    hash_password,
    verify_or_dummy,
    verify_password,
)

CURRENT = PasswordHasher()
PASSWORDS = ("Alice-Sturdy-Passphrase-1", "", "ünïcødé-パスワード", "x" * 1024, "a\x00b")


def library_answer(stored: str, password: str) -> bool:
    try:
        return CURRENT.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


@pytest.fixture(scope="module")
def stored() -> dict[str, str]:
    return {password: hash_password(password) for password in PASSWORDS}


def test_resident_answers_as_argon2_cffi_for_right_and_wrong_passwords(
    stored: dict[str, str],
) -> None:
    resident = _Resident(CURRENT, buffers=1, threads=2)
    for password, encoded in stored.items():
        for attempt in (password, password + "!", password[:-1], password.upper()):
            answer = resident.verify(encoded, attempt)
            assert answer is not None, "a current hash must be verified resident"
            assert answer == library_answer(encoded, attempt) == (attempt == password)


def test_one_buffer_is_reused_and_wiped_after_each_verification(stored: dict[str, str]) -> None:
    resident = _Resident(CURRENT, buffers=1, threads=2)
    for password, encoded in list(stored.items())[:3]:
        assert resident.verify(encoded, password) is True
    assert resident._made == 1 and len(resident._free) == 1
    (buffer,) = resident._free
    assert ffi.sizeof(buffer) == CURRENT.memory_cost * 1024
    # argon2 wipes its blocks before handing the memory back: nothing derived from the
    # password stays in the process between logins.
    assert bytes(ffi.buffer(buffer)).count(0) == ffi.sizeof(buffer)


def test_a_changed_salt_or_hash_fails(stored: dict[str, str]) -> None:
    password = PASSWORDS[0]
    head, salt, digest = stored[password].rsplit("$", 2)
    flip = {"A": "B", "B": "A"}
    for changed in (
        f"{head}${salt}${digest[:-2]}{flip.get(digest[-2], 'A')}{digest[-1]}",
        f"{head}${flip.get(salt[0], 'A')}{salt[1:]}${digest}",
    ):
        assert _Resident(CURRENT, 1, 2).verify(changed, password) is False
        assert verify_password(changed, password) is False


@pytest.mark.parametrize(
    "encoded",
    [
        PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw"),
        PasswordHasher(type=Type.I).hash("pw"),
        PasswordHasher(type=Type.D).hash("pw"),
        PasswordHasher(hash_len=8).hash("pw"),
    ],
    ids=["older-parameters", "argon2i", "argon2d", "short-hash"],
)
def test_hashes_it_cannot_take_go_to_argon2_cffi(encoded: str) -> None:
    resident = _Resident(CURRENT, buffers=1, threads=2)
    assert resident.verify(encoded, "pw") is None
    assert resident._made == 0
    assert verify_password(encoded, "pw") is True
    assert verify_password(encoded, "pw2") is False


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: h + "$",
        lambda h: h + "\n",
        lambda h: " " + h,
        lambda h: h.replace("$v=19$", "$v=16$"),
        lambda h: h.replace("$v=19$", "$"),
        lambda h: h.replace("m=65536", "m=065536"),
        lambda h: h.rsplit("$", 1)[0] + "$" + "*" * 43,
        lambda h: h.rsplit("$", 1)[0] + "$" + "A" * 200,
        lambda h: h.rsplit("$", 1)[0],
    ],
    ids=[
        "trailing-$",
        "newline",
        "leading-space",
        "v16",
        "no-version",
        "zero-padded",
        "bad-base64",
        "long-hash",
        "no-hash",
    ],
)
def test_malformed_hashes_are_never_verified_resident(
    stored: dict[str, str], mangle: object
) -> None:
    assert callable(mangle)
    encoded = mangle(stored[PASSWORDS[0]])
    assert _Resident(CURRENT, 1, 2).verify(encoded, PASSWORDS[0]) is None
    assert verify_password(encoded, PASSWORDS[0]) is library_answer(encoded, PASSWORDS[0])


def test_a_failure_inside_the_resident_path_falls_back_not_through(
    stored: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """argon2 refuses a buffer of the wrong size: no answer from the resident path, the
    library's answer instead, and a warning."""
    resident = _Resident(CURRENT, buffers=1, threads=2)
    resident._size -= 1024
    encoded = stored[PASSWORDS[0]]
    assert resident.verify(encoded, PASSWORDS[0]) is None
    assert resident.verify(encoded, "wrong") is None
    assert "resident argon2 verification failed" in caplog.text


def test_more_callers_than_buffers_all_get_the_right_answer(stored: dict[str, str]) -> None:
    resident = _Resident(CURRENT, buffers=1, threads=1)
    encoded = stored[PASSWORDS[0]]
    answers: list[bool | None] = []
    lock = threading.Lock()

    def attempt(password: str) -> None:
        answer = resident.verify(encoded, password)
        if answer is None:
            answer = library_answer(encoded, password)
        with lock:
            answers.append(answer == (password == PASSWORDS[0]))

    threads = [
        threading.Thread(target=attempt, args=(PASSWORDS[0] if n % 2 else "wrong",))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 4
    assert resident._made == 1


def test_the_process_verifier_and_the_dummy_use_resident_memory(
    stored: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Counting(_Resident):
        answered = 0

        def verify(self, stored_hash: str, password: str) -> bool | None:
            answer = super().verify(stored_hash, password)
            self.answered += answer is not None
            return answer

    resident = Counting(CURRENT, buffers=1, threads=2)
    monkeypatch.setattr(passwords, "_resident", resident)
    assert verify_or_dummy(stored[PASSWORDS[0]], PASSWORDS[0]) is True
    assert verify_or_dummy(None, PASSWORDS[0]) is False
    assert resident.answered == 2 and resident._made == 1


def test_hash_threads_are_the_lanes_but_no_more_than_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for cpus, threads, slots in ((1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (8, 4, 2), (16, 4, 4)):
        monkeypatch.setattr(passwords.os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert (passwords.hash_threads(), passwords.hash_slots()) == (threads, slots)


def test_the_argon2_codes_are_the_librarys() -> None:
    from argon2 import low_level

    lib = low_level.lib  # type: ignore[attr-defined]
    assert (passwords.ARGON2_OK, passwords.ARGON2_DEFAULT_FLAGS) == (
        lib.ARGON2_OK,
        lib.ARGON2_DEFAULT_FLAGS,
    )
    assert passwords.ARGON2_MEMORY_ALLOCATION_ERROR == lib.ARGON2_MEMORY_ALLOCATION_ERROR


def test_a_password_that_is_not_text_fails_and_is_refused_by_the_policy(
    stored: dict[str, str],
) -> None:
    """Undecodable bytes read through surrogateescape: no exception, just a failure."""
    not_text = PASSWORDS[0] + "\udcff"
    assert verify_or_dummy(stored[PASSWORDS[0]], not_text) is False
    assert verify_or_dummy(None, not_text) is False
    with pytest.raises(PasswordPolicyError, match="UTF-8 text"):
        PasswordPolicy().check("Long-Enough-Passphrase-\udcff")
