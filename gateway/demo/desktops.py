"""The demo's desktop assets, when this machine has the Debian packages for them.

* ``demo-hmi-vnc``: a private TigerVNC ``Xvnc`` on 127.0.0.1 with VNC authentication, running
  an ``xterm``. Its password is new at every start (``secrets``), given to ``vncpasswd -f`` on
  stdin, kept only in the demo directory's password file (mode 0600, what Xvnc reads) and in
  the vault: the browser never sees it.
* ``demo-hmi-rdp`` (root only: xrdp logs in a local account, and the renderer runs as the
  unprivileged ``conduit-render`` user, which root creates): xrdp + xorgxrdp on 127.0.0.1
  (``gateway.demo.xrdp``: its own mount namespace, a self-signed certificate, a local demo
  user with a random password), the certificate's fingerprint pinned to the asset and the
  account vaulted.

Each is skipped with a printed note when its packages are missing (or, for RDP, when not run
as root). The vendor gets ``vnc`` / ``rdp`` grants, the approver ``approve``, ``watch`` and
``kill``. Everything started here is ended by its PID when the demo ends (and the RDP demo
user removed). Display numbers are chosen free (no X socket and no lock file) and retried.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.authz import certificates
from gateway.demo import xrdp
from gateway.keys import ensure_private_dir
from gateway.services import Services
from gateway.vault import set_credential

VNC_ASSET = "demo-hmi-vnc"
RDP_ASSET = "demo-hmi-rdp"
VNC_DIR = "demo-vnc"
VNC_TOOLS = ("Xvnc", "vncpasswd", "xterm")  # tigervnc-standalone-server, tigervnc-tools, xterm
RDP_PACKAGES = "xrdp, xorgxrdp, freerdp2-x11, tigervnc-standalone-server"
FIRST_DISPLAY, LAST_DISPLAY = 40, 399
START_SECONDS = 15
DESKTOP_GRANTS = (("approver", "approve"), ("approver", "watch"), ("approver", "kill"))


X_SOCKETS, X_LOCKS = Path("/tmp/.X11-unix"), Path("/tmp")  # noqa: S108 - where X servers are


def display_free(number: int) -> bool:
    return not ((X_SOCKETS / f"X{number}").exists() or (X_LOCKS / f".X{number}-lock").exists())


def _tool(name: str) -> str:
    """The full path of an installed program (checked by ``vnc_missing`` first)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


def free_displays() -> list[int]:
    """Free display numbers, the search starting at a place derived from the PID so that
    processes starting X servers at once try different ones."""
    span = LAST_DISPLAY - FIRST_DISPLAY + 1
    offset = (os.getpid() * 7) % span
    order = [FIRST_DISPLAY + (offset + i) % span for i in range(span)]
    return [n for n in order if display_free(n)]


def write_vnc_password(path: Path, password: str) -> None:
    """A VNC password file as ``vncpasswd -f`` writes it (the password on its stdin), 0600."""
    result = subprocess.run(  # noqa: S603 - fixed argument list; the password on stdin
        [_tool("vncpasswd"), "-f"],
        input=password.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(result.stdout)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


@dataclass
class VncDesktop:
    display: int
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the xterm, then its X server
            _stop(proc)


def start_vnc(directory: Path, password: str) -> VncDesktop:
    """Xvnc (VNC authentication, 127.0.0.1 only, no X11 TCP) with an xterm on it."""
    ensure_private_dir(directory)
    write_vnc_password(directory / "passwd", password)
    for display in free_displays()[:5]:
        port = _free_port()
        with (directory / "xvnc.log").open("ab") as sink:
            xvnc = subprocess.Popen(  # noqa: S603 - fixed argument list
                [_tool("Xvnc"), f":{display}", "-rfbport", str(port), "-localhost",
                 "-nolisten", "tcp", "-AlwaysShared", "-SecurityTypes", "VncAuth",
                 "-PasswordFile", str(directory / "passwd"),
                 "-geometry", "1024x768", "-depth", "24", "-desktop", VNC_ASSET],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            )  # fmt: skip
        if not _listening(xvnc, port):
            _stop(xvnc)  # most likely the display was taken meanwhile: the next one
            continue
        env = {k: v for k, v in os.environ.items() if k != "XAUTHORITY"}
        env["DISPLAY"] = f":{display}"
        home = directory / "home"
        ensure_private_dir(home)
        env["HOME"] = str(home)
        xterm = subprocess.Popen(  # noqa: S603 - fixed argument list
            [_tool("xterm"), "-geometry", "100x40+0+0", "-fa", "Monospace", "-fs", "12",
             "-title", "demo HMI", "-e", _tool("bash"), "--norc", "--noprofile"],
            env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return VncDesktop(display, port, [xvnc, xterm])
    raise RuntimeError(f"Xvnc did not start; see {directory / 'xvnc.log'}")


@dataclass
class DemoDesktops:
    """What the demo started, and one line per asset (or per reason it has none)."""

    notes: list[str] = field(default_factory=list)
    vnc: VncDesktop | None = None
    rdp: xrdp.RDPTarget | None = None

    def stop(self) -> None:
        if self.vnc is not None:
            self.vnc.stop()
            self.vnc = None
        if self.rdp is not None:
            self.rdp.stop()  # its processes, its namespace, then the demo user
            self.rdp = None


def vnc_missing() -> str:
    missing = [tool for tool in VNC_TOOLS if shutil.which(tool) is None]
    if not missing:
        return ""
    return (
        f"not installed: {', '.join(missing)} (Debian: tigervnc-standalone-server, "
        "tigervnc-tools, xterm)"
    )


def rdp_missing() -> str:
    if os.geteuid() != 0:
        return "needs root (xrdp logs in a local demo user; renderers run as conduit-render)"
    reason = xrdp.missing_reason()
    if reason:
        return reason
    tools = [t for t in ("Xvnc", "xfreerdp") if shutil.which(t) is None]
    return f"not installed: {', '.join(tools)} (Debian: {RDP_PACKAGES})" if tools else ""


Place = Callable[[Services, str, str, int, str], Awaitable[None]]


async def start(services: Services, data_dir: Path, place_asset: Place) -> DemoDesktops:
    """Start what this machine can run, register it with ``place_asset`` (the demo's: added,
    or moved to where it listens now) and grant it; ``stop()`` ends it all."""
    out = DemoDesktops()
    try:
        reason = vnc_missing()
        if reason:
            out.notes.append(f"no VNC demo asset ({VNC_ASSET}): {reason}")
        else:
            password = secrets.token_urlsafe(6)  # VNC authentication uses 8 characters
            out.vnc = await asyncio.to_thread(start_vnc, data_dir / VNC_DIR, password)
            await place_asset(services, VNC_ASSET, "127.0.0.1", out.vnc.port, "vnc")
            await _vault(services, VNC_ASSET, "vnc", password)
            await _grant(services, VNC_ASSET, "vnc")
            out.notes.append(
                f"{VNC_ASSET}: a VNC desktop (Xvnc :{out.vnc.display}, an xterm) on "
                f"127.0.0.1:{out.vnc.port}; its password is in the vault only"
            )
        reason = rdp_missing()
        if reason:
            out.notes.append(f"no RDP demo asset ({RDP_ASSET}): {reason}")
        else:
            from gateway.desktop.renderer import ensure_render_account

            await asyncio.to_thread(ensure_render_account)
            out.rdp = await asyncio.to_thread(xrdp.start_rdp_target, "cdemo")
            target = out.rdp
            await place_asset(services, RDP_ASSET, "127.0.0.1", target.port, "rdp")
            async with services.sessions() as db, db.begin():
                await certificates.unpin_all(db, RDP_ASSET)  # a new certificate every start
                await certificates.pin(
                    db, RDP_ASSET, target.fingerprint, actor="demo", now=services.clock()
                )
            await _vault(services, RDP_ASSET, target.username, target.password)
            await _grant(services, RDP_ASSET, "rdp")
            out.notes.append(
                f"{RDP_ASSET}: an RDP desktop (xrdp + xorgxrdp, local user {target.username}, "
                f"removed when the demo ends) on 127.0.0.1:{target.port}, certificate pinned"
            )
    except BaseException:
        out.stop()
        raise
    return out


async def _vault(services: Services, asset: str, username: str, password: str) -> None:
    async with services.sessions() as db, db.begin():
        await set_credential(
            db, services.keys.master_key, asset=asset, username=username, password=password,
            now=services.clock(), actor="demo",
        )  # fmt: skip


async def _grant(services: Services, asset: str, action: str) -> None:
    authz = services.authz
    granted = {(g.subject, g.object, g.action) for g in await authz.list_grants()}
    for user, what in (("vendor", action), *DESKTOP_GRANTS):
        if (f"user:{user}", f"asset:{asset}", what) not in granted:
            await authz.add_grant(
                subject_kind="user", subject=user, object_kind="asset", obj=asset,
                action=what, actor="demo",
            )  # fmt: skip
