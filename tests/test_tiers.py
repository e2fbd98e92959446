"""The fast tier: which tests tests/conftest.py marks ``realpeer`` (and so leaves out of
``pytest -m "not realpeer"``), checked on helpers defined here and on known tests of the suite.
Does not time the tiers; the README says how to run them.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.identity.accounts import create_user
from tests.conftest import SLOW_TESTS, is_realpeer, reaches_slow_work
from tests.support import clean_env, conduit

ROOT = Path(__file__).resolve().parents[1]


def _pure(text: str) -> str:
    return text.upper()


def _runs_a_program() -> str:
    return str(subprocess.run(["true"], check=False).args)  # noqa: S603, S607 - never called


async def _starts_a_child() -> None:
    await asyncio.create_subprocess_exec("true")  # never called


def _calls_the_cli() -> None:
    conduit("--help")


def _through_a_helper() -> str:
    return _pure("x") + str(_calls_the_cli())


def _forks() -> int:
    return os.fork()  # never called


def _imports_inside() -> None:
    from tests.support import init_data_dir

    init_data_dir(Path("/nonexistent"))  # never called


async def _makes_an_account_with_a_password() -> None:
    await create_user(None, username="x", password="never called")  # type: ignore[call-arg]


async def _makes_an_account_without() -> None:
    await create_user(None, username="x")  # type: ignore[call-arg]


def _reads_the_environment() -> dict[str, str]:
    return clean_env() | {"PATH": os.environ.get("PATH", "")}


class _Runner:
    def run(self) -> None:
        _runs_a_program()


@pytest.mark.parametrize(
    "helper,slow",
    [
        (_pure, False),
        (_reads_the_environment, False),
        (_runs_a_program, True),
        (_starts_a_child, True),
        (_calls_the_cli, True),
        (_through_a_helper, True),
        (_forks, True),
        (_imports_inside, True),
        (_makes_an_account_with_a_password, True),
        (_makes_an_account_without, False),
        (_Runner, True),
        (lambda: _Runner(), True),
        (lambda: [_pure(x) for x in "ab"], False),
    ],
)
def test_what_counts_as_slow_work(helper: object, slow: bool) -> None:
    assert reaches_slow_work(helper) is slow


def test_a_pure_test_is_in_the_fast_tier(request: pytest.FixtureRequest) -> None:
    assert not is_realpeer(request.node)
    assert request.node.get_closest_marker("realpeer") is None


@pytest.mark.realpeer
def test_an_explicit_marker_keeps_a_test_in_the_slow_tier(request: pytest.FixtureRequest) -> None:
    assert is_realpeer(request.node)


# Known tests of the suite, collected by pytest itself as `-m` sees them.
KNOWN = [
    "tests/rbac/test_rbac_policy.py",
    "tests/test_ssh_jump.py",
    "tests/test_init.py",
    "tests/test_config.py",
    "tests/test_audit.py",
    "tests/recordings/test_recording_crash.py",
    "tests/test_identity_login.py",
    "tests/test_tiers.py",
    *{test.split("::")[0] for test in SLOW_TESTS},
]


def _collected(expression: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "-m", expression, *KNOWN],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env=clean_env(PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode in (0, 5), done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


@pytest.fixture(scope="module")
def tiers() -> tuple[set[str], set[str]]:
    """(slow, fast) node ids of the known modules."""
    return _collected("realpeer"), _collected("not realpeer")


def _in(ids: set[str], module: str) -> set[str]:
    return {i for i in ids if i.startswith(module + "::")}


def test_known_tests_fall_into_their_tier(tiers: tuple[set[str], set[str]]) -> None:
    slow, fast = tiers
    assert not slow & fast
    # Policy tables only: all fast.
    assert _in(fast, KNOWN[0]) and not _in(slow, KNOWN[0])
    # Every test there uses the gateway fixture in front of the `sshd` fixture.
    assert _in(slow, KNOWN[1]) and not _in(fast, KNOWN[1])
    # Every test there runs the `conduit` CLI through tests.support.
    assert _in(slow, KNOWN[2]) and not _in(fast, KNOWN[2])
    # Parsing and validation in process are fast; the tests that run `conduit` are not.
    assert f"{KNOWN[3]}::test_config_check_redacts_database_password" in slow
    assert len(_in(fast, KNOWN[3])) > len(_in(slow, KNOWN[3]))
    # The PostgreSQL side of database_url is slow, the SQLite side fast.
    audit_slow, audit_fast = _in(slow, KNOWN[4]), _in(fast, KNOWN[4])
    assert audit_slow and all(re.search(r"\[.*postgresql.*\]$", i) for i in audit_slow)
    assert audit_fast and not any("postgresql" in i for i in audit_fast)
    # The writer killed in a child process is slow; recovery checked in process is fast.
    assert any("sigkill" in i for i in _in(slow, KNOWN[5]))
    assert _in(fast, KNOWN[5])
    # Its `env` fixture makes accounts with argon2-hashed passwords; its pure helpers do not.
    login_slow, login_fast = _in(slow, KNOWN[6]), _in(fast, KNOWN[6])
    assert any("one_code_give_exactly_one_success" in i for i in login_slow), login_slow
    assert login_fast and not any("sqlite" in i for i in login_fast), login_fast
    # Every test named in SLOW_TESTS still exists, and is slow.
    for name in SLOW_TESTS:
        assert any(i.split("[")[0] == name for i in slow), f"{name} is in SLOW_TESTS but not found"
    # Here: the helpers above are only inspected, but the `tiers` fixture runs pytest.
    assert _in(slow, KNOWN[7]) == {
        f"{KNOWN[7]}::test_an_explicit_marker_keeps_a_test_in_the_slow_tier",
        f"{KNOWN[7]}::test_known_tests_fall_into_their_tier",
    }
