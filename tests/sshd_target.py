"""A real OpenSSH sshd on 127.0.0.1 as the asset behind the gateway, for real-peer tests.

It runs with its own config, host key and authorized_keys (root login by key only, which is
the account the gateway's vaulted key opens); it needs root and /usr/sbin/sshd, which
scripts/test.sh installs. Nothing listens beyond loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def missing_reason() -> str:
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        return "OpenSSH server not installed (scripts/test.sh installs it as root)"
    if os.geteuid() != 0:
        return "the sshd target logs in as root by key: run the tests as root"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class SSHDTarget:
    directory: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def host_public_key(self) -> str:
        return (self.directory / "host_ed25519.pub").read_text().strip()

    @property
    def client_key(self) -> Path:
        return self.directory / "client_ed25519"

    def rotate_host_key(self) -> None:
        """Simulate a replaced or spoofed target: new host key, sshd restarted."""
        self.stop()
        for name in ("host_ed25519", "host_ed25519.pub"):
            (self.directory / name).unlink()
        keygen(self.directory / "host_ed25519")
        self.proc = _start(self.directory, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _start(directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = directory / "sshd.log"
    with log.open("ab") as sink:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("sshd did not start listening")


def prepare(directory: Path, ports: list[int], extra: str = "") -> None:
    """Host key, client key, authorized_keys and an sshd_config listening on ``ports``
    (127.0.0.1 only); ``extra`` lines are appended to the config."""
    directory.mkdir(parents=True, exist_ok=True)
    keygen(directory / "host_ed25519")
    keygen(directory / "client_ed25519")
    (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    listen = "".join(f"Port {port}\n" for port in ports)
    (directory / "sshd_config").write_text(f"""\
{listen}ListenAddress 127.0.0.1
HostKey {directory}/host_ed25519
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PermitTTY yes
Subsystem sftp internal-sftp
LogLevel ERROR
{extra}""")


def start_sshd(directory: Path) -> SSHDTarget:
    port = free_port()
    prepare(directory, [port])
    return SSHDTarget(directory, port, _start(directory, port))
