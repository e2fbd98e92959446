"""Helpers for tests that drive the real ``conduit`` command in subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import httpx

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONDUIT = [sys.executable, "-m", "gateway"]


def pg_available() -> str:
    """Empty string when the test PostgreSQL server answers, else why not."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    # One process per ``conduit serve`` unless a test asks for workers (``--workers N``, or
    # this setting in ``extra``): on PostgreSQL the default is one per CPU, and a test that
    # reads one process's metrics or kills "the node" by its PID means one process.
    env["CONDUIT_SERVER__WORKERS"] = "1"
    env.update(extra)
    return env


def conduit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONDUIT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
        input=stdin,
        check=False,
    )


class Served:
    """A real ``conduit serve``/``demo`` process and a client for its portal."""

    def __init__(
        self,
        args: Sequence[str],
        portal: str,
        env: dict[str, str] | None = None,
        https: bool = True,
    ) -> None:
        self.portal = portal
        self.base = f"{'https' if https else 'http'}://{portal}"
        self.proc = subprocess.Popen(
            [*CONDUIT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else clean_env(),
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        # stderr is drained as it comes, too: a gateway serving many sessions logs more than a
        # pipe holds, and would otherwise stop, mid-session, in its next write to the log.
        self._err_lines: list[str] = []
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()
        self.stderr = ""

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err_lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._lines)

    def wait_for_output(self, pattern: str, deadline_s: float = 30) -> re.Match[str]:
        """The first match of ``pattern`` in what the process has printed so far or soon."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            found = re.search(pattern, self.stdout)
            if found:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in output: {self.stdout}")

    def client(self) -> httpx.Client:
        # Tests trust the gateway's own self-signed certificate by not verifying; the
        # certificate itself is checked in test_init.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return httpx.Client(base_url=self.base, verify=ctx, timeout=5)

    def metric(self, name: str, label: str, value: str) -> float:
        """A labelled counter's value from /metrics (0 before its first increment)."""
        with self.client() as client:
            text = client.get("/metrics").text
        found = re.search(rf'^{name}\{{{label}="{re.escape(value)}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def wait_healthy(self, deadline_s: float = 30) -> None:
        end = time.monotonic() + deadline_s
        with self.client() as client:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    self.finish()
                    raise AssertionError(f"conduit exited {self.proc.returncode}: {self.stderr}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise AssertionError("conduit did not become healthy")

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.finish()
        return code

    def finish(self) -> None:
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.proc.wait(timeout=10)
        if self.proc.stderr.closed:
            return
        self._reader.join(timeout=10)
        self._err_reader.join(timeout=10)
        self.stderr += "".join(self._err_lines)
        self.proc.stderr.close()
        self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def init_data_dir(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    result = conduit("init", "--data-dir", str(data_dir), *extra, env=env)
    assert result.returncode == 0, result.stderr
    result = conduit("db", "upgrade", "--data-dir", str(data_dir), *extra, env=env)
    assert result.returncode == 0, result.stderr


@contextmanager
def serving(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[tuple[Served, int]]:
    """A real ``conduit serve`` on free loopback ports, healthy; yields it and its SSH port."""
    portal, ssh_port = _free_port(), _free_port()
    server = Served(
        ["serve", "--data-dir", str(data_dir), "--portal-listen", f"127.0.0.1:{portal}",
         "--ssh-listen", f"127.0.0.1:{ssh_port}"],
        f"127.0.0.1:{portal}",
        env=env,
    )  # fmt: skip
    try:
        server.wait_healthy()
        yield server, ssh_port
    finally:
        server.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kbdint_client(password: str, code: str) -> type[asyncssh.SSHClient]:
    """An asyncssh client class answering the gateway's keyboard-interactive login."""

    class Client(asyncssh.SSHClient):
        def kbdint_auth_requested(self) -> str:
            return ""

        def kbdint_challenge_received(
            self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
        ) -> list[str]:
            return [password if "assword" in p else code for p, _ in prompts]

    return Client
