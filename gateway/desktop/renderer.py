"""The RDP renderer: per session, a private Xvnc on a unix socket and xfreerdp drawing into it.

``start()`` returns the path of the RFB unix socket (security type None; the gateway connects
there and from then on it is the VNC path). The processes run as an unprivileged user
(``conduit-render`` when the gateway runs as root, else the gateway's own user), each in its
own session and process group, under rlimits (address space, CPU seconds, no core dumps),
with a private 0700 directory that holds the socket, an X cookie and xfreerdp's HOME and is
removed at the end. ``ended`` resolves once, with one reason (freerdp.END_REASONS, or the
reason given to ``stop``). Does not decide access, record, count sessions per node or talk
RFB; see broker and rfb for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gateway.desktop import freerdp
from gateway.desktop.freerdp import RenderRequest
from gateway.errors import HostKeyMismatch, UpstreamError

XVNC = "/usr/bin/Xvnc"
PRLIMIT = "/usr/bin/prlimit"
SETPRIV = "/usr/bin/setpriv"  # --pdeathsig: a gateway that dies takes its renderers along
STDBUF = "/usr/bin/stdbuf"  # xfreerdp's DEBUG lines go to stdout, block-buffered into a pipe
RENDER_USER = "conduit-render"
STOPPED = "stopped"


@dataclass(frozen=True)
class RendererLimits:
    """Per-process limits and timings. Address space is per process (RLIMIT_AS), measured:
    xfreerdp maps ~560 MB at 1024x768 with 13 threads; CPU is total seconds (RLIMIT_CPU),
    so it caps a runaway, not a rate (a rate needs a cgroup, which this node does not give)."""

    address_space: int = 2 << 30
    cpu_seconds: int = 8 * 3600
    open_files: int = 1024
    start_timeout: float = 20.0
    grace: float = 2.0
    base_dir: Path | None = None  # private directories go here (default: the temp dir)
    user: str = RENDER_USER


@dataclass(frozen=True)
class RendererEnd:
    reason: str  # a fixed code: freerdp.END_REASONS, "stopped", or the reason given to stop
    detail: str  # for the audit log


class RendererFailed(UpstreamError):
    """The renderer ended before its desktop was up; ``end`` says why."""

    def __init__(self, end: RendererEnd) -> None:
        messages = {
            freerdp.AUTH_FAILED: "the asset refused the vaulted credential",
            freerdp.CONNECT_REFUSED: "the asset is not reachable",
            freerdp.START_TIMEOUT: "the asset's desktop did not come up in time",
        }
        super().__init__(messages.get(end.reason, "the remote desktop ended"), end.detail)
        self.end = end


class RDPCertificateMismatch(HostKeyMismatch):
    """The asset presented a TLS certificate other than the pinned one (a security alert,
    like an SSH host key mismatch: the broker's HostKeyMismatch handling applies)."""

    def __init__(self, end: RendererEnd) -> None:
        super().__init__("the asset's identity could not be verified", end.detail)
        self.end = end


@dataclass
class Timings:
    """Monotonic instants of one start (for bench/desktop_rdp.py)."""

    started: float = 0.0
    socket_ready: float = 0.0
    active: float = 0.0
    first_frame: float = 0.0


@dataclass
class _Proc:
    proc: asyncio.subprocess.Process
    name: str
    tail: list[str] = field(default_factory=list)


def can_switch_user() -> bool:
    """Root, or a gateway given CAP_SETUID and CAP_SETGID (e.g. systemd AmbientCapabilities)."""
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return bool(effective & (1 << 7)) and bool(effective & (1 << 6))
    return False


def render_account(user: str = RENDER_USER) -> tuple[int, int] | None:
    """(uid, gid) to run renderers as: ``user`` when the gateway can switch users (it must
    exist: see ``ensure_render_account``), None (the gateway's own user) otherwise."""
    if not can_switch_user():
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UpstreamError(
            "remote desktops are not set up on this node",
            f"system user {user!r} missing: useradd --system --user-group --no-create-home "
            f"--home-dir /nonexistent --shell /usr/sbin/nologin {user}",
        ) from None
    if entry.pw_uid == 0:
        raise UpstreamError("remote desktops are not set up on this node", f"{user} is uid 0")
    return entry.pw_uid, entry.pw_gid


def ensure_render_account(user: str = RENDER_USER) -> None:
    """Create the unprivileged system user renderers run as (root only; a deploy step)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argument list
            ["/usr/sbin/useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip


def _xauthority(cookie: bytes) -> bytes:
    """One Xauthority entry for any display (FamilyWild), MIT-MAGIC-COOKIE-1."""

    def counted(value: bytes) -> bytes:
        return struct.pack(">H", len(value)) + value

    return (
        struct.pack(">H", 0xFFFF)
        + counted(b"")
        + counted(b"")
        + counted(b"MIT-MAGIC-COOKIE-1")
        + counted(cookie)
    )


class RDPRenderer:
    """One RDP desktop drawn into a private Xvnc. ``async with RDPRenderer(req) as r`` starts
    it and stops it at the end; or call ``start()`` / ``stop(reason)`` yourself."""

    def __init__(self, request: RenderRequest, limits: RendererLimits | None = None) -> None:
        self.request = request
        self.limits = limits or RendererLimits()
        self.timings = Timings()
        self.directory: Path | None = None
        self.display: int | None = None
        self._xvnc: _Proc | None = None
        self._xfreerdp: _Proc | None = None
        self._log = freerdp.LogState()
        self._ended: asyncio.Future[RendererEnd] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: RendererEnd | None = None
        self._finish_lock = asyncio.Lock()

    @property
    def socket_path(self) -> Path:
        if self.directory is None:
            raise RuntimeError("renderer not started")
        return self.directory / "rfb.sock"

    @property
    def transfer_dir(self) -> Path | None:
        """The folder the RDP session sees as drive "conduit" (``file-transfer`` granted only).
        It is removed with the renderer: whoever keeps files takes them before ``stop``."""
        if self.directory is None or "file-transfer" not in self.request.grants:
            return None
        return self.directory / "transfer"

    @property
    def ended(self) -> asyncio.Future[RendererEnd]:
        """Resolves once with the renderer's end (never raises)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        return self._ended

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.proc.pid for p in (self._xvnc, self._xfreerdp) if p is not None}

    def rss_bytes(self) -> int:
        """Resident memory of the renderer's processes (VmRSS), 0 for any already gone."""
        total = 0
        for pid in self.pids.values():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    async def __aenter__(self) -> RDPRenderer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop(STOPPED)

    async def start(self) -> Path:
        """Start Xvnc and xfreerdp; return the RFB socket once the RDP desktop has drawn its
        first frame. Raises ``RDPCertificateMismatch`` or ``RendererFailed`` (everything is
        stopped and removed by then)."""
        ended = self.ended
        if self.timings.started:
            raise RuntimeError("a renderer starts once")
        if ended.done():  # stopped before it started
            raise RendererFailed(ended.result())
        self.timings.started = time.monotonic()
        try:
            async with asyncio.timeout(self.limits.start_timeout):
                await self._spawn()
                await self._wake.wait()  # the first frame, or the end
        except TimeoutError:
            await self.stop(freerdp.START_TIMEOUT, "no first frame within the start timeout")
        except BaseException:
            await self.stop(STOPPED, "start abandoned")
            raise
        if ended.done():
            end = ended.result()
            if end.reason == freerdp.CERT_MISMATCH:
                raise RDPCertificateMismatch(end)
            raise RendererFailed(end)
        return self.socket_path

    async def stop(self, reason: str = STOPPED, detail: str = "") -> RendererEnd:
        """End the renderer (SIGTERM its groups, SIGKILL after the grace) and remove its
        directory. The first end wins: a renderer that already ended keeps its reason."""
        if self._stopping is None and not self.ended.done():
            self._stopping = RendererEnd(reason, detail or f"stopped by the gateway: {reason}")
        await self._finish()
        return self.ended.result()

    # -- starting ------------------------------------------------------------------------

    def _spawn_kwargs(self, account: tuple[int, int] | None) -> dict[str, object]:
        # The user switch is setpriv's (``_limited``): uvloop, which ``conduit serve`` runs
        # on, refuses subprocess ``user``/``group`` arguments.
        return {"start_new_session": True, "cwd": str(self.directory)}

    def _limited(self, argv: list[str], account: tuple[int, int] | None = None) -> list[str]:
        lim = self.limits
        switch = (
            ["--reuid", str(account[0]), "--regid", str(account[1]), "--clear-groups"]
            if account is not None
            else []
        )
        return [
            # no privilege gained by exec (setuid programs) and no capability carried over
            SETPRIV, *switch, "--pdeathsig", "KILL", "--no-new-privs", "--inh-caps", "-all",
            "--ambient-caps", "-all", "--",
            PRLIMIT, f"--as={lim.address_space}", f"--cpu={lim.cpu_seconds}",
            f"--nofile={lim.open_files}", "--core=0", "--", *argv,
        ]  # fmt: skip

    def _prepare_directory(self, account: tuple[int, int] | None) -> tuple[Path, Path]:
        base = self.limits.base_dir
        directory = Path(tempfile.mkdtemp(prefix="conduit-rdp-", dir=base))
        self.directory = directory
        for sub in ("home", "no-ca") + (
            ("transfer",) if "file-transfer" in self.request.grants else ()
        ):
            (directory / sub).mkdir(mode=0o700)
        xauth = directory / "xauthority"
        xauth.write_bytes(_xauthority(secrets.token_bytes(16)))
        xauth.chmod(0o600)
        (directory / "no-ca.pem").write_bytes(b"")
        if account is not None:
            for path in (directory, *directory.iterdir()):
                os.chown(path, *account)
        return directory, xauth

    async def _spawn(self) -> None:
        account = render_account(self.limits.user)
        directory, xauth = self._prepare_directory(account)
        req = self.request
        home = directory / "home"
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._limited([
                    XVNC, "-displayfd", str(write_fd), "-auth", str(xauth),
                    "-rfbunixpath", str(self.socket_path), "-rfbunixmode", "0600",
                    # -rfbport 0 would listen on 5900+display on every interface: -1 is off
                    "-rfbport", "-1", "-nolisten", "tcp", "-localhost",
                    "-SecurityTypes", "None", "-geometry", f"{req.width}x{req.height}",
                    "-depth", "24", "-desktop", "conduit",
                    f"-AcceptCutText={int('clipboard-in' in req.grants)}",
                    f"-SendCutText={int('clipboard-out' in req.grants)}",
                    "-SetPrimary=0", "-SendPrimary=0", "-AcceptSetDesktopSize=0",
                ], account),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(write_fd,), env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
                **self._spawn_kwargs(account),  # type: ignore[arg-type]
            )  # fmt: skip
        finally:
            os.close(write_fd)
        self._xvnc = _Proc(proc, "Xvnc")
        self._watch(self._xvnc)
        number = await _read_display(read_fd)
        if number is None or not self.socket_path.is_socket():
            self._stopping = self._stopping or RendererEnd(
                freerdp.CRASHED, f"Xvnc did not start: {freerdp.notable(self._xvnc.tail)}"
            )
            await self._finish()
            return
        self.display = number
        self.timings.socket_ready = time.monotonic()
        if self._stopping is None:  # not stopped while Xvnc came up
            await self._spawn_xfreerdp(account, directory, xauth)

    async def _spawn_xfreerdp(
        self, account: tuple[int, int] | None, directory: Path, xauth: Path
    ) -> None:
        req = self.request
        transfer = self.transfer_dir
        timeout_ms = int(self.limits.start_timeout * 1000)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(directory / "home"),
            "XDG_CONFIG_HOME": str(directory / "home" / ".config"),
            "DISPLAY": f":{self.display}",
            "XAUTHORITY": str(xauth),
            "LANG": "C.UTF-8",
            # no CA is trusted: only the pinned fingerprint can accept a certificate
            "SSL_CERT_FILE": str(directory / "no-ca.pem"),
            "SSL_CERT_DIR": str(directory / "no-ca"),
        }
        args = freerdp.xfreerdp_args(req, transfer_dir=transfer, timeout_ms=timeout_ms)
        proc = await asyncio.create_subprocess_exec(
            *self._limited([STDBUF, "-oL", freerdp.XFREERDP, *args], account),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            limit=1 << 16, **self._spawn_kwargs(account),  # type: ignore[arg-type]
        )  # fmt: skip
        self._xfreerdp = _Proc(proc, "xfreerdp")
        if self.ended.done():  # stopped while it was being spawned: _finish did not see it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return
        if proc.stdin is None:  # pragma: no cover - stdin=PIPE always gives one
            raise RuntimeError("no stdin pipe")
        proc.stdin.write(freerdp.stdin_secret(req))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        self._watch(self._xfreerdp)

    # -- watching ------------------------------------------------------------------------

    def _watch(self, p: _Proc) -> None:
        feed: Callable[[str], None] = self._feed_xfreerdp if p.name == "xfreerdp" else p.tail.append
        task = asyncio.create_task(self._drain_then_end(p, feed), name=f"renderer-{p.name}")
        self._tasks.append(task)

    def _feed_xfreerdp(self, line: str) -> None:
        log = self._log
        was_active, had_frame = log.active, log.first_frame
        log.feed(line)
        now = time.monotonic()
        if log.active and not was_active:
            self.timings.active = now
        if log.first_frame and not had_frame:
            self.timings.first_frame = now
            self._wake.set()

    async def _drain_then_end(self, p: _Proc, feed: Callable[[str], None]) -> None:
        stream = p.proc.stdout if p.name == "xfreerdp" else p.proc.stderr
        if stream is None:  # pragma: no cover - the pipe is always asked for
            raise RuntimeError("no output pipe")
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: drop what is buffered and go on
                with contextlib.suppress(Exception):
                    await stream.read(1 << 16)
                continue
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip()
            feed(line)
            del p.tail[: -freerdp.KEEP_LINES]
        returncode = await p.proc.wait()
        if self._stopping is None and not self.ended.done():
            if p.name == "xfreerdp":
                reason, detail = freerdp.end_reason(self._log, returncode)
                detail += f" [{freerdp.notable(self._log.lines)}]" if self._log.lines else ""
            else:
                reason = freerdp.CRASHED
                detail = f"Xvnc exited ({returncode}): {freerdp.notable(p.tail)}"
            self._stopping = RendererEnd(reason, detail)
        await self._finish()

    async def _finish(self) -> None:
        """Kill whatever still runs, remove the directory, resolve ``ended`` (idempotent)."""
        async with self._finish_lock:
            if self.ended.done():
                return
            procs = [p.proc for p in (self._xfreerdp, self._xvnc) if p is not None]
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for proc in procs:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, sig)  # its own session: pgid == pid
                waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
                if waits:
                    _, pending = await asyncio.wait(waits, timeout=self.limits.grace)
                    for w in pending:
                        w.cancel()
                if all(proc.returncode is not None for proc in procs):
                    break
            # the groups may hold children (xkbcomp) that outlived their leader
            for proc in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            end = self._stopping or RendererEnd(freerdp.CRASHED, "renderer ended")
            self.ended.set_result(end)
            self._wake.set()
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current and not task.done():
                    task.cancel()


async def _read_display(fd: int) -> int | None:
    """The display number Xvnc writes to -displayfd once it listens (None if it died).
    Takes ownership of ``fd``."""
    reader = asyncio.StreamReader(limit=64)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    try:
        data = await reader.readline()
    except ValueError:
        return None
    finally:
        transport.close()
    try:
        return int(data) if data.endswith(b"\n") else None
    except ValueError:
        return None
