"""Removing a recording's file and its wrapped data key from the local store, safely.

``recordings.store`` creates and reads but never deletes; retention needs both gone. Paths
are built only from a validated id and the catalog's start date, each directory is opened
relative to its parent with ``O_NOFOLLOW`` and the entry is unlinked through that directory
descriptor, so a symlink planted in the store cannot redirect a deletion. Deleting the data
key first shreds the content even if the file cannot be removed. Does not decide what
expires (see ``retention``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from recordings.ids import check_id
from recordings.store import SUFFIX, UnsafePath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _unlink_in(root: Path, parts: tuple[str, ...], name: str) -> bool:
    """Unlink ``root/parts.../name`` without following symlinks; False if already absent."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return False
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return False
            except NotADirectoryError as exc:
                raise UnsafePath(f"{part!r} is not a plain directory") from exc
            except OSError as exc:
                raise UnsafePath(f"{part!r} cannot be opened safely: {exc}") from exc
            os.close(fd)
            fd = child
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return False
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def day_parts(started_at: dt.datetime) -> tuple[str, str, str]:
    day = started_at.astimezone(dt.UTC)
    return f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"


def delete_recording_file(root: Path, recording_id: str, started_at: dt.datetime) -> bool:
    """Remove ``<root>/YYYY/MM/DD/<id>.rec``; True if a file was removed."""
    return _unlink_in(root, day_parts(started_at), check_id(recording_id) + SUFFIX)


def delete_data_key(keys_root: Path, data_key_id: str) -> bool:
    """Remove ``<keys_root>/<data_key_id>.key``; True if a key was removed."""
    return _unlink_in(keys_root, (), check_id(data_key_id) + ".key")
