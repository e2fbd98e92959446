"""A real ``conduit serve`` in front of the real sshd target, for load and limit tests.

Like the fixture in test_ssh_jump, with extra environment for the gateway process, as many
users as a test needs logins (TOTP codes are single-use), and a reader for the process's
resident memory. Does not start the sshd target (the tests' module fixture does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp

from tests.sshd_target import SSHDTarget
from tests.support import clean_env, init_data_dir, serving
from tests.test_ssh_jump import Gateway, _populate


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Logins:
    """Hands out (user, code) pairs never used before: a code works once per user."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._next = [(user, step) for step in (0, 1) for user in sorted(gateway.secrets)]

    def take(self) -> tuple[str, str]:
        user, step = self._next.pop(0)
        return user, self._gateway.code(user, step)


@contextmanager
def running_gateway(
    sshd: SSHDTarget, tmp_path: Path, users: int = 4, **env: str
) -> Iterator[Gateway]:
    data = tmp_path / "data"
    init_data_dir(data)
    secrets = {f"vendor{i}": pyotp.random_base32() for i in range(users)}
    asyncio.run(_populate(data, sshd, secrets))
    with serving(data, clean_env(**env)) as (server, ssh_port):
        work = tmp_path / "client"
        work.mkdir()
        yield Gateway(data, server, ssh_port, secrets, work)


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after a short pause, so start-up allocations are counted in the baseline."""
    time.sleep(seconds)
    return rss_bytes(pid)
