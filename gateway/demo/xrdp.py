"""A local xrdp + xorgxrdp on 127.0.0.1 as an RDP asset behind the gateway: the RDP asset of
``conduit demo`` (as root), and the one real-peer tests and benches use (``tests/rdp_target``).

xrdp reads the sesman port from the fixed /etc/xrdp/sesman.ini, so the pair runs in a private
mount namespace (``unshare --mount``) where /etc/xrdp is this target's own directory: its own
ports, self-signed TLS certificate (TLS only: no RDP standard security), logs and
window-manager script, and nothing of the node's xrdp touched. ``hidelogwindow`` makes xrdp
drop a refused login instead of showing its login screen (the renderer reads that as
auth_failed). A local test user is created with its password set through chpasswd on stdin and
removed at ``stop``, after every process it owns (the session's Xorg, xterm, chansrv) is killed
by PID. Needs root and the xrdp, xorgxrdp and util-linux packages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

XRDP = "/usr/sbin/xrdp"
SESMAN = "/usr/sbin/xrdp-sesman"
XORGXRDP = "/usr/lib/xorg/modules/libxorgxrdp.so"
STARTWM = """#!/bin/sh
# the test session's desktop: one terminal, then wait (sesman ends the session with us)
xterm -geometry 80x24+10+10 &
exec sleep 86400
"""


def missing_reason() -> str:
    for path in (XRDP, SESMAN, XORGXRDP, "/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/xterm"):
        if not Path(path).exists():
            return f"{path} not installed (xrdp, xorgxrdp, util-linux, xterm)"
    if os.geteuid() != 0:
        return "the xrdp target creates a local user and a mount namespace: run as root"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def write_certificate(
    directory: Path, common_name: str = "conduit-rdp-target", *, ca: bool = False
) -> str:
    """A fresh RSA certificate and key in ``directory``; its SHA-256 fingerprint. Self-signed,
    or with ``ca`` issued for 127.0.0.1 by a new CA whose certificate is left in ca.pem (a
    certificate any client trusting that CA would accept for the asset's address)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if ca:
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_cert = (
            _builder("Conduit test CA", "Conduit test CA", ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        address = ipaddress.ip_address("127.0.0.1")
        cert = (
            _builder("127.0.0.1", "Conduit test CA", key)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
    else:
        cert = _builder(common_name, common_name, key).sign(key, hashes.SHA256())
    key_path = directory / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.fingerprint(hashes.SHA256()).hex(":")


def _set(text: str, key: str, value: str, section: str | None = None) -> str:
    """Set ``key=value`` in an ini text (first occurrence, or appended to ``section``)."""
    pattern = re.compile(rf"(?m)^{re.escape(key)}=.*$")
    if pattern.search(text):
        return pattern.sub(lambda _: f"{key}={value}", text, count=1)
    if section is None:
        raise KeyError(key)
    return text.replace(f"[{section}]\n", f"[{section}]\n{key}={value}\n", 1)


def _configure(directory: Path, port: int, sesman_port: int) -> None:
    for item in Path("/etc/xrdp").iterdir():
        if item.is_file() and item.suffix in (".ini", ".sh"):
            shutil.copy(item, directory / item.name)
    xrdp = (directory / "xrdp.ini").read_text()
    for key, value in {
        "port": f"tcp://127.0.0.1:{port}",
        "fork": "false",
        "security_layer": "tls",
        "certificate": str(directory / "cert.pem"),
        "key_file": str(directory / "key.pem"),
        "LogFile": str(directory / "xrdp.log"),
        "EnableSyslog": "false",
        "autorun": "Xorg",
    }.items():
        xrdp = _set(xrdp, key, value)
    xrdp = _set(xrdp, "hidelogwindow", "true", "Globals")
    xrdp = _set(xrdp, "require_credentials", "true", "Globals")
    (directory / "xrdp.ini").write_text(xrdp)
    sesman = (directory / "sesman.ini").read_text()
    for key, value in {
        "ListenAddress": "127.0.0.1",
        "ListenPort": str(sesman_port),
        "EnableUserWindowManager": "false",
        "DefaultWindowManager": str(directory / "startwm.sh"),
        "AllowRootLogin": "false",
        "KillDisconnected": "true",
        "Policy": "UBDC",  # a new desktop per connection: renderers never share one
        "LogFile": str(directory / "sesman.log"),
        "EnableSyslog": "false",
    }.items():
        sesman = _set(sesman, key, value)
    sesman = sesman.replace("param=xrdp/xorg.conf", "param=/etc/X11/xrdp/xorg.conf")
    (directory / "sesman.ini").write_text(sesman)
    startwm = directory / "startwm.sh"
    startwm.unlink()
    startwm.write_text(STARTWM)
    startwm.chmod(0o755)
    directory.chmod(0o755)  # sesman runs startwm.sh as the test user


def _user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class RDPTarget:
    directory: Path
    port: int
    sesman_port: int
    username: str
    password: str
    uid: int
    fingerprint: str
    namespace: subprocess.Popen[bytes]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _enter(self, *argv: str) -> list[str]:
        return ["/usr/bin/nsenter", "-t", str(self.namespace.pid), "-m", *argv]

    def _start(self, name: str, argv: list[str]) -> None:
        with (self.directory / f"{name}.out").open("ab") as sink:
            self.procs[name] = subprocess.Popen(  # noqa: S603 - fixed argument list
                self._enter(*argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
            )

    def start_xrdp(self) -> None:
        self._start("xrdp", [XRDP, "--nodaemon", "--config", str(self.directory / "xrdp.ini")])
        _wait_port(self.port, self.procs["xrdp"], self.directory / "xrdp.log")

    def stop_xrdp(self) -> None:
        proc = self.procs.pop("xrdp", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    def rotate_certificate(self, *, ca: bool = False) -> str:
        """Simulate a replaced or spoofed asset: a new certificate (``ca``: CA-issued for
        127.0.0.1, the CA in ``directory / "ca.pem"``), xrdp restarted."""
        self.stop_xrdp()
        self.fingerprint = write_certificate(self.directory, ca=ca)
        self.start_xrdp()
        return self.fingerprint

    def end_sessions(self) -> None:
        """Kill every process of the test user (the session's Xorg, window manager, chansrv)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _user_pids(self.uid)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _alive(pid)]
                time.sleep(0.05)

    def stop(self) -> None:
        self.stop_xrdp()
        sesman = self.procs.pop("sesman", None)
        if sesman is not None and sesman.poll() is None:
            sesman.terminate()
            sesman.wait(timeout=10)
        self.end_sessions()
        if self.namespace.poll() is None:
            self.namespace.kill()
            self.namespace.wait(timeout=10)
        subprocess.run(  # noqa: S603
            ["/usr/sbin/userdel", "--remove", self.username], capture_output=True, check=False
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.directory.glob("*.log")))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"xrdp exited ({proc.returncode}): {text[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"xrdp did not listen on {port}")


def _wait_sesman(port: int, proc: subprocess.Popen[bytes]) -> None:
    """sesman binds ::1 or 127.0.0.1 depending on the build; either will do."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xrdp-sesman exited ({proc.returncode})")
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as sock:
                if sock.connect_ex((host, port)) == 0:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"xrdp-sesman did not listen on {port}")


def start_rdp_target(user_prefix: str = "crdp") -> RDPTarget:
    """Create the test user, configure and start sesman and xrdp; ``stop()`` undoes it all.
    The directory is a fresh one under /tmp: sesman runs startwm.sh from it as the test user,
    who cannot traverse pytest's 0700 temp directories."""
    directory = Path(tempfile.mkdtemp(prefix="conduit-xrdp-"))
    username = f"{user_prefix}{secrets.token_hex(4)}"
    password = f"Pw-{secrets.token_urlsafe(12)}"
    subprocess.run(  # noqa: S603
        ["/usr/sbin/useradd", "--create-home", "--shell", "/bin/sh", username],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(  # noqa: S603 - the password on stdin, never argv
        ["/usr/sbin/chpasswd"], input=f"{username}:{password}\n".encode(), check=True,
        capture_output=True,
    )  # fmt: skip
    uid = int(
        subprocess.run(  # noqa: S603
            ["/usr/bin/id", "-u", username], check=True, capture_output=True, text=True
        ).stdout
    )
    port, sesman_port = free_port(), free_port()
    fingerprint = write_certificate(directory)
    _configure(directory, port, sesman_port)
    namespace = subprocess.Popen(  # noqa: S603
        ["/usr/bin/unshare", "--mount", "--propagation", "private", "sleep", "86400"],
        stdin=subprocess.DEVNULL,
    )
    target = RDPTarget(
        directory, port, sesman_port, username, password, uid, fingerprint, namespace
    )
    try:
        deadline = time.monotonic() + 5
        while True:  # unshare has made the namespace once sleep runs in it
            own = os.readlink("/proc/self/ns/mnt")
            if os.readlink(f"/proc/{namespace.pid}/ns/mnt") != own:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("unshare did not make a mount namespace")
            time.sleep(0.02)
        subprocess.run(  # noqa: S603
            target._enter("/usr/bin/mount", "--bind", str(directory), "/etc/xrdp"),
            check=True, capture_output=True,
        )  # fmt: skip
        target._start("sesman", [SESMAN, "--nodaemon", "--config", str(directory / "sesman.ini")])
        _wait_sesman(sesman_port, target.procs["sesman"])
        target.start_xrdp()
    except BaseException:
        target.stop()
        raise
    return target
