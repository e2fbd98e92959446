"""A simulated PLC maintenance shell: the SSH asset ``conduit demo`` puts behind the gateway.

A real PLC cannot exist on a demo machine, and a fresh machine may have no sshd, so the demo
starts this small device itself: asyncssh on a loopback address, with its own host key in
the demo data directory, accepting one account (``maint``) by one public key only (the
demo vaults the private key; the device keeps just the public half). It offers a pty shell
and exec of a few commands (``help``, ``status``, ``show tags``, ``exit``) answering with
made-up plant values, and the SFTP subsystem rooted at its own file area, without links.
Not a device model, not for production, and it decides nothing: the gateway does.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import asyncssh

from gateway.keys import ensure_private_dir, write_private_file

MAINT_USER = "maint"
DEVICE_NAME = "demo-plc"
HOST_KEY = "host_ed25519"
AUTHORIZED_KEYS = "authorized_keys"
FILES = "files"
PROMPT = f"{DEVICE_NAME}> "
HELP = """\
commands:
  help        this list
  status      controller identity, mode and health
  show tags   live process values
  exit        end the session
"""
SAMPLE_FILES = {
    "README.txt": (
        f"{DEVICE_NAME}: file area of a simulated PLC (Conduit demo).\n"
        "programs/ holds the controller program, logs/ its event log;\n"
        "uploads/ takes new files (needs sftp-write on the asset).\n"
    ),
    "programs/line1_pump_control.st": (
        "PROGRAM Line1PumpControl\n"
        "VAR\n  TankLevel : REAL;\n  PumpRun : BOOL;\nEND_VAR\n"
        "PumpRun := TankLevel < 80.0;\n"
        "END_PROGRAM\n"
    ),
    "logs/events.log": (
        "2026-11-27T06:00:02Z INFO  controller started, mode RUN\n"
        "2026-11-27T09:14:51Z WARN  tank1 level high (82.3 %)\n"
        "2026-11-27T09:15:40Z INFO  tank1 level normal (79.6 %)\n"
    ),
}


def host_key_public(directory: Path) -> asyncssh.SSHKey:
    """The device's host key (created on first use, mode 0600); returns its public half."""
    path = directory / HOST_KEY
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=DEVICE_NAME)
        write_private_file(path, key.export_private_key(), force=False)
    return asyncssh.read_private_key(path).convert_to_public()


def has_client_key(directory: Path) -> bool:
    return (directory / AUTHORIZED_KEYS).exists()


def new_client_key() -> tuple[bytes, bytes]:
    """(private, public) OpenSSH key for the ``maint`` account: the private half is for the
    vault and never written to disk; ``trust_client_key`` gives the device the public half."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"conduit@{DEVICE_NAME}")
    return key.export_private_key("openssh"), key.export_public_key("openssh")


def trust_client_key(directory: Path, public: bytes) -> None:
    """Make ``public`` the one key the device accepts (read at each login)."""
    write_private_file(directory / AUTHORIZED_KEYS, public, force=True)


def ensure_files(directory: Path) -> Path:
    """The SFTP root with its sample files (kept as they are if they exist); returns it."""
    root = directory / FILES
    for name, text in SAMPLE_FILES.items():
        path = root / name
        ensure_private_dir(path.parent)
        if not path.exists():
            path.write_text(text)
    ensure_private_dir(root / "uploads")
    return root


class _DeviceServer(asyncssh.SSHServer):
    """Public key authentication for ``maint`` only; every other hook refuses (defaults)."""

    def __init__(self, authorized_keys: Path) -> None:
        self._authorized_keys = authorized_keys
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        # Read at each login: the demo may replace the key while the device runs.
        if username == MAINT_USER and self._conn is not None:
            try:
                keys = asyncssh.read_authorized_keys(str(self._authorized_keys))
            except (OSError, ValueError):
                return True  # no usable key: nobody gets in
            self._conn.set_authorized_keys(keys)
        return True


class _DeviceFiles(asyncssh.SFTPServer):
    """SFTP inside the device's file area; a PLC's file area has no links to make."""

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("links are not supported on this device")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("links are not supported on this device")


class SimulatedPLC:
    """The shell's answers: made-up values that move with time, so watching is worthwhile."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def run(self, command: str) -> tuple[str, int]:
        """(output, exit status) of one command line."""
        words = command.split()
        if not words:
            return "", 0
        if words == ["help"]:
            return HELP, 0
        if words == ["status"]:
            return self.status(), 0
        if words == ["show", "tags"]:
            return self.tags(), 0
        if words in (["exit"], ["quit"], ["logout"]):
            return "", 0
        return f"unknown command: {' '.join(words)[:60]} (try help)\n", 127

    def status(self) -> str:
        up = int(time.monotonic() - self._started)
        hours, rest = divmod(up, 3600)
        return (
            f"device    {DEVICE_NAME} (simulated PLC, Conduit demo)\n"
            "model     SIM-1500 CPU 1515-2 PN   firmware V2.9.1\n"
            "mode      RUN   cycle 10 ms (max 14 ms)\n"
            f"uptime    {hours}h {rest // 60:02d}m {rest % 60:02d}s\n"
            "health    OK   no active faults\n"
        )

    def tags(self) -> str:
        t = time.monotonic() - self._started
        level = 75.0 + 6.0 * math.sin(t / 40.0)
        rows = [
            ("tank1.level", f"{level:6.1f}", "%"),
            ("pump1.run", "TRUE" if level < 80.0 else "FALSE", ""),
            ("pump1.speed", f"{1450 + 30 * math.sin(t / 7.0):6.0f}", "rpm"),
            ("line1.pressure", f"{4.2 + 0.3 * math.cos(t / 11.0):6.2f}", "bar"),
            ("valve3.open", "TRUE", ""),
        ]
        lines = [f"{'TAG':16} {'VALUE':>8} UNIT"]
        lines += [f"{name:16} {value:>8} {unit}" for name, value, unit in rows]
        return "\n".join(lines) + "\n"


async def _serve_process(plc: SimulatedPLC, process: asyncssh.SSHServerProcess[str]) -> None:
    if process.command is not None:
        output, status = plc.run(process.command)
        (process.stdout if status == 0 else process.stderr).write(output)
        process.exit(status)
        return
    process.stdout.write(f"{DEVICE_NAME}: simulated PLC maintenance shell. Type 'help'.\n")
    while True:
        process.stdout.write(PROMPT)
        try:
            line = await process.stdin.readline()
        except asyncssh.TerminalSizeChanged:
            continue
        except (asyncssh.BreakReceived, asyncssh.SignalReceived):
            process.stdout.write("^C\n")
            continue
        if not line or line.split() in (["exit"], ["quit"], ["logout"]):
            break
        output, _ = plc.run(line)
        process.stdout.write(output)
    process.exit(0)


async def start_device(directory: Path, host: str, port: int) -> asyncssh.SSHAcceptor:
    """Serve the device on ``host:port`` (port 0: any free one; see ``get_port``)."""
    host_key_public(directory)
    root = ensure_files(directory)
    plc = SimulatedPLC()
    return await asyncssh.create_server(
        lambda: _DeviceServer(directory / AUTHORIZED_KEYS),
        host,
        port,
        server_host_keys=[str(directory / HOST_KEY)],
        process_factory=functools.partial(_serve_process, plc),
        sftp_factory=functools.partial(_DeviceFiles, chroot=str(root).encode()),
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        reuse_address=True,
    )
