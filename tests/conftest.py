"""Shared fixtures: real processes, real databases, and the CI rule that skips fail.

PostgreSQL tests use the server at 127.0.0.1:5432 (trust auth, database ``test``): each test
session creates its own throwaway database there and drops it at the end. Outside CI they
skip with a reason when no server answers; with ``CI=true`` any skip fails the run.
"""

from __future__ import annotations

import asyncio
import dis
import inspect
import os
import secrets
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import rdp_target as rdp
from tests.sshd_target import SSHDTarget, missing_reason, start_sshd
from tests.support import PG_ADMIN_DSN, pg_available

IN_CI = os.environ.get("CI", "").lower() == "true"
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped:
        print(f"\nCI=true: {len(_skipped)} skipped test(s) count as failures:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDTarget]:
    """A real OpenSSH sshd on 127.0.0.1 as the asset behind the gateway (one per module)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    target = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope="module")
def rdp_target() -> Iterator[rdp.RDPTarget]:
    """A real xrdp + xorgxrdp on 127.0.0.1 with a local test user (tests/rdp_target.py)."""
    reason = rdp.missing_reason()
    if reason:
        pytest.skip(reason)
    target = rdp.start_rdp_target()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def pg_server() -> str:
    reason = pg_available()
    if reason:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not usable: {reason}")
    return PG_ADMIN_DSN


async def _pg_exec(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; its SQLAlchemy URL."""
    name = f"conduit_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'conduit.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


# Tiers. `pytest -m "not realpeer"` is the fast tier; the whole suite (the README command, CI)
# runs both. pytest_collection_modifyitems marks a test `realpeer` when
#   1. it is marked `realpeer` (by hand) or `postgres`;
#   2. it uses a fixture in REALPEER_FIXTURES (the sshd target, PostgreSQL), directly or through
#      other fixtures, or database_url with its "postgresql" parameter;
#   3. it, or the function of any fixture it uses, reaches slow work: a process starter (the
#      subprocess, multiprocessing and pty modules, asyncio's create_subprocess_*, os.fork,
#      system, exec*, spawn*, posix_spawn*) or an ARGON2_CALL with a password, directly or
#      through functions and classes defined under tests/ (tests.support's conduit(), Served,
#      serving() and init_data_dir(); tests.sshd_target; a module's Gateway class; the crash
#      child's Popen; the identity `env` fixture, which makes accounts with passwords). This is
#      read from the names in the code (globals and imports inside functions), not from a list,
#      so a new test lands in its tier by what it calls; or
#   4. it is one of SLOW_TESTS: in-process tests that are slow for a reason no rule above sees.
# tests/test_tiers.py checks known cases; `pytest --collect-only -q -m realpeer` lists the tier.
REALPEER_FIXTURES = frozenset({"sshd", "rdp_target", "pg_server", "pg_database"})
# Called with a `password=` keyword, it costs a 64 MiB argon2 hash (~0.2 s alone, more on a
# loaded machine; docs/decisions/0012). Matched by name in any gateway module, so moving the
# module does not change the tier.
ARGON2_CALL = "create_user"
SLOW_TESTS = {
    "tests/test_recordings_service.py::test_large_recording_is_indexed_in_a_child_process_after_close":
        "the gateway indexes a large recording in a spawned child process (7-8 s)",
    "tests/test_recordings_service.py::test_indexing_cut_short_by_a_stop_is_resumed_at_the_next_start":
        "the gateway indexes a large recording in a spawned child process, twice (8 s)",
    "tests/test_passwords.py::test_resident_answers_as_argon2_cffi_for_right_and_wrong_passwords":
        "32 argon2 verifications of 64 MiB each (6 s)",
}  # fmt: skip
_STARTER_MODULES = frozenset({"subprocess", "multiprocessing", "pty"})
_STARTER_ATTRS = {
    "asyncio": frozenset({"create_subprocess_exec", "create_subprocess_shell"}),
    "os": frozenset(
        "fork forkpty system popen posix_spawn posix_spawnp execl execle execlp execlpe "
        "execv execve execvp execvpe spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp "
        "spawnvpe".split()
    ),
}
_STARTERS = frozenset(
    id(getattr(module, attr))
    for module in (asyncio, os)
    for attr in _STARTER_ATTRS[module.__name__]
    if hasattr(module, attr)
)
_TESTS_DIR = Path(__file__).resolve().parent
_reaches: dict[int, bool] = {}


def _is_slow(obj: object, attr: object, code: types.CodeType) -> bool:
    """Whether ``obj`` (then ``.attr``, when ``code`` loads one) is slow work itself."""
    if inspect.ismodule(obj):
        top = obj.__name__.split(".")[0]
        return top in _STARTER_MODULES or attr in _STARTER_ATTRS.get(obj.__name__, ())
    if inspect.isfunction(obj) and obj.__name__ == ARGON2_CALL:
        # Keyword names of calls are constant tuples in the calling code (3.11 to 3.13).
        keywords = (k for c in code.co_consts if isinstance(c, tuple) for k in c)
        return str(obj.__module__).startswith("gateway.") and "password" in keywords
    if id(obj) in _STARTERS:
        return True
    return str(getattr(obj, "__module__", "")).split(".")[0] in _STARTER_MODULES


def _test_code(obj: object) -> list[tuple[types.CodeType, dict[str, Any]]]:
    """Code and globals of a function, or of every method of a class, defined under tests/."""
    if inspect.ismethod(obj):
        obj = obj.__func__
    if inspect.isfunction(obj):
        obj = inspect.unwrap(obj)
        inner = getattr(getattr(obj, "hypothesis", None), "inner_test", None)
        if inner is not None:
            obj = inspect.unwrap(inner)
    if not _defined_in_tests(obj):
        return []
    if inspect.isfunction(obj):
        return [(obj.__code__, obj.__globals__)]
    if not isinstance(obj, type):
        return []
    codes = [c for base in obj.__bases__ for c in _test_code(base)]
    for member in vars(obj).values():
        if isinstance(member, property):
            codes += [c for f in (member.fget, member.fset) if f for c in _test_code(f)]
        elif isinstance(member, staticmethod | classmethod):
            codes += _test_code(member.__func__)
        elif inspect.isfunction(member) or isinstance(member, type):
            codes += _test_code(member)
    return codes


def _defined_in_tests(obj: object) -> bool:
    if not (inspect.isfunction(obj) or isinstance(obj, type)):
        return False
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(_TESTS_DIR)


def _references(code: types.CodeType, namespace: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """What ``code`` names as a global or imports inside, each with the attribute it then
    loads (``subprocess`` and ``"run"``) or None."""
    instructions = list(dis.get_instructions(code))
    imported: Any = None
    for at, ins in enumerate(instructions):
        after = instructions[at + 1] if at + 1 < len(instructions) else None
        attr = after.argval if after and after.opname in ("LOAD_ATTR", "LOAD_METHOD") else None
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval in namespace:
            yield namespace[ins.argval], attr
        elif ins.opname == "IMPORT_NAME":
            imported = sys.modules.get(ins.argval)
            if imported is not None:
                yield imported, attr
        elif ins.opname == "IMPORT_FROM" and imported is not None:
            yield getattr(imported, ins.argval, None), None


def _code_reaches(code: types.CodeType, namespace: dict[str, Any]) -> bool:
    if id(code) in _reaches:
        return _reaches[id(code)]
    # While on the stack it counts as not slow: recursion adds nothing (two helpers calling
    # each other could be under-counted; none do).
    _reaches[id(code)] = False
    nested = (c for c in code.co_consts if isinstance(c, types.CodeType))
    found = any(_code_reaches(c, namespace) for c in nested) or any(
        _is_slow(obj, attr, code) or any(_code_reaches(*c) for c in _test_code(obj))
        for obj, attr in _references(code, namespace)
    )
    _reaches[id(code)] = found
    return found


def reaches_slow_work(obj: object) -> bool:
    """Rule 3 for a function or class defined under tests/ (False for anything else)."""
    return any(_code_reaches(*c) for c in _test_code(obj))


def is_realpeer(item: pytest.Item) -> bool:
    """Whether ``item`` belongs to the slow tier (rules 1-4 above)."""
    if item.get_closest_marker("realpeer") or item.get_closest_marker("postgres"):
        return True
    if not isinstance(item, pytest.Function):
        return False
    if REALPEER_FIXTURES & set(item.fixturenames) or item.nodeid.split("[")[0] in SLOW_TESTS:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        return True
    functions: list[object] = [item.obj]
    for defs in item._fixtureinfo.name2fixturedefs.values():
        functions += [d.func for d in defs]
    return any(reaches_slow_work(f) for f in functions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_realpeer(item):
            item.add_marker(pytest.mark.realpeer)
