"""The SSH jump host with real peers: OpenSSH ssh as the vendor, OpenSSH sshd as the asset."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pyotp
import pytest

from gateway.authz import hostkeys
from gateway.config import Overrides, load_settings
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.vault import set_credential
from tests.sshd_target import SSHDTarget
from tests.support import Served, conduit, init_data_dir, kbdint_client, serving

PASSWORD = "correct horse battery staple"


@dataclass
class Gateway:
    data: Path
    server: Served
    ssh_port: int
    secrets: dict[str, str]
    work: Path

    handed_out: dict[str, int] = field(default_factory=dict)  # user -> last TOTP step given

    def code(self, user: str, step: int = 0) -> str:
        at = time.time() + 30 * step
        self.handed_out[user] = max(self.handed_out.get(user, -1), int(at) // 30)
        return pyotp.TOTP(self.secrets[user]).at(at)

    def fresh_code(self, user: str) -> str:
        """A code of a time step not handed out for ``user`` before: the gateway accepts each
        step once per account, and a module's tests log the same user in again and again
        (on a loaded machine, within one 30 s step). Uses the next step, which the gateway
        accepts too, or waits for a new one."""
        while True:
            now = int(time.time()) // 30
            for step in (now, now + 1):
                if step > self.handed_out.get(user, -1):
                    self.handed_out[user] = step
                    return pyotp.TOTP(self.secrets[user]).at(step * 30)
            time.sleep(30 - time.time() % 30 + 0.05)

    def askpass(self, user: str, code: str) -> dict[str, str]:
        """Environment making OpenSSH answer keyboard-interactive from files."""
        (self.work / "pw").write_text(PASSWORD)
        (self.work / "code").write_text(code)
        script = self.work / "askpass.sh"
        script.write_text(f"""#!/bin/sh
case "$1" in
  *assword*) cat {self.work}/pw ;;
  *erification*) cat {self.work}/code ;;
esac
""")
        script.chmod(0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        env.update(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        return env

    def argv(self, route: str, command: str, *extra: str) -> list[str]:
        """OpenSSH client arguments for ``route`` (keyboard-interactive via SSH_ASKPASS)."""
        return ["ssh", "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}",
                "-o", "PreferredAuthentications=keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=10",
                *extra, f"{route}@127.0.0.1", command]  # fmt: skip

    def ssh(
        self, route: str, command: str, code: str, *extra: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(route, command, *extra),
                              env=self.askpass(route, code), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def background(self, route: str, command: str, code: str) -> subprocess.Popen[bytes]:
        """A session left running; the caller reads its stdout and ends it."""
        return subprocess.Popen(self.argv(route, command), env=self.askpass(route, code),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)  # fmt: skip

    def audit_until(self, action: str, deadline_s: float = 15) -> list[dict[str, object]]:
        """The audit log once it holds ``action``: the gateway writes session.end just after
        the client sees its session end, so tests wait for it rather than race it."""
        end = time.monotonic() + deadline_s
        while True:
            events = self.audit()
            if any(e["action"] == action for e in events) or time.monotonic() > end:
                return events
            time.sleep(0.2)

    def audit(self) -> list[dict[str, object]]:
        exported = conduit("audit", "export", "--data-dir", str(self.data))
        assert exported.returncode == 0, exported.stderr
        return [json.loads(line) for line in exported.stdout.splitlines()]


async def _populate(data: Path, sshd: SSHDTarget, secrets: dict[str, str]) -> None:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    try:
        async with services.sessions() as db, db.begin():
            for user, secret in secrets.items():
                await create_user(
                    db,
                    username=user,
                    roles=["vendor"],
                    now=services.clock(),
                    master_key=keys.master_key,
                    password=PASSWORD,
                    totp_secret=secret,
                    status="active",
                    organisation="acme",
                )
        await services.authz.add_asset("target", "127.0.0.1", sshd.port, "ssh", actor="test")
        await services.authz.add_asset("other", "127.0.0.1", sshd.port, "ssh", actor="test")
        async with services.sessions() as db, db.begin():
            await set_credential(
                db,
                keys.master_key,
                asset="target",
                username="root",
                private_key=sshd.client_key.read_bytes(),
                now=services.clock(),
            )
            await hostkeys.pin(
                db,
                "target",
                hostkeys.parse_key_line(sshd.host_public_key),
                actor="test",
                now=services.clock(),
            )
        await services.authz.add_grant(
            subject_kind="org",
            subject="acme",
            object_kind="asset",
            obj="target",
            action="ssh",
            actor="test",
        )
    finally:
        await services.close()


@pytest.fixture
def gateway(sshd: SSHDTarget, tmp_path: Path) -> Iterator[Gateway]:
    data = tmp_path / "data"
    init_data_dir(data)
    secrets = {name: pyotp.random_base32() for name in ("alice", "bob", "carol", "dave")}
    asyncio.run(_populate(data, sshd, secrets))
    with serving(data) as (server, ssh_port):
        work = tmp_path / "client"
        work.mkdir()
        yield Gateway(data, server, ssh_port, secrets, work)


def test_exec_returns_exit_status_and_is_recorded_and_audited(gateway: Gateway) -> None:
    result = gateway.ssh(
        "alice+target", "echo conduit-$((40+2)); echo oops >&2; exit 3", gateway.code("alice")
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "conduit-42\n"
    assert "oops" in result.stderr
    actions = [(e["action"], e["actor"]) for e in gateway.audit_until("session.end")]
    assert ("login.success", "alice") in actions
    assert ("session.start", "alice") in actions and ("session.end", "alice") in actions
    found = conduit("recordings", "search", "conduit-42", "--data-dir", str(gateway.data))
    assert found.returncode == 0, found.stderr
    assert "[conduit]-[42]" in found.stdout  # hits come back with the words marked


def test_same_code_cannot_log_in_twice_and_wrong_code_is_refused(gateway: Gateway) -> None:
    code = gateway.code("bob")
    assert gateway.ssh("bob+target", "true", code).returncode == 0
    again = gateway.ssh("bob+target", "true", code)
    assert again.returncode == 255 and "Permission denied" in again.stderr
    wrong = gateway.ssh("bob+target", "true", "000000" if code != "000000" else "111111")
    assert wrong.returncode == 255
    failures = [e for e in gateway.audit() if e["action"] == "login.failure"]
    assert len(failures) >= 2


def test_a_wrong_number_of_login_answers_is_refused_and_audited(gateway: Gateway) -> None:
    class OneAnswer(asyncssh.SSHClient):
        tries = 0

        def kbdint_auth_requested(self) -> str | None:
            self.tries += 1
            return "" if self.tries == 1 else None  # one attempt, then give up

        def kbdint_challenge_received(
            self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
        ) -> list[str]:
            return [PASSWORD, "123456"]  # both at once, to the one password prompt

    async def login() -> None:
        await asyncssh.create_connection(
            OneAnswer, "127.0.0.1", gateway.ssh_port, username="carol+target",
            known_hosts=None, client_keys=None, agent_path=None,
            preferred_auth=["keyboard-interactive"],
        )  # fmt: skip

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login())
    failures = [
        e["detail"] for e in gateway.audit()
        if e["action"] == "login.failure" and e["actor"] == "carol"
    ]  # fmt: skip
    assert {"channel": "ssh", "reason": "2 answers to the 1 login prompt"} in failures


def test_forbidden_and_missing_assets_look_the_same(gateway: Gateway) -> None:
    forbidden = gateway.ssh("carol+other", "true", gateway.code("carol"))
    missing = gateway.ssh("carol+nothing", "true", gateway.code("carol", 1))
    assert forbidden.returncode == missing.returncode == 1
    assert "not found or not permitted" in forbidden.stderr
    assert "not found or not permitted" in missing.stderr
    denied = [e for e in gateway.audit() if e["action"] == "session.denied"]
    assert {e["target"] for e in denied} == {"other", "nothing"}


@pytest.mark.parametrize(
    "username",
    ["dave+target+x+y", "+target", "dave+", "dave+../x", "Dave+target", "dave+target" + "x" * 190],
)
def test_malformed_usernames_are_refused(gateway: Gateway, username: str) -> None:
    # dave's real password and a valid code: only the routing can refuse these.
    result = gateway.ssh(username, "echo reached", gateway.code("dave"))
    assert result.returncode == 255, result.stdout + result.stderr
    assert "reached" not in result.stdout
    assert "Permission denied" in result.stderr
    failures = [e for e in gateway.audit() if e["action"] == "login.failure"]
    assert failures, "the refusal is audited"
    assert gateway.server.proc.poll() is None


def test_pty_shell_is_relayed_and_recorded(gateway: Gateway) -> None:
    async def shell() -> str:
        conn, _ = await asyncssh.create_connection(
            kbdint_client(PASSWORD, gateway.code("dave")),
            "127.0.0.1",
            gateway.ssh_port,
            username="dave+target",
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            preferred_auth=["keyboard-interactive"],
        )
        async with conn:
            process = await conn.create_process(term_type="xterm", term_size=(100, 30))
            process.stdin.write("echo typed-$((6*7))\n")
            output = ""
            while "typed-42" not in output:
                try:
                    output += await asyncio.wait_for(process.stdout.read(1024), 10)
                except TimeoutError:
                    raise AssertionError(f"no echo; got {output!r}") from None
            process.change_terminal_size(120, 40)
            process.stdin.write("echo resized-$((6*7))\n")
            while "resized-42" not in output:
                try:
                    output += await asyncio.wait_for(process.stdout.read(1024), 10)
                except TimeoutError:
                    raise AssertionError(f"no echo; got {output!r}") from None
            process.stdin.write("exit 0\n")
            await asyncio.wait_for(process.wait(), 10)
            return output

    assert "typed-42" in asyncio.run(shell())
    events = gateway.audit_until("session.end")  # the recording is indexed before session.end
    listing = conduit("recordings", "search", "typed-42", "--data-dir", str(gateway.data))
    assert "[typed]-[42]" in listing.stdout
    # The export carries the size the terminal was recorded at, and the change as "r".
    [end] = [e for e in events if e["action"] == "session.end" and e["actor"] == "dave"]
    recording_id = str(end["detail"]["recording_id"])  # type: ignore[index]
    cast = conduit("recordings", "export", recording_id, "--data-dir", str(gateway.data))
    assert cast.returncode == 0, cast.stderr
    header, *lines = [json.loads(line) for line in cast.stdout.splitlines()]
    assert (header["width"], header["height"]) == (100, 30)
    assert [text for _, kind, text in lines if kind == "r"] == ["120x40"]


def session_ended_by(
    gateway: Gateway, user: str, act: Callable[[], None]
) -> tuple[int, str, float]:
    """A long session of ``user``, and ``act`` once it runs: the client's exit status, its
    stderr, and the seconds from the end of ``act`` to the client's exit."""
    proc = gateway.background(f"{user}+target", "echo started; sleep 60", gateway.code(user))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        act()
        acted = time.monotonic()
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - acted
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return code, err.decode(), elapsed


def test_revoked_grant_ends_the_session_within_a_second(gateway: Gateway) -> None:
    grants = conduit("grant", "list", "--data-dir", str(gateway.data)).stdout.splitlines()
    grant_id = next(line.split()[0] for line in grants if "asset:target" in line)

    def revoke() -> None:
        revoked = conduit("grant", "revoke", grant_id, "--data-dir", str(gateway.data))
        assert revoked.returncode == 0, revoked.stderr

    code, _, elapsed = session_ended_by(gateway, "alice", revoke)
    assert code != 0
    assert elapsed < 5  # generous for a loaded CI machine; bench/ measures the real figure
    ends = [e for e in gateway.audit_until("session.end") if e["action"] == "session.end"]
    assert ends and ends[-1]["detail"]["reason"] == "revoked"  # type: ignore[index]


@pytest.mark.parametrize(
    ("user", "command"), [("dave", ("user", "disable")), ("carol", ("user", "reset-mfa"))]
)
def test_disabling_the_account_ends_its_live_session(
    gateway: Gateway, user: str, command: tuple[str, ...]
) -> None:
    """The first thing an incident responder does: the vendor's session must not outlive
    their account. (Only active accounts are in the policy; the change reloads it.)"""

    def change() -> None:
        changed = conduit(*command, user, "--data-dir", str(gateway.data))
        assert changed.returncode == 0, changed.stderr

    code, err, _ = session_ended_by(gateway, user, change)
    assert code != 0
    assert "session ended: revoked" in err
    ends = [
        e for e in gateway.audit_until("session.end")
        if e["action"] == "session.end" and e["actor"] == user
    ]  # fmt: skip
    assert ends and ends[-1]["detail"]["reason"] == "revoked"  # type: ignore[index]


def test_admin_kill_from_the_cli_ends_the_session(gateway: Gateway) -> None:
    listed: list[str] = []

    def kill() -> None:
        listing = conduit("sessions", "list", "--data-dir", str(gateway.data))
        assert listing.returncode == 0, listing.stderr
        [row] = [line for line in listing.stdout.splitlines() if " bob " in line]
        listed.append(row.split()[0])
        killed = conduit("sessions", "kill", listed[0], "--reason", "cli kill",
                         "--data-dir", str(gateway.data))  # fmt: skip
        assert killed.returncode == 0, killed.stderr

    code, err, _ = session_ended_by(gateway, "bob", kill)
    [session_id] = listed
    assert code != 0
    assert "session ended: killed: cli kill" in err
    events = gateway.audit_until("session.end")
    assert any(e["action"] == "session.kill" for e in events)
    ends = [e for e in events if e["action"] == "session.end"]
    assert ends[-1]["detail"]["reason"] == "killed"  # type: ignore[index]
    assert ends[-1]["detail"]["note"] == "cli kill"  # type: ignore[index]
    # A note with spaces no longer stops the recording from being closed and signed.
    recording_id = str(ends[-1]["detail"]["recording_id"])  # type: ignore[index]
    verified = conduit("recordings", "verify", recording_id, "--data-dir", str(gateway.data))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "end reason killed" in verified.stdout
    after = conduit("sessions", "list", "--data-dir", str(gateway.data))
    assert session_id not in after.stdout
    again = conduit("sessions", "kill", session_id, "--data-dir", str(gateway.data))
    assert again.returncode == 1 and "no live session" in again.stderr


def test_client_closing_stdout_ends_the_remote_command(gateway: Gateway) -> None:
    """`ssh gw 'yes' | head -1`: OpenSSH sends eow@openssh.com; the command must end."""
    proc = gateway.background("carol+target", "yes conduit-eow", gateway.code("carol"))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"conduit-eow\n"
        proc.stdout.close()  # what `head -1` does after its line
        proc.wait(timeout=30)  # hangs forever without eow handling
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert gateway.server.proc.poll() is None


def test_changed_target_host_key_refuses(gateway: Gateway, sshd: SSHDTarget) -> None:
    sshd.rotate_host_key()
    result = gateway.ssh("alice+target", "true", gateway.code("alice"))
    assert result.returncode == 1
    assert "could not be verified" in result.stderr
    assert any(e["action"] == "upstream.hostkey_mismatch" for e in gateway.audit())
    kind = ("kind", "hostkey_mismatch")
    assert gateway.server.metric("conduit_security_alerts_total", *kind) == 1


def test_grant_expiring_mid_session_ends_it_at_valid_until(gateway: Gateway) -> None:
    data = ["--data-dir", str(gateway.data)]
    grants = conduit("grant", "list", *data).stdout.splitlines()
    standing = next(line.split()[0] for line in grants if "asset:target" in line)
    assert conduit("grant", "revoke", standing, *data).returncode == 0
    until = time.time() + 8
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(until))
    until = float(int(until))  # the grant's end, to the second as given
    added = conduit("grant", "add", "--user", "dave", "--asset", "target", "--action", "ssh",
                    "--until", iso, *data)  # fmt: skip
    assert added.returncode == 0, added.stderr
    proc = gateway.background("dave+target", "echo started; sleep 60", gateway.code("dave"))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"started"
        assert time.time() < until, "the session must start before the grant ends"
        code = proc.wait(timeout=30)
        ended = time.time()
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert code != 0 and "session ended: expired" in err.decode()
    assert ended >= until - 0.2  # not cut short
    assert ended - until < 5  # generous for a loaded CI; bench/ssh_relay.py measures it
    ends = [e for e in gateway.audit_until("session.end") if e["action"] == "session.end"]
    assert ends[-1]["detail"]["reason"] == "expired"  # type: ignore[index]


@pytest.mark.parametrize("command", [None, "anything"])
def test_menu_with_stdin_closed_prints_and_exits(gateway: Gateway, command: str | None) -> None:
    """`ssh -n alice@gateway`: OpenSSH sends EOF at once; the menu must still be printed,
    the client must exit, and the gateway must log no traceback."""
    argv = gateway.argv("alice", command or "", "-n")
    if command is None:
        argv.pop()  # no command: a shell request, as the README's `ssh alice@gateway`
    result = subprocess.run(argv, env=gateway.askpass("alice", gateway.code("alice")),
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Assets you may reach over SSH now:" in result.stdout
    assert "target" in result.stdout
    assert gateway.server.terminate() == 0
    assert "Traceback" not in gateway.server.stderr
    assert "BrokenPipeError" not in gateway.server.stderr


def test_exec_command_line_is_audited_and_recorded_but_not_logged(gateway: Gateway) -> None:
    """What an exec session ran (``rsync --server ...``, ``git-upload-pack ...``) is evidence:
    in session.start and inside the (encrypted) recording; a typed secret stays out of logs."""
    command = "echo conduit-exec-$((20+1)) --password=hunter2-typed-secret"
    result = gateway.ssh("alice+target", command, gateway.code("alice"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "conduit-exec-21 --password=hunter2-typed-secret\n"
    events = gateway.audit_until("session.end")
    [start] = [e for e in events if e["action"] == "session.start"]
    detail = start["detail"]
    assert isinstance(detail, dict)
    assert detail["command"] == command
    assert detail["command_length"] == len(command)
    exported = conduit("recordings", "export", str(detail["recording_id"]),
                       "--data-dir", str(gateway.data))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()[1:]]
    assert lines[0][1:] == ["m", f"command: {command}"]
    # The clear header carries ids only: the command is in the encrypted events.
    [path] = gateway.data.rglob(f"{detail['recording_id']}.rec")
    assert b"hunter2" not in path.read_bytes()
    assert gateway.server.terminate() == 0
    assert "hunter2" not in gateway.server.stderr


def test_a_long_exec_command_line_is_cut_in_the_audit_and_whole_in_the_recording(
    gateway: Gateway,
) -> None:
    command = "true " + "x" * 20000  # an audit detail holds at most 16 KiB
    result = gateway.ssh("bob+target", command, gateway.code("bob"))
    assert result.returncode == 0, result.stderr
    [start] = [e for e in gateway.audit_until("session.end") if e["action"] == "session.start"]
    detail = start["detail"]
    assert isinstance(detail, dict)
    assert detail["command"] == command[:1024]
    assert detail["command_length"] == len(command)
    exported = conduit("recordings", "export", str(detail["recording_id"]),
                       "--data-dir", str(gateway.data))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout.splitlines()[1])[1:] == ["m", f"command: {command}"]


def test_a_target_account_needs_a_grant_naming_it(gateway: Gateway, sshd: SSHDTarget) -> None:
    """``user+asset+account`` logs in as that vaulted account only where a grant names it; the
    plain ``ssh`` grant covers the asset's default account alone."""
    where = ("--data-dir", str(gateway.data))
    for account in ("maint", "root"):
        vaulted = conduit("asset", "credential", "target", "--account", account, "--username",
                          "root", "--key-file", str(sshd.client_key), *where)  # fmt: skip
        assert vaulted.returncode == 0, vaulted.stderr
    before = gateway.ssh("carol+target+maint", "true", gateway.code("carol"))
    assert before.returncode != 0 and "not found or not permitted" in before.stderr
    granted = conduit("grant", "add", "--org", "acme", "--asset", "target", "--action", "ssh",
                      "--account", "maint", *where)  # fmt: skip
    assert granted.returncode == 0, granted.stderr  # every decision reads the policy version
    maint = gateway.ssh("alice+target+maint", "echo as-maint", gateway.code("alice"))
    assert maint.returncode == 0, maint.stderr
    assert maint.stdout == "as-maint\n"
    root = gateway.ssh("bob+target+root", "echo as-root", gateway.code("bob"))
    assert root.returncode != 0 and "as-root" not in root.stdout
    assert "not found or not permitted" in root.stderr
    events = gateway.audit_until("session.end")
    starts = [e["detail"] for e in events if e["action"] == "session.start"]
    assert [(d["account"], d["action"]) for d in starts] == [("maint", "ssh:account=maint")]
    denied = {e["actor"]: e["detail"] for e in events if e["action"] == "session.denied"}
    assert denied["carol"]["account"] == "maint" and denied["bob"]["account"] == "root"
    assert "ssh:account=root" in denied["bob"]["reason"]
