"""The test bed for ``bench.ssh_relay``: a real OpenSSH sshd, a real ``conduit serve`` in
front of it, and the OpenSSH client command lines for every path measured.

One sshd on 127.0.0.1 is both the asset and, for the baselines, the jump host (ProxyJump and
the nested ``ssh jump 'ssh target ...'`` hop go back into the same daemon). Its config is
``tests.sshd_target``'s plus ``MaxStartups``/``MaxSessions`` raised, so the daemon's
connection throttle (default 10:30:100) does not drop the parallel and idle-session runs,
and ``HOME`` set to an empty directory, so the asset account's dotfiles (root's, on a build
machine) do not add their start-up to every command on every path.
The gateway is set up like ``tests/test_ssh_jump.py``: users in org ``acme`` with TOTP,
asset ``target`` with a vaulted key and a pinned host key, a grant for the org; recording
stays on (that is the product). Everything listens on 127.0.0.1 only. Does not measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.authz import hostkeys
from gateway.config import Overrides, load_settings
from gateway.db.models import User
from gateway.identity.accounts import create_user
from gateway.identity.passwords import hash_password
from gateway.identity.ssh_access import add_public_key, issue_connect_code
from gateway.identity.ssh_certs import issue_certificate
from gateway.keys import load_keyring
from gateway.services import Services
from gateway.vault import set_credential
from tests.sshd_target import SSHD, free_port, prepare
from tests.support import CONDUIT, clean_env, init_data_dir

PASSWORD = "Bench-Passphrase-Long-1"  # noqa: S105 - throwaway benchmark accounts
CIPHER = "aes128-gcm@openssh.com"
ASSET = "target"
CODE_USER = "bench"  # connect codes: bulk, connect, keys, idle, kill
END_USER = "ender"  # its own org, so grants for the revoke/expiry runs touch nobody else
ASKPASS = """#!/bin/sh
# OpenSSH's prompts: kbd-interactive asks "Password: " then "Verification code: ";
# password auth (a connect code given as the password) asks "user@host's password: ".
case "$1" in
  *erification*) printf '%s\\n' "$BENCH_CODE" ;;
  *) printf '%s\\n' "$BENCH_PASSWORD" ;;
esac
"""


def start_sshd(directory: Path) -> tuple[int, int, subprocess.Popen[bytes]]:
    """``tests.sshd_target.start_sshd`` with the connection throttles raised and a second
    port for the jump role (OpenSSH refuses ``-J`` to the very host:port it then reaches)."""
    # The asset account's home for its sessions: root's real dotfiles on a build machine
    # (here pyenv init, ~70 ms per command and a lock that concurrent logins queue on)
    # would add the same start-up to every path and blur what is compared.
    home = directory / "home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    port, jump_port = free_port(), free_port()
    while jump_port == port:
        jump_port = free_port()
    throttles = f"MaxStartups 2000\nMaxSessions 2000\nSetEnv HOME={home}\n"
    prepare(directory, [port, jump_port], throttles)
    log = directory / "sshd.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    wait_listening(port, proc, log)
    wait_listening(jump_port, proc, log)
    return port, jump_port, proc


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this bench started (by its own handle, never by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Rig:
    work: Path
    sshd_port: int
    jump_port: int
    gateway_port: int
    portal_port: int
    client_key: Path
    client_config: Path
    askpass: Path
    data: Path
    secrets: dict[str, str]  # password+TOTP users, each used for one login only
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    # Bare asyncssh relays (bench.bare_relay): name -> (process, port); "bare" is stock
    # asyncssh, "bare_fastpath" has the gateway's packet fast path installed. Also in procs.
    bare_relays: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)
    services: Services | None = None
    _spent: set[str] = field(default_factory=set)

    # -- OpenSSH client command lines ----------------------------------------------------
    def _ssh(self, *args: str, classic_kex: bool = False) -> list[str]:
        config = self.client_config.with_suffix(".c25519") if classic_kex else self.client_config
        return ["ssh", "-F", str(config), "-c", CIPHER, *args]

    def direct(self, command: str, classic_kex: bool = False) -> list[str]:
        return self._ssh(
            "-o", "BatchMode=yes", "-p", str(self.sshd_port), "127.0.0.1", command,
            classic_kex=classic_kex,
        )  # fmt: skip

    def proxyjump(self, command: str, classic_kex: bool = False) -> list[str]:
        # ssh passes -F on to the jump's own ssh -W, so both legs use the same config.
        jump = f"root@127.0.0.1:{self.jump_port}"
        return self._ssh(
            "-o", "BatchMode=yes", "-J", jump, "-p", str(self.sshd_port), "127.0.0.1", command,
            classic_kex=classic_kex,
        )  # fmt: skip

    def nested(self, command: str) -> list[str]:
        """``ssh jump 'ssh target cmd'``: the inner client runs on the jump host."""
        inner = " ".join(self._ssh("-o", "BatchMode=yes", "-p", str(self.sshd_port), "127.0.0.1"))
        jump = ("-o", "BatchMode=yes", "-p", str(self.jump_port), "127.0.0.1")
        return self._ssh(*jump, f"{inner} '{command}'")

    def relay(self, command: str, user: str = CODE_USER, kbdint: bool = False) -> list[str]:
        auth = "keyboard-interactive" if kbdint else "password"
        return self._ssh(
            "-o", f"PreferredAuthentications={auth}", "-o", "NumberOfPasswordPrompts=1",
            "-p", str(self.gateway_port), f"{user}+{ASSET}@127.0.0.1", command,
        )  # fmt: skip

    def bare(self, command: str, name: str = "bare") -> list[str]:
        """Through a bare asyncssh relay (no login, policy or recording): the baseline."""
        return self._ssh("-o", "BatchMode=yes", "-p", str(self.bare_relays[name][1]), "127.0.0.1",
                         command)  # fmt: skip

    def relay_cert(self, command: str, user: str = CODE_USER) -> list[str]:
        """A registered key with the gateway's user certificate for it (issued after MFA)."""
        return [
            "ssh", "-F", str(self.client_config.with_suffix(".cert")), "-c", CIPHER,
            "-o", "PreferredAuthentications=publickey", "-o", "BatchMode=yes",
            "-p", str(self.gateway_port), f"{user}+{ASSET}@127.0.0.1", command,
        ]  # fmt: skip

    def env(self, password: str = "", code: str = "") -> dict[str, str]:
        env = clean_env(
            SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
            BENCH_PASSWORD=password, BENCH_CODE=code,
        )  # fmt: skip
        return env

    def totp_login(self) -> tuple[str, dict[str, str]]:
        """A user who has not logged in yet and the askpass environment for password + TOTP.

        Each user logs in once: a TOTP code is single use per account and 30 s step, and the
        gateway refuses a code from an older step than the last one accepted.
        """
        for user, secret in self.secrets.items():
            if user not in self._spent:
                self._spent.add(user)
                return user, self.env(PASSWORD, pyotp.TOTP(secret).now())
        raise RuntimeError("out of password+TOTP users: raise the count made at set-up")

    async def connect_codes(self, n: int, user: str = CODE_USER) -> list[str]:
        """Fresh one-time connect codes (valid 5 min), as the portal issues after MFA."""
        services = self._services()
        async with services.sessions() as db, db.begin():
            user_id = await _user_id(db, user)
            now = services.clock()
            return [(await issue_connect_code(db, user_id, ASSET, now))[0] for _ in range(n)]

    def _services(self) -> Services:
        if self.services is None:
            settings = load_settings(None, Overrides(data_dir=self.data), environ={})
            self.services = Services.build(settings, load_keyring(settings))
        return self.services

    @property
    def authz_services(self) -> Services:
        """The same calls ``conduit grant ...``/``sessions kill`` make, from this process."""
        return self._services()

    def gateway_pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    async def close(self) -> None:
        if self.services is not None:
            await self.services.close()
        if self.gateway is not None:
            stop(self.gateway)
        for proc in self.procs:
            stop(proc)


async def _user_id(db: AsyncSession, username: str) -> int:
    found = await db.scalar(select(User.id).where(User.username == username))
    assert found is not None, username
    return int(found)


async def populate(
    data: Path, sshd_dir: Path, sshd_port: int, n_totp_users: int, vendor_key: Path,
    environ: dict[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    """Users, asset, vaulted key, pinned host key, org grant, CODE_USER's registered key and
    its certificate (as ``conduit ssh-cert`` issues after MFA, not timed); returns TOTP
    users' secrets. ``environ``: settings from the environment (a PostgreSQL URL, say)."""
    settings = load_settings(None, Overrides(data_dir=data), environ=environ or {})
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    secrets = {f"pw{i:04d}": pyotp.random_base32() for i in range(n_totp_users)}
    # One argon2 hash shared by every bench account: creating them stays fast, and each login
    # still pays the full verification.
    stored = hash_password(PASSWORD)
    try:
        async with services.sessions() as db, db.begin():
            everyone: dict[str, tuple[str, str | None]] = {
                CODE_USER: ("acme", None),
                END_USER: ("endorg", None),
            }
            everyone.update({u: ("acme", s) for u, s in secrets.items()})
            for user, (org, secret) in everyone.items():
                await create_user(
                    db, username=user, roles=["vendor"], now=services.clock(),
                    master_key=keys.master_key, totp_secret=secret or pyotp.random_base32(),
                    status="active", organisation=org,
                )  # fmt: skip
            await db.execute(update(User).values(password_hash=stored))
            assert keys.ssh_user_ca is not None, "conduit init makes the SSH user CA"
            user_id, now = await _user_id(db, CODE_USER), services.clock()
            line = vendor_key.with_suffix(".pub").read_text()
            registered = await add_public_key(db, user_id, line, now)
            issued = await issue_certificate(
                db, keys.ssh_user_ca, user_id, registered, now=now, hours=8, via="cli"
            )
            await asyncio.to_thread(Path(f"{vendor_key}-cert.pub").write_text, issued.text)
        await services.authz.add_asset(ASSET, "127.0.0.1", sshd_port, "ssh", actor="bench")
        async with services.sessions() as db, db.begin():
            await set_credential(
                db, keys.master_key, asset=ASSET, username="root",
                private_key=(sshd_dir / "client_ed25519").read_bytes(), now=services.clock(),
            )  # fmt: skip
            host_key = (sshd_dir / "host_ed25519.pub").read_text().strip()
            await hostkeys.pin(
                db, ASSET, hostkeys.parse_key_line(host_key), actor="bench", now=services.clock()
            )
        await services.authz.add_grant(
            subject_kind="org", subject="acme", object_kind="asset", obj=ASSET,
            action="ssh", actor="bench",
        )  # fmt: skip
    finally:
        await services.close()
    return secrets


# Extra environment for ``conduit serve`` (bench.ssh_relay --event-loop sets the loop).
GATEWAY_ENV: dict[str, str] = {}


def start_gateway(data: Path, work: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``conduit serve`` with its output to a file (a pipe nobody reads would stall it)."""
    portal, ssh_port = free_port(), free_port()
    log = work / "gateway.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [*CONDUIT, "serve", "--data-dir", str(data),
             "--portal-listen", f"127.0.0.1:{portal}", "--ssh-listen", f"127.0.0.1:{ssh_port}"],
            stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, env=clean_env(**GATEWAY_ENV),
        )  # fmt: skip
    wait_listening(ssh_port, proc, log, limit=60)
    deadline = time.monotonic() + 30
    while "Conduit SSH on" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, portal, ssh_port


def start_bare_relay(
    log: Path, target_port: int, key: Path, extra: tuple[str, ...]
) -> tuple[subprocess.Popen[bytes], int]:
    """``bench.bare_relay`` on the gateway's event loop; returns it and its port."""
    loop = GATEWAY_ENV.get("CONDUIT_SERVER__EVENT_LOOP", "uvloop")
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_relay", "--target-port", str(target_port),
             "--client-key", str(key), "--event-loop", loop, *extra],
            stdout=subprocess.PIPE, stderr=sink, stdin=subprocess.DEVNULL, env=clean_env(),
        )  # fmt: skip
    assert proc.stdout is not None  # noqa: S101
    line = proc.stdout.readline().decode()
    if not line.startswith("listening "):
        stop(proc)
        raise RuntimeError(f"bench.bare_relay did not start: {log.read_text()[-500:]}")
    proc.stdout.close()  # nothing more is printed
    return proc, int(line.split()[1])


def write_client_configs(work: Path, key: Path) -> tuple[Path, Path]:
    """The OpenSSH client config (``key`` for root on the sshd, the cipher for both legs of
    ``-J``), its curve25519 and certificate variants, and the vendor's own key (whose
    certificate ``populate`` issues). Returns the config and the vendor key."""
    config = work / "ssh_config"
    text = f"""\
Host *
  User root
  IdentityFile {key}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  UpdateHostKeys no
  LogLevel ERROR
  # Also for the jump leg of -J, whose ssh -W gets only -F, not -c.
  Ciphers {CIPHER}
  ConnectTimeout 30
  ControlMaster no
  ControlPath none
  ForwardAgent no
"""
    config.write_text(text)
    # OpenSSH 9.2 prefers post-quantum sntrup761x25519; asyncssh (both gateway legs) has
    # no sntrup, so the relay negotiates curve25519. This config lets the baselines do
    # the same, for a like-for-like connect figure beside the default one.
    config.with_suffix(".c25519").write_text(text + "  KexAlgorithms curve25519-sha256\n")
    # The vendor's own key and the certificate the gateway issued for it (relay_cert).
    vendor_key = work / "vendor_ed25519"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(vendor_key)]
    subprocess.run(keygen, check=True)
    config.with_suffix(".cert").write_text(
        text.replace(f"IdentityFile {key}",
                     f"IdentityFile {vendor_key}\n  CertificateFile {vendor_key}-cert.pub")
    )  # fmt: skip
    return config, vendor_key


async def build(work: Path, n_totp_users: int) -> Rig:
    sshd_dir = work / "sshd"
    sshd_port, jump_port, sshd = start_sshd(sshd_dir)
    rig_procs = [sshd]
    try:
        key = sshd_dir / "client_ed25519"
        config, vendor_key = await asyncio.to_thread(write_client_configs, work, key)
        askpass = work / "askpass.sh"
        askpass.write_text(ASKPASS)
        askpass.chmod(0o700)
        data = work / "data"
        await asyncio.to_thread(init_data_dir, data)
        secrets = await populate(data, sshd_dir, sshd_port, n_totp_users, vendor_key)
        bare_relays: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        for name, extra in (("bare", ()), ("bare_fastpath", ("--fastpath",))):
            bare_relays[name] = await asyncio.to_thread(
                start_bare_relay, work / f"{name}.log", sshd_port, key, extra
            )
            rig_procs.append(bare_relays[name][0])
        gateway, portal, gw_port = await asyncio.to_thread(start_gateway, data, work)
    except BaseException:
        for proc in rig_procs:
            stop(proc)
        raise
    return Rig(
        work, sshd_port, jump_port, gw_port, portal, key, config, askpass, data, secrets,
        procs=rig_procs, gateway=gateway, bare_relays=bare_relays,
    )  # fmt: skip


# -- process figures ---------------------------------------------------------------------
def status_field(pid: int, name: str) -> int:
    """An integer field of /proc/<pid>/status (VmRSS in kB, Threads...)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{name}:\s+(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    tree, frontier = {root}, [root]
    while frontier:
        found = children.get(frontier.pop(), [])
        tree.update(found)
        frontier.extend(found)
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root`` and its live descendants (the recordings indexer is a child)."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def tree_pss_kb(root: int) -> int:
    """Proportional set size summed over ``root`` and all its descendants (shared pages
    split between the processes sharing them, so the sum is what the tree really uses)."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pss = re.search(r"^Pss:\s+(\d+)", rollup, re.MULTILINE)
            total += int(pss.group(1)) if pss else 0
    return total


def open_files_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft}/{hard}"
    return "?"


def utc_in(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
