"""File transfer through the gateway: an SFTP server bridged to the asset's SFTP server.

``sftp`` (and ``scp``, which speaks SFTP since OpenSSH 9.0) talk to this server; legacy
``scp -O`` is served by asyncssh's SCP server on top of the same bridge. Every operation is
forwarded to the asset over the session's upstream connection, after a check of its own:
reading a file or listing a directory needs ``sftp-read``, anything that changes the asset
(write, create, remove, rename, mkdir, rmdir, setstat, links) needs ``sftp-write``. Each
refusal is audited by the broker; each transfer is audited when the file is closed with
its path, size and SHA-256 (of the bytes sent, when they were sent in order) and written to
the session's recording as a line an auditor can search. Does not decide access itself
(the broker does) and never touches the gateway's own file system.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh import SFTPAttrs, SFTPName, SFTPPermissionDenied, SFTPVFSAttrs
from asyncssh.channel import SSHChannel
from asyncssh.stream import SSHServerStreamSession

from gateway.errors import ConduitError
from gateway.sessions.broker import Broker
from gateway.sessions.ticket import Ticket
from gateway.ssh.relay import client_end_reason, end_session
from recordings import Kind
from recordings.terminal import TerminalEvent

log = logging.getLogger(__name__)
READ, WRITE = "sftp-read", "sftp-write"
CHANGES = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
MAX_PATH = 4096
NOT_OPENED_FOR_WRITING = "file not opened for writing"


def shown(path: bytes) -> str:
    """A path as it appears in audit and recordings: UTF-8, undecodable bytes escaped."""
    return path[:MAX_PATH].decode("utf-8", "backslashreplace")


WRITES_IN_FLIGHT = 16  # per session: writes sent to the asset before its answers
READ_AHEAD = 8  # reads asked of the asset ahead of a client reading a file in order
READS_AHEAD_PER_SESSION = 16
READ_AHEAD_MAX_SIZE = 256 << 10  # larger reads are not read ahead: memory stays bounded
LEFT_BEFORE_CLOSING = "the client left before closing the file"
NO_HOLE = 1 << 63  # past the end of any file: asyncssh clamps the range to the file's size


class Budget:
    """What one SFTP session may have in flight to the asset, across all its open files."""

    def __init__(self) -> None:
        self.writes = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self.reads_ahead = 0


# An asset announcing tiny limits must not make one client request into thousands of
# requests (and tasks): a request is cut into at most this many pieces, larger than the asset
# announced if need be (its short reads are passed on as short reads; an oversized write
# fails that transfer, audited).
MAX_PIECES = 64


def _piece(announced: int, size: int) -> int:
    """The piece size for a request of ``size`` bytes to an asset announcing ``announced``."""
    return max(1, announced, -(-size // MAX_PIECES))


@dataclass
class Transfer:
    """One open file: what was asked, how much moved, and the running digest.

    asyncssh serves a client's requests one at a time, so waiting for the asset on every
    block would cost a round trip per block. Writes are therefore passed on without waiting
    (at most ``WRITES_IN_FLIGHT``; a failure is reported on the next call and at close), and
    a file read in order is read ahead (``READ_AHEAD`` blocks). What the client receives
    and what is hashed stay in file order. A write counts (size and digest) once the asset
    has confirmed it, so a transfer that fails part way is audited with what reached the
    asset, not with what the client sent.
    """

    path: bytes
    reading: bool
    writing: bool
    upstream: asyncssh.SFTPClientFile
    budget: Budget
    limits: asyncssh.SFTPLimits  # the asset's: the largest read and write it takes
    read_bytes: int = 0
    written_bytes: int = 0  # confirmed by the asset
    sent_bytes: int = 0  # received from the client for writing
    next_read: int = 0
    next_write: int = 0
    hashed_to: int = 0  # confirmed writes are hashed in file order up to here
    in_order: bool = True
    refused_writes: int = 0  # writes to a file opened for reading only
    digest: Any = field(default_factory=hashlib.sha256)
    failure: BaseException | None = None
    writes: set[asyncio.Task[None]] = field(default_factory=set)
    confirmed_ahead: dict[int, bytes] = field(default_factory=dict)
    ahead: deque[tuple[int, int, asyncio.Task[bytes]]] = field(default_factory=deque)

    def saw(self, offset: int, data: bytes) -> None:
        """Data read by the client (in the order it was asked for)."""
        if not data:
            # End of file moves nothing. PuTTY asks for several blocks past the end at once:
            # those answers must not make an in-order download look out of order.
            return
        self.in_order &= offset == self.next_read and self.sent_bytes == 0
        self.next_read = offset + len(data)
        self.read_bytes += len(data)
        if self.in_order:
            self.digest.update(data)

    def fail(self, exc: BaseException) -> None:
        """Remember the first failure: the transfer is audited as failed at close."""
        self.failure = self.failure or exc

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def write(self, offset: int, data: bytes) -> None:
        self._raise_failure()
        self.in_order &= offset == self.next_write and self.read_bytes == 0
        self.next_write = offset + len(data)
        self.sent_bytes += len(data)
        # A client may write up to the 4 MiB this server announces (a legacy scp upload
        # writes in blocks of up to 256 KiB), but OpenSSH's sftp-server ends the whole SFTP
        # session on a message over 256 KiB, a write of 262,120 bytes or more: passed on
        # whole, such a write lost the file and the session. Each write goes to the asset in
        # pieces no larger than the asset announced (limits@openssh.com; asyncssh assumes
        # 16 KiB of a server that announces nothing), each piece one write in flight.
        step = _piece(self.limits.max_write_len, len(data))
        for at in range(0, len(data), step):
            self._raise_failure()
            await self.budget.writes.acquire()
            piece = data[at : at + step] if len(data) > step else data
            task = asyncio.get_running_loop().create_task(self._write(offset + at, piece))
            self.writes.add(task)
            task.add_done_callback(self.writes.discard)

    async def _write(self, offset: int, data: bytes) -> None:
        try:
            await self.upstream.write(data, offset)
        except (asyncssh.Error, OSError) as exc:
            self.fail(exc)
        else:
            self._confirmed(offset, data)
        finally:
            self.budget.writes.release()

    def _confirmed(self, offset: int, data: bytes) -> None:
        self.written_bytes += len(data)
        if not self.in_order:
            self.confirmed_ahead.clear()
            return
        # Answers normally come in the order the writes were sent; a block confirmed early
        # waits here (at most the writes in flight) so the digest stays in file order.
        self.confirmed_ahead[offset] = data
        while (block := self.confirmed_ahead.pop(self.hashed_to, None)) is not None:
            self.digest.update(block)
            self.hashed_to += len(block)

    async def wait_for_writes(self) -> None:
        """Wait for every write in flight (a failure is kept in ``failure``)."""
        if self.writes:
            await asyncio.gather(*self.writes, return_exceptions=True)

    async def settle(self) -> None:
        """Wait for every write in flight; raise the first failure the asset reported."""
        await self.wait_for_writes()
        self._raise_failure()

    async def read(self, offset: int, size: int) -> bytes:
        try:
            if self.ahead and self.ahead[0][:2] == (offset, size):
                task = self.ahead.popleft()[2]
                self.budget.reads_ahead -= 1
                data = await task
            else:
                self.drop_ahead()
                data = await self._read(offset, size)
        except (asyncssh.Error, OSError) as exc:
            self.fail(exc)  # the end of the file is an empty read, not an error
            raise
        if len(data) == size and size <= READ_AHEAD_MAX_SIZE and not self.writing:
            loop = asyncio.get_running_loop()
            at = self.ahead[-1][0] + size if self.ahead else offset + size
            budget = self.budget
            while len(self.ahead) < READ_AHEAD and budget.reads_ahead < READS_AHEAD_PER_SESSION:
                self.ahead.append((at, size, loop.create_task(self._read(at, size))))
                budget.reads_ahead += 1
                at += size
        return data

    async def _read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from the asset, fewer only at the end of the file.

        OpenSSH's sftp-server answers a read of more than 261,120 bytes with fewer bytes, a
        short read that a client asking for 256 KiB blocks or more (asyncssh's, the SCP
        server's) has to ask again for: large reads are asked of the asset in pieces it
        answers whole, at once.
        """
        step = _piece(self.limits.max_read_len, size)
        if size <= step:
            return await self._read_one(offset, size)
        wanted = [(at, min(step, size - at)) for at in range(0, size, step)]
        pieces = await asyncio.gather(*(self._read_one(offset + at, n) for at, n in wanted))
        whole = bytearray()
        for piece, (_, n) in zip(pieces, wanted, strict=True):
            whole += piece
            if len(piece) < n:
                break  # the end of the file
        return bytes(whole)

    async def _read_one(self, offset: int, size: int) -> bytes:
        data: bytes = await self.upstream.read(size, offset)
        return data

    def drop_ahead(self) -> None:
        while self.ahead:
            task = self.ahead.popleft()[2]
            self.budget.reads_ahead -= 1
            task.cancel()
            task.add_done_callback(_consume)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Answer asyncssh's sparse-file probe as for a file without holes.

        asyncssh's own clients ask, before a download or copy, which ranges of the file hold
        data (the ``ranges@asyncssh.com`` extension its server announces), and its server
        answers by seeking the open file with ``SEEK_DATA`` and ``SEEK_HOLE``. The asset's
        holes are not known here: the whole file is data, read like any other. Nothing else
        seeks a transfer; reads and writes carry their own offsets.
        """
        if whence == os.SEEK_DATA:
            return offset
        if whence == os.SEEK_HOLE:
            return NO_HOLE
        raise asyncssh.SFTPOpUnsupported("seek not supported")


def _consume(task: asyncio.Task[bytes]) -> None:
    """Collect a read-ahead nobody wanted, so its outcome is never reported as lost."""
    if not task.cancelled():
        task.exception()


class BridgeSFTPServer(asyncssh.SFTPServer):
    """Serves one client SFTP channel from the asset's SFTP server, checking every call."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        broker: Broker,
        ticket: Ticket,
        upstream: asyncssh.SFTPClient,
        on_exit: Callable[[], Awaitable[None]],
        client_left: Callable[[], bool],
    ) -> None:
        super().__init__(chan)
        self._broker = broker
        self._ticket = ticket
        self._up = upstream
        self._on_exit = on_exit
        self._client_left = client_left
        self._budget = Budget()

    async def _check(self, action: str, operation: str, *paths: bytes) -> None:
        self._broker.activity(self._ticket)
        target = " -> ".join(shown(p) for p in paths)
        if not await self._broker.permits(self._ticket, action, operation, target):
            raise SFTPPermissionDenied("not permitted by your grant")

    async def _done(self, operation: str, *paths: bytes, **detail: Any) -> None:
        """Audit a completed change or transfer and write it to the recording."""
        t = self._ticket
        names = [shown(p) for p in paths]
        line = f"conduit sftp: {operation} {' -> '.join(names)}"
        if "size" in detail:
            line += f" ({detail['size']} bytes, sha256 {detail.get('sha256') or 'n/a'})"
        t.writer.record(TerminalEvent.OUTPUT, (line + "\r\n").encode())
        await self._broker.audit_operation(t, f"sftp.{operation}", names, detail)

    # -- paths are the asset's: nothing is mapped onto the gateway's file system ------------
    def map_path(self, path: bytes) -> bytes:
        return path

    def reverse_map_path(self, path: bytes) -> bytes:
        return path

    def format_user(self, uid: int | None) -> str:
        return str(uid) if uid is not None else ""

    def format_group(self, gid: int | None) -> str:
        return str(gid) if gid is not None else ""

    # -- files --------------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Transfer:
        writing = bool(pflags & CHANGES)
        reading = bool(pflags & asyncssh.FXF_READ) or not writing
        if reading:
            await self._check(READ, "read", path)
        if writing:
            await self._check(WRITE, "write", path)
        # block_size=0: one request per call, the pieces are cut in Transfer (asyncssh's own
        # cutting runs its requests in tasks that outlive a cancelled read-ahead).
        upstream = await self._up.open(path, pflags, attrs, encoding=None, block_size=0)
        return Transfer(path, reading, writing, upstream, self._budget, self._up.limits)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        transfer = self._transfer(file_obj)
        self._broker.activity(self._ticket)
        data = await transfer.read(offset, size)
        transfer.saw(offset, data)
        self._ticket.live.bytes_down += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        transfer = self._transfer(file_obj)
        if not transfer.writing:
            # Audited once per open file; the close's audit counts them all.
            transfer.refused_writes += 1
            if transfer.refused_writes == 1:
                await self._broker.refuse_operation(
                    self._ticket, WRITE, "write", shown(transfer.path), NOT_OPENED_FOR_WRITING
                )
            raise SFTPPermissionDenied(NOT_OPENED_FOR_WRITING)
        self._broker.activity(self._ticket)
        await transfer.write(offset, data)
        self._ticket.live.bytes_up += len(data)
        return len(data)

    async def close(self, file_obj: object) -> None:
        transfer = self._transfer(file_obj)
        transfer.drop_ahead()
        left = self._client_left()
        if left:
            # asyncssh closes what is still open when the channel ends, and its SCP server
            # closes the file when the data stopped short. Clients wait for the answer to
            # their own close before they end the channel, so a file still open at the
            # channel's end was not transferred whole, however many bytes moved.
            transfer.fail(ConnectionError(LEFT_BEFORE_CLOSING))
        try:
            await transfer.wait_for_writes()
            await transfer.upstream.close()
        except (asyncssh.Error, OSError) as exc:
            transfer.fail(exc)
        finally:
            await self._finish(transfer)
        if transfer.failure is not None and not left:
            raise transfer.failure  # the client learns that its file did not arrive whole

    async def _finish(self, transfer: Transfer) -> None:
        digest = transfer.digest.hexdigest() if transfer.in_order else None
        # A failure makes the audit event a failure ("error" in its detail); size and digest
        # are then those of what moved: the bytes the asset confirmed, or that the client got.
        failed: dict[str, Any] = {}
        if transfer.failure is not None:
            failed["error"] = str(transfer.failure) or type(transfer.failure).__name__
        if transfer.writing:
            if failed:
                failed["sent"] = transfer.sent_bytes
            if transfer.hashed_to != transfer.written_bytes:
                digest = None  # confirmed with a gap: no digest of a contiguous prefix
            await self._done(
                "write", transfer.path, size=transfer.written_bytes, sha256=digest,
                in_order=transfer.in_order, **failed,
            )  # fmt: skip
        if transfer.read_bytes or (transfer.reading and not transfer.writing):
            refused = {"refused_writes": transfer.refused_writes} if transfer.refused_writes else {}
            await self._done(
                "read", transfer.path, size=transfer.read_bytes, sha256=digest,
                in_order=transfer.in_order, **refused, **({} if transfer.writing else failed),
            )  # fmt: skip

    def _transfer(self, file_obj: object) -> Transfer:
        if not isinstance(file_obj, Transfer):
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        return file_obj

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        transfer = self._transfer(file_obj)
        await transfer.settle()
        attrs: SFTPAttrs = await transfer.upstream.stat()
        return attrs

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        transfer = self._transfer(file_obj)
        await self._check(WRITE, "setstat", transfer.path)
        await transfer.settle()
        await transfer.upstream.setstat(attrs)

    async def fsync(self, file_obj: object) -> None:
        transfer = self._transfer(file_obj)
        await transfer.settle()
        await transfer.upstream.fsync()

    # -- metadata: allowed for any file session (an upload needs to see its target) -------
    async def stat(self, path: bytes) -> SFTPAttrs:
        attrs: SFTPAttrs = await self._up.stat(path)
        return attrs

    async def lstat(self, path: bytes) -> SFTPAttrs:
        attrs: SFTPAttrs = await self._up.lstat(path)
        return attrs

    async def realpath(self, path: bytes) -> bytes:
        result: bytes = await self._up.realpath(path)
        return result

    async def readlink(self, path: bytes) -> bytes:
        result: bytes = await self._up.readlink(path)
        return result

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        result: SFTPVFSAttrs = await self._up.statvfs(path)
        return result

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        await self._check(READ, "list", path)
        async for name in self._up.scandir(path):
            yield name

    # -- changes ------------------------------------------------------------------------
    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._check(WRITE, "setstat", path)
        await self._up.setstat(path, attrs)
        await self._done("setstat", path)

    async def remove(self, path: bytes) -> None:
        await self._check(WRITE, "remove", path)
        await self._up.remove(path)
        await self._done("remove", path)

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._check(WRITE, "mkdir", path)
        await self._up.mkdir(path, attrs)
        await self._done("mkdir", path)

    async def rmdir(self, path: bytes) -> None:
        await self._check(WRITE, "rmdir", path)
        await self._up.rmdir(path)
        await self._done("rmdir", path)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._check(WRITE, "rename", oldpath, newpath)
        await self._up.rename(oldpath, newpath)
        await self._done("rename", oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._check(WRITE, "rename", oldpath, newpath)
        await self._up.posix_rename(oldpath, newpath)
        await self._done("rename", oldpath, newpath)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._check(WRITE, "symlink", oldpath, newpath)
        await self._up.symlink(oldpath, newpath)
        await self._done("symlink", oldpath, newpath)

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        await self._check(WRITE, "link", oldpath, newpath)
        await self._up.link(oldpath, newpath)
        await self._done("link", oldpath, newpath)

    async def exit(self) -> None:
        if self.channel.get_subsystem() == "sftp":
            # OpenSSH's sftp-server reports 0 when the client ends the session, and scp (which
            # speaks SFTP) fails without it. asyncssh's SCP server reports its own status.
            self.channel.exit(0)
        await self._on_exit()


class FileSession(SSHServerStreamSession[bytes]):
    """A session channel that asked for the ``sftp`` subsystem or ran ``scp``.

    The bridge is built when the session starts: the broker opens (decides, records,
    registers) a session allowing ``sftp-read`` or ``sftp-write``, then the asset's SFTP
    server is reached with the vaulted credential. A refusal ends the channel with a
    one-line reason and never reaches the asset.
    """

    def __init__(
        self,
        broker: Broker,
        username: str,
        asset: str,
        account: str,
        source: str,
        connect: Callable[[Ticket], Awaitable[asyncssh.SSHClientConnection]],
    ) -> None:
        super().__init__(None, self._bridge, sftp_version=3, allow_scp=True)
        self.broker = broker
        self.username = username
        self.asset = asset
        self.account = account
        self.source = source
        self._connect = connect
        self._server_chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._ticket: Ticket | None = None
        self._up_conn: asyncssh.SSHClientConnection | None = None
        self._closed = False
        self._client_left = False  # end of input or channel closed by the client

    def connection_made(self, chan: SSHChannel[bytes]) -> None:
        super().connection_made(chan)
        assert isinstance(chan, asyncssh.SSHServerChannel)  # noqa: S101 - server side
        self._server_chan = chan

    async def _bridge(self, channel: SSHChannel[bytes]) -> asyncssh.SFTPServer:
        chan = self._server_chan
        assert chan is channel and chan is not None  # noqa: S101 - the channel we serve
        scp = chan.get_subsystem() != "sftp"
        try:
            ticket = await self.broker.open(
                self.username, self.asset, READ, also=(WRITE,), protocol="scp" if scp else "sftp",
                source=self.source, kill=self.kill, kind=Kind.TERMINAL, account=self.account,
            )  # fmt: skip
        except ConduitError as exc:
            return self._refused(chan, exc.message)
        self._ticket = ticket
        try:
            conn = await self._connect(ticket)
            self._up_conn = conn
            upstream = await conn.start_sftp_client(path_encoding=None)
        except (ConduitError, asyncssh.Error, OSError) as exc:
            await self._end("upstream_failed")
            message = exc.message if isinstance(exc, ConduitError) else "the asset is not reachable"
            return self._refused(chan, message)
        # The vendor's client ends an SFTP session (the asset's sftp-server never does by
        # itself): "client_closed", as for the relay and tunnels.
        return BridgeSFTPServer(
            chan, self.broker, ticket, upstream, lambda: self._end("client_closed"),
            lambda: self._client_left,
        )  # fmt: skip

    def _refused(self, chan: asyncssh.SSHServerChannel[bytes], message: str) -> asyncssh.SFTPServer:
        chan.write_stderr(f"conduit: {message}\r\n".encode())
        chan.exit(1)
        return RefusingSFTPServer(chan)

    async def _end(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._up_conn is not None:
            self._up_conn.close()
        if self._ticket is not None:
            await self.broker.close(self._ticket, reason)

    def eof_received(self) -> bool:
        self._client_left = True
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_left = True
        super().connection_lost(exc)
        if not self._closed and self._ticket is not None:
            reason = client_end_reason(exc)
            self.broker.tasks.start(f"sftp-end-{self._ticket.session_id}", self._end(reason))

    async def kill(self, reason: str) -> None:
        """The kill handle registered with the live registry."""
        end_session(self._server_chan, self._up_conn, reason)


class RefusingSFTPServer(asyncssh.SFTPServer):
    """What a refused channel runs until the client notices it was closed."""

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        raise SFTPPermissionDenied("not found or not permitted")

    def realpath(self, path: bytes) -> bytes:
        raise SFTPPermissionDenied("not found or not permitted")

    def stat(self, path: bytes) -> SFTPAttrs:
        raise SFTPPermissionDenied("not found or not permitted")

    def lstat(self, path: bytes) -> SFTPAttrs:
        raise SFTPPermissionDenied("not found or not permitted")
