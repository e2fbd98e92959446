"""Logging in to the jump host with the clients vendors use, as they come out of the box.

Real peers: OpenSSH ``ssh`` with its default settings (keyboard-interactive first, three
tries, then the password method) and PuTTY's ``plink`` (keyboard-interactive, asking again
after every refusal), each answering the gateway's prompts as a person would: through
``SSH_ASKPASS`` or on a terminal (a pty). The gateway is a real ``conduit serve`` in front of
OpenSSH sshd. One gateway for the module; each test logs in as its own users.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import select
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select as sql_select
from sqlalchemy import update

from gateway.config import Overrides, load_settings
from gateway.db.models import User
from gateway.identity import ssh_access
from gateway.identity.models import AuthFailure, ConnectCode
from gateway.identity.pending import digest
from gateway.keys import load_keyring
from gateway.services import Services
from tests.ssh_gateway import running_gateway
from tests.sshd_target import SSHDTarget
from tests.test_ssh_jump import PASSWORD, Gateway

pytestmark = pytest.mark.realpeer
T = TypeVar("T")


@pytest.fixture(scope="module")
def gateway(sshd: SSHDTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(sshd, tmp_path_factory.mktemp("clients"), users=8) as running:
        yield running


# -- the gateway's database, from the test -----------------------------------------------


def _with_services(data: Path, work: Callable[[Services], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = load_settings(None, Overrides(data_dir=data), environ={})
        services = Services.build(settings, load_keyring(settings))
        try:
            return await work(services)
        finally:
            await services.close()

    return asyncio.run(run())


def connect_code(gateway: Gateway, user: str, asset: str = "target") -> str:
    """What the portal's "Make code" button gives ``user`` (issued directly here)."""

    async def issue(services: Services) -> str:
        async with services.sessions() as db, db.begin():
            user_id = await db.scalar(sql_select(User.id).where(User.username == user))
            assert user_id is not None
            code, _ = await ssh_access.issue_connect_code(db, user_id, asset, services.clock())
            return code

    return _with_services(gateway.data, issue)


def account(gateway: Gateway, user: str) -> tuple[dt.datetime | None, int]:
    """The user's ``locked_until`` and how many failures count toward the next lock."""

    async def read(services: Services) -> tuple[dt.datetime | None, int]:
        async with services.sessions() as db:
            row = await db.scalar(sql_select(User).where(User.username == user))
            assert row is not None
            failures = len((await db.scalars(
                sql_select(AuthFailure.id).where(AuthFailure.user_id == row.id)
            )).all())  # fmt: skip
            return row.locked_until, failures

    return _with_services(gateway.data, read)


def set_lock(gateway: Gateway, user: str, minutes: int) -> None:
    """Lock ``user`` for ``minutes`` from now (0: unlock), as five failures or an admin would."""

    async def change(services: Services) -> None:
        until = services.clock() + dt.timedelta(minutes=minutes) if minutes else None
        async with services.sessions() as db, db.begin():
            await db.execute(update(User).where(User.username == user).values(locked_until=until))

    _with_services(gateway.data, change)


def code_spent(gateway: Gateway, code: str) -> bool:
    async def read(services: Services) -> bool:
        async with services.sessions() as db:
            row = await db.scalar(
                sql_select(ConnectCode).where(ConnectCode.code_sha256 == digest(code))
            )
            assert row is not None
            return row.used_at is not None

    return _with_services(gateway.data, read)


# -- the clients ---------------------------------------------------------------------------


def _client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONDUIT_", "SSH_")) and k != "DISPLAY"}  # fmt: skip
    env.update(extra)
    return env


def openssh_argv(gateway: Gateway, route: str, command: str) -> list[str]:
    """Stock OpenSSH: no config file, default methods and tries; no keys from $HOME."""
    return ["ssh", "-F", "/dev/null", "-p", str(gateway.ssh_port),
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={gateway.work / 'known_hosts'}",
            "-o", "PubkeyAuthentication=no", "-o", "GSSAPIAuthentication=no",
            "-o", "ConnectTimeout=10", f"{route}@127.0.0.1", command]  # fmt: skip


def openssh_askpass(
    gateway: Gateway, route: str, command: str, first: str, code: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """OpenSSH answering every prompt through SSH_ASKPASS: ``code`` at a verification-code
    prompt, ``first`` at any other. Returns the run and the prompts it was shown."""
    work = gateway.work
    (work / "first").write_text(first)
    (work / "code").write_text(code)
    prompts = work / "prompts"
    prompts.write_text("")
    script = work / "askpass-log.sh"
    script.write_text(f"""#!/bin/sh
printf '%s\\n' "$1" >> {prompts}
case "$1" in
  *erification*) cat {work}/code ;;
  *) cat {work}/first ;;
esac
""")
    script.chmod(0o700)
    env = _client_env(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    # A client asking again and again is a failure of its own: the timeout ends it.
    result = subprocess.run(openssh_argv(gateway, route, command), env=env, text=True,
                            capture_output=True, stdin=subprocess.DEVNULL, timeout=90,
                            check=False)  # fmt: skip
    return result, prompts.read_text().splitlines()


def host_key_fingerprints(gateway: Gateway) -> list[str]:
    out = []
    for key in sorted((gateway.data / "ssh").glob("ssh_host_*_key")):
        shown = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        out.append(shown.split()[1])
    return out


# After prompts on the terminal PuTTY waits for Return before the session starts, so a
# server cannot pass off its own output as PuTTY's prompts.
PRESS_RETURN = (r"Press Return to begin session", "")


def plink_argv(gateway: Gateway, route: str, command: str) -> list[str]:
    """Stock plink (PuTTY 0.78): the gateway's host keys pinned, nothing else set."""
    pins = [arg for fp in host_key_fingerprints(gateway) for arg in ("-hostkey", fp)]
    return ["plink", "-ssh", "-P", str(gateway.ssh_port), *pins, f"{route}@127.0.0.1", command]


def on_terminal(
    argv: Sequence[str], replies: Sequence[tuple[str, str]], deadline_s: float = 60
) -> tuple[int | None, str]:
    """Run ``argv`` on a new terminal (its controlling tty), typing each reply when its prompt
    (a regex) shows, in order. Returns the exit code (None if it had to be killed at the
    deadline: a client that never ends) and everything the terminal showed."""
    controller, terminal = os.openpty()
    # setsid -c: a session of its own with this pty as its controlling terminal, as in a
    # terminal window (ssh reads passwords from /dev/tty).
    proc = subprocess.Popen(["setsid", "-c", *argv], stdin=terminal, stdout=terminal,
                            stderr=terminal, env=_client_env(TERM="dumb"))  # fmt: skip
    os.close(terminal)
    shown, pending, typed_at = b"", list(replies), 0
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the other side closed: the client is done
                    break
                if not chunk:
                    break
                shown += chunk
            if pending and re.search(pending[0][0], shown[typed_at:].decode(errors="replace")):
                typed_at = len(shown)
                os.write(controller, pending.pop(0)[1].encode() + b"\r")
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=5) if time.monotonic() < end else None
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, shown.decode(errors="replace")


def refusal_reason(text: str) -> str:
    """The reason in the disconnect message a client shows (OpenSSH and PuTTY word the
    line around it differently)."""
    found = re.search(r'(?:\d+: |type 14 \(no more auth methods available\):\s*")'
                      r'(Permission denied: [^"\r\n]*)', text)  # fmt: skip
    assert found, text
    return found.group(1)


def failures_of(gateway: Gateway, user: str) -> list[dict[str, object]]:
    return [e["detail"] for e in gateway.audit()  # type: ignore[misc]
            if e["action"] == "login.failure" and e["actor"] == user]  # fmt: skip


# -- connect codes -------------------------------------------------------------------------


def test_openssh_takes_a_connect_code_at_the_first_prompt_and_does_not_lock(
    gateway: Gateway,
) -> None:
    """Stock OpenSSH tries keyboard-interactive first: the code typed at ``Password:`` logs in
    at once (no code prompt). Before, each login cost three failures and two locked."""
    for _ in range(2):
        result, prompts = openssh_askpass(
            gateway, "vendor0+target", "echo in", connect_code(gateway, "vendor0")
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "in\n"
        assert prompts == ["(vendor0+target@127.0.0.1) Password: "]
    assert account(gateway, "vendor0") == (None, 0)
    assert failures_of(gateway, "vendor0") == []
    logins = [e["detail"] for e in gateway.audit()
              if e["action"] == "login.success" and e["actor"] == "vendor0"]  # fmt: skip
    assert logins == [{"channel": "ssh", "factor": "connect-code"}] * 2


def test_plink_takes_a_connect_code_at_the_first_prompt(gateway: Gateway) -> None:
    """Stock plink asked for the password and the code again after every refusal, forever."""
    code, shown = on_terminal(
        plink_argv(gateway, "vendor1+target", "echo in"),
        [(r"Password: ", connect_code(gateway, "vendor1")), PRESS_RETURN],
    )
    assert code == 0, shown
    assert "in" in shown.splitlines()[-1]
    assert "Verification code" not in shown
    # Password and verification code still work, one prompt after the other.
    code, shown = on_terminal(
        plink_argv(gateway, "vendor1+target", "echo again"),
        [
            (r"Password: ", PASSWORD),
            (r"Verification code: ", gateway.code("vendor1")),
            PRESS_RETURN,
        ],  # fmt: skip
    )
    assert code == 0, shown
    assert "again" in shown
    assert account(gateway, "vendor1") == (None, 0)
    assert failures_of(gateway, "vendor1") == []


# -- the verification code is not shown -----------------------------------------------------


def test_the_verification_code_is_not_echoed_by_openssh_or_plink(gateway: Gateway) -> None:
    for user, argv, after in (
        ("vendor2", openssh_argv(gateway, "vendor2+target", "echo in"), []),
        ("vendor3", plink_argv(gateway, "vendor3+target", "echo in"), [PRESS_RETURN]),
    ):
        code = gateway.code(user)
        status, shown = on_terminal(
            argv, [(r"Password: ", PASSWORD), (r"Verification code: ", code), *after]
        )
        assert status == 0, shown
        assert "Verification code: " in shown
        assert PASSWORD not in shown
        assert code not in shown, shown


# -- a locked account ---------------------------------------------------------------------


def test_a_locked_account_is_told_in_one_line_the_same_as_an_unknown_name(
    gateway: Gateway,
) -> None:
    """The right password and code, or a connect code, on a locked account: the client ends
    with a reason naming the lock, word for word what a name that does not exist gets."""
    set_lock(gateway, "vendor4", 15)
    unspent = connect_code(gateway, "vendor4")

    locked, _ = openssh_askpass(gateway, "vendor4+target", "echo in", PASSWORD,
                                gateway.code("vendor4"))  # fmt: skip
    assert locked.returncode == 255 and locked.stdout == ""
    reason = refusal_reason(locked.stderr)
    assert "locked" in reason

    by_code, prompts = openssh_askpass(gateway, "vendor4+target", "echo in", unspent)
    assert by_code.returncode == 255 and by_code.stdout == ""
    assert refusal_reason(by_code.stderr) == reason
    assert prompts == ["(vendor4+target@127.0.0.1) Password: "]

    unknown, _ = openssh_askpass(gateway, "nobody+target", "echo in", PASSWORD, "123456")
    assert unknown.returncode == 255
    assert refusal_reason(unknown.stderr) == reason

    status, shown = on_terminal(
        plink_argv(gateway, "vendor4+target", "echo in"),
        [(r"Password: ", PASSWORD), (r"Verification code: ", gateway.code("vendor4", 1))],
    )
    assert status is not None and status != 0, shown  # ended, not asking again
    assert refusal_reason(shown) == reason
    assert shown.count("Password: ") == 1

    # Audited with the real reason; a refusal for the lock counts toward no further lock.
    reasons = failures_of(gateway, "vendor4")
    assert {"channel": "ssh", "reason": "locked", "factor": "connect-code"} in reasons
    assert sum(1 for r in reasons if r["reason"] == "locked") == 3
    assert account(gateway, "vendor4")[1] == 0
    # The connect code refused for the lock was not spent: after the unlock it logs in.
    assert not code_spent(gateway, unspent)
    set_lock(gateway, "vendor4", 0)
    after, _ = openssh_askpass(gateway, "vendor4+target", "echo in", unspent)
    assert after.returncode == 0, after.stderr
    assert after.stdout == "in\n"
