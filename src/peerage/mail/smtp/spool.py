"""Message files of the outbound queue: written and fsynced before anything is acknowledged.

This module is in charge of putting message bytes on disk durably (write to a temporary name, fsync
the file, rename, fsync the folder, as Postfix's queue manager and Mox's queue do) and of reading and
removing them. The database row that points at a file is committed only after `write` returns.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# Files are spread over this many sub-folders by the first hex digit of their name, as Postfix's
# hash_queue_depth = 1 does, so no single folder grows very large.
HASH_DEPTH_DIGITS = 1


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tmp = self.folder / "tmp"
        self._tmp.mkdir(exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        if not name or not all(ch in "0123456789abcdef" for ch in name):
            raise ValueError(f"not a queue file name: {name!r}")
        return self.folder / name[:HASH_DEPTH_DIGITS] / name

    def write(self, data: bytes) -> str:
        """Store `data` durably and return its name. Blocking: run in a worker thread."""
        name = secrets.token_hex(16)
        final = self.path(name)
        final.parent.mkdir(exist_ok=True, mode=0o700)
        temporary = self._tmp / name
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        _fsync_folder(final.parent)
        return name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        found: set[str] = set()
        for sub in self.folder.iterdir():
            if sub.is_dir() and sub.name != "tmp":
                found.update(p.name for p in sub.iterdir())
        return found

    def clear_temporary(self) -> None:
        """Remove files a crash left half-written (they were never acknowledged)."""
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
