"""Where recordings and wrapped data keys live: the storage interfaces and the local directory.

Local layout: ``<root>/YYYY/MM/DD/<recording id>.rec`` (UTC date of the session start),
directories 0700, files 0600. Ids are validated by ``recordings.ids`` before any path is
built, every path component is opened relative to the previous one with ``O_NOFOLLOW`` (so a
symlink anywhere below the root is refused, not followed), and the result is checked to
resolve inside the root. Does not encrypt, verify or decide retention.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from recordings.ids import check_id, is_valid_id
from recordings.keys import DataKeyStore, UnknownKey, WrappedDataKey

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DAY_PART = (re.compile(r"[0-9]{4}"), re.compile(r"[0-9]{2}"), re.compile(r"[0-9]{2}"))
SUFFIX = ".rec"


class StoreError(Exception):
    """A storage problem that is not an ordinary I/O error."""


class RecordingNotFound(StoreError):
    pass


class UnsafePath(StoreError):
    """A symlink or a path outside the store was met; nothing was opened through it."""


class RecordingSink(ABC):
    """Append-only byte destination for one recording (a file here, an upload later)."""

    @abstractmethod
    def write(self, data: bytes | bytearray) -> None:
        """Append all of ``data`` or raise OSError."""

    @abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable (fsync) or raise OSError."""

    @abstractmethod
    def close(self) -> None:
        """Release the destination; idempotent."""


class RecordingStore(ABC):
    """What the writer, verifier and recovery need from storage."""

    @abstractmethod
    def create(self, recording_id: str, started_at: datetime) -> RecordingSink:
        """Create a new, empty recording; refuse an id that already exists."""

    @abstractmethod
    def open_read(self, recording_id: str) -> BinaryIO:
        """Open an existing recording for reading."""

    @abstractmethod
    def reopen_for_recovery(self, recording_id: str, keep_bytes: int) -> RecordingSink:
        """Cut the recording to its first ``keep_bytes`` bytes and append after them."""

    @abstractmethod
    def ids(self) -> Iterator[str]:
        """Every recording id in the store."""


class FileSink(RecordingSink):
    """A sink over an open file descriptor; unbuffered, so every write error surfaces here.

    Once a sync has made data durable its pages are dropped from the page cache: a recording
    is written once and read rarely, and keeping gigabytes of it cached evicted everything
    else. Measured here (bench/ssh_relay.py): without it the writer thread's kernel time
    grew from 0.6 to 2.9 ms per MiB recorded as the cache filled over a few sessions.
    """

    def __init__(self, fd: int, offset: int = 0) -> None:
        self._fd: int | None = fd
        self._written = offset  # file offset after the last write
        self._dropped = 0  # pages before this offset were dropped from the cache

    def _live_fd(self) -> int:
        if self._fd is None:
            raise ValueError("sink is closed")
        return self._fd

    def write(self, data: bytes | bytearray) -> None:
        with memoryview(data) as view:
            while view:
                # os.write may write part (e.g. just before ENOSPC); the next call raises.
                written = os.write(self._live_fd(), view)
                self._written += written
                view = view[written:]

    def sync(self) -> None:
        fd = self._live_fd()
        os.fsync(fd)
        if self._written > self._dropped:
            os.posix_fadvise(fd, self._dropped, self._written - self._dropped,
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
            self._dropped = self._written

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _open_dirs(root: Path, parts: tuple[str, ...], *, create: bool) -> int:
    """Open ``root/parts...`` one component at a time, never following a symlink."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    os.fsync(fd)  # the new directory entry must survive a crash too
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{part!r} is not a plain directory") from exc
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_file(dir_fd: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{name!r} is a symlink") from exc
        raise


class LocalRecordingStore(RecordingStore):
    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._root = root.resolve(strict=True)

    @property
    def root(self) -> Path:
        return self._root

    def _day_parts(self, started_at: datetime) -> tuple[str, str, str]:
        day = started_at.astimezone(UTC)
        return f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"

    def _check_contained(self, parts: tuple[str, ...], name: str) -> None:
        # Belt and braces on top of O_NOFOLLOW: the resolved path must stay in the root.
        path = self._root.joinpath(*parts, name).resolve(strict=False)
        if not path.is_relative_to(self._root):
            raise UnsafePath("path escapes the recording store")

    def create(self, recording_id: str, started_at: datetime) -> RecordingSink:
        name = check_id(recording_id) + SUFFIX
        parts = self._day_parts(started_at)
        self._check_contained(parts, name)
        dir_fd = _open_dirs(self._root, parts, create=True)
        try:
            fd = _open_file(dir_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.fchmod(fd, 0o600)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return FileSink(fd)

    def _find(self, recording_id: str) -> tuple[str, ...]:
        name = check_id(recording_id) + SUFFIX
        for parts in self._days():
            self._check_contained(parts, name)
            dir_fd = _open_dirs(self._root, parts, create=False)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            finally:
                os.close(dir_fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{recording_id} is not a regular file")
            return parts
        raise RecordingNotFound(recording_id)

    def _days(self) -> Iterator[tuple[str, ...]]:
        """Day directories, oldest first; symlinks and stray names are skipped."""

        def subdirs(path: Path, pattern: re.Pattern[str]) -> list[str]:
            try:
                entries = list(os.scandir(path))
            except FileNotFoundError:
                return []
            return sorted(
                e.name
                for e in entries
                if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )

        for year in subdirs(self._root, _DAY_PART[0]):
            for month in subdirs(self._root / year, _DAY_PART[1]):
                for day in subdirs(self._root / year / month, _DAY_PART[2]):
                    yield year, month, day

    def _open_existing(self, recording_id: str, flags: int) -> int:
        parts = self._find(recording_id)
        dir_fd = _open_dirs(self._root, parts, create=False)
        try:
            return _open_file(dir_fd, recording_id + SUFFIX, flags)
        finally:
            os.close(dir_fd)

    def open_read(self, recording_id: str) -> BinaryIO:
        return os.fdopen(self._open_existing(recording_id, os.O_RDONLY), "rb")

    def reopen_for_recovery(self, recording_id: str, keep_bytes: int) -> RecordingSink:
        fd = self._open_existing(recording_id, os.O_WRONLY)
        try:
            os.ftruncate(fd, keep_bytes)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        return FileSink(fd, keep_bytes)

    def ids(self) -> Iterator[str]:
        for parts in self._days():
            for entry in os.scandir(self._root.joinpath(*parts)):
                stem = entry.name.removesuffix(SUFFIX)
                if entry.name.endswith(SUFFIX) and is_valid_id(stem):
                    yield stem


class LocalDataKeyStore(DataKeyStore):
    """Wrapped data keys as ``<root>/<data key id>.key`` files (0600)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._root = root.resolve(strict=True)

    def _write_new(self, dir_fd: int, name: str, data: bytes) -> None:
        fd = _open_file(dir_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        sink = FileSink(fd)
        try:
            os.fchmod(fd, 0o600)
            sink.write(data)
            sink.sync()
        finally:
            sink.close()

    def put(self, wrapped: WrappedDataKey) -> None:
        dir_fd = _open_dirs(self._root, (), create=False)
        try:
            self._write_new(dir_fd, check_id(wrapped.data_key_id) + ".key", wrapped.to_json())
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def replace(self, wrapped: WrappedDataKey) -> None:
        name = check_id(wrapped.data_key_id) + ".key"
        temp = f".{name}.{secrets.token_hex(8)}.tmp"
        dir_fd = _open_dirs(self._root, (), create=False)
        try:
            self.get(wrapped.data_key_id)  # must exist: rotation never invents keys
            self._write_new(dir_fd, temp, wrapped.to_json())
            # rename is atomic: a crash leaves the old or the new wrap, never half of one.
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, data_key_id: str) -> WrappedDataKey:
        name = check_id(data_key_id) + ".key"
        dir_fd = _open_dirs(self._root, (), create=False)
        try:
            fd = _open_file(dir_fd, name, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise UnknownKey(f"no data key {data_key_id}") from exc
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as f:
            wrapped = WrappedDataKey.from_json(f.read(64 << 10))
        if wrapped.data_key_id != data_key_id:
            raise UnknownKey(f"key file {name} holds another key id")
        return wrapped

    def ids(self) -> Iterator[str]:
        for entry in os.scandir(self._root):
            stem = entry.name.removesuffix(".key")
            if entry.name.endswith(".key") and is_valid_id(stem):
                yield stem
