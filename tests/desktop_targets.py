"""Real VNC targets on 127.0.0.1 for desktop tests: TigerVNC ``Xvnc`` and ``x11vnc``.

Each target runs in a directory of its own (password file, certificate, log) on a display
number no other X server on this machine holds (checked against /tmp/.X11-unix and the lock
files, and retried if another test takes it first). Passwords go to ``vncpasswd -f`` on
stdin, never in argv. Processes are ended by their PID. The RDP renderer's fixtures live in
their own module.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.desktop import rfb
from tests.sshd_target import free_port

XVNC = "/usr/bin/Xvnc"
FIRST_DISPLAY = 40  # clear of :0-:39, which people and desktop sessions tend to use
LAST_DISPLAY = 399
START_SECONDS = 15


def missing_reason(*tools: str) -> str:
    """Empty when every tool (Xvnc, vncpasswd and ``tools``) is installed, else what is not."""
    missing = [t for t in ("Xvnc", "vncpasswd", *tools) if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else ""


def display_free(number: int) -> bool:
    return not (
        Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()
    )


def free_displays() -> list[int]:
    """Free display numbers, starting from one derived from the PID so that parallel test
    processes start their search in different places."""
    span = LAST_DISPLAY - FIRST_DISPLAY + 1
    offset = (os.getpid() * 7) % span
    order = [FIRST_DISPLAY + (offset + i) % span for i in range(span)]
    return [n for n in order if display_free(n)]


def write_vnc_password(path: Path, password: str) -> None:
    """A VNC password file as ``vncpasswd -f`` writes it (the password on its stdin)."""
    result = subprocess.run(
        ["vncpasswd", "-f"], input=password.encode(), capture_output=True, check=True
    )
    path.write_bytes(result.stdout)
    path.chmod(0o600)


def make_certificate(directory: Path, name: str = "vnc-target") -> tuple[Path, Path, str]:
    """A self-signed ECDSA certificate and key for an X509 VNC target: (cert, key, sha256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


def _wait_listening(proc: subprocess.Popen[bytes], port: int | str, log: Path, what: str) -> None:
    """Until ``port`` (or the unix socket at that path) accepts a connection."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if isinstance(port, str):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(1)
                    sock.connect(port)
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{what} did not listen on {port} within {START_SECONDS} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End one process we started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class XvncTarget:
    directory: Path
    display: int
    port: int  # 0 when it listens on a unix socket only
    proc: subprocess.Popen[bytes]
    unix_path: str = ""

    @property
    def display_name(self) -> str:
        return f":{self.display}"

    def x11(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        """Run an X client (``xsetroot``, ``xdotool``) against this display, to completion."""
        env = {**os.environ, "DISPLAY": self.display_name}
        env.pop("XAUTHORITY", None)
        return subprocess.run(list(argv), env=env, capture_output=True, check=True, timeout=30)

    def paint(self, colour: str) -> None:
        """The whole root window in one colour (``#rrggbb``)."""
        self.x11("xsetroot", "-solid", colour)

    def stop(self) -> None:
        stop(self.proc)


def start_xvnc(
    directory: Path,
    *,
    security: str = "VncAuth",
    password: str | None = None,
    certificate: tuple[Path, Path] | None = None,
    geometry: str = "640x480",
    unix_socket: bool = False,
) -> XvncTarget:
    """Xvnc on 127.0.0.1 only, with ``security`` (TigerVNC's -SecurityTypes list); with
    ``unix_socket``, on a unix socket in ``directory`` and no TCP port at all (TigerVNC 1.12
    needs ``-rfbport -1`` for that: ``-rfbport 0`` listens on 5900+display on every
    interface)."""
    directory.mkdir(parents=True, exist_ok=True)
    args = ["-SecurityTypes", security, "-geometry", geometry, "-depth", "24"]
    if password is not None:
        write_vnc_password(directory / "passwd", password)
        args += ["-PasswordFile", str(directory / "passwd")]
    if certificate is not None:
        args += ["-X509Cert", str(certificate[0]), "-X509Key", str(certificate[1])]
    failure = ""
    for display in free_displays()[:5]:
        port = 0 if unix_socket else free_port()
        unix_path = str(directory / f"rfb-{display}.sock") if unix_socket else ""
        listen = ["-rfbunixpath", unix_path, "-rfbport", "-1"] if unix_socket else [
            "-rfbport", str(port), "-localhost"]  # fmt: skip
        log = directory / f"xvnc-{display}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                [XVNC, f":{display}", *listen, "-nolisten", "tcp", "-AlwaysShared", *args],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            )  # fmt: skip
        try:
            _wait_listening(proc, unix_path or port, log, "Xvnc")
        except RuntimeError as exc:  # most likely the display was taken meanwhile: next one
            stop(proc)
            failure = str(exc)
            continue
        deadline = time.monotonic() + START_SECONDS
        while not Path(f"/tmp/.X11-unix/X{display}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return XvncTarget(directory, display, port, proc, unix_path)
    raise RuntimeError(f"could not start Xvnc: {failure}")


@dataclass
class X11vncTarget:
    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop(self.proc)


def start_x11vnc(directory: Path, display: XvncTarget, password: str) -> X11vncTarget:
    """x11vnc sharing ``display`` on 127.0.0.1 (IPv4 only), with a VNC password file."""
    write_vnc_password(directory / "x11vnc-passwd", password)
    port = free_port()
    log = directory / "x11vnc.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "XAUTHORITY")}
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            ["x11vnc", "-display", display.display_name, "-listen", "127.0.0.1", "-noipv6",
             "-rfbport", str(port), "-rfbauth", str(directory / "x11vnc-passwd"), "-forever",
             "-shared", "-nocursorshape", "-nosel", "-noxdamage"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
        )  # fmt: skip
    _wait_listening(proc, port, log, "x11vnc")
    return X11vncTarget(port, proc)


# -- transcripts: both directions of one real RFB connection, in order -------------------------
TRANSCRIPT_MAGIC = b"RFB-TRANSCRIPT-1\n"


def save_transcript(path: Path, chunks: list[tuple[str, bytes]]) -> None:
    """``chunks`` as (``"S"`` from the server / ``"C"`` from the client, bytes), in order,
    gzipped (a solid screen in Raw is mostly one repeated pixel)."""
    parts = [TRANSCRIPT_MAGIC]
    for direction, data in chunks:
        parts.append(direction.encode() + len(data).to_bytes(4, "big") + data)
    path.write_bytes(gzip.compress(b"".join(parts), mtime=0))


def load_transcript(path: Path) -> list[tuple[str, bytes]]:
    blob = gzip.decompress(path.read_bytes())
    if not blob.startswith(TRANSCRIPT_MAGIC):
        raise ValueError(f"{path} is not an RFB transcript")
    chunks, pos = [], len(TRANSCRIPT_MAGIC)
    while pos < len(blob):
        direction, length = chr(blob[pos]), int.from_bytes(blob[pos + 1 : pos + 5], "big")
        chunks.append((direction, blob[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return chunks


def replay(chunks: list[tuple[str, bytes]]) -> tuple[list[rfb.ServerMessage], list[object]]:
    """Parse a transcript in order, each parser told what the other side sent; checks that
    nothing is left over."""
    sp, cp = rfb.ServerStreamParser(), rfb.ClientStreamParser()
    seen_s: list[rfb.ServerMessage] = []
    seen_c: list[object] = []
    for direction, data in chunks:
        if direction == "S":
            for message in sp.feed(data):
                seen_s.append(message)
                seen_c += cp.note_server(message)
        else:
            for cmessage in cp.feed(data):
                seen_c.append(cmessage)
                seen_s += sp.note_client(cmessage)
    if sp.buffered or cp.buffered:
        raise ValueError("the transcript ends inside a message")
    return seen_s, seen_c
