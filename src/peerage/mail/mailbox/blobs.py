"""Large message bodies (``INLINE_BODY_LIMIT`` and up) as immutable files under the data directory.

A blob is written to a temporary name in its final directory, fsynced, renamed into place and the
directory fsynced, so that once ``write`` returns the bytes survive a crash. The database row that
points at the blob is committed only afterwards: a crash in between leaves an orphan file that no
mailbox refers to, never a row without its body. Copies are hard links, so COPY costs no bytes.

``Blobs`` is the interface its users (the mailbox store, XEP-0363 uploads, social media) hold; in
cluster mode ``peerage.cluster.blobs.DatabaseBlobs`` stands in for the files, in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Protocol

# Two hex digits of fan-out keep each directory at a few thousand entries for a million messages,
# as Dovecot's sdbox/mdbox and git's object store do.
FANOUT_DIGITS = 2


class Blobs(Protocol):
    """Immutable bodies by name; blocking calls, made from worker threads."""

    def write(self, data: bytes, durable: bool = True) -> str: ...

    def write_many(self, items: list[bytes], durable: bool = True) -> list[str]: ...

    def link(self, name: str, durable: bool = True) -> str: ...

    def read(self, name: str) -> bytes: ...

    def remove(self, name: str) -> None: ...

    def remove_many(self, names: list[str]) -> None: ...


class BlobStore:
    """Reads, writes, links and removes message files below ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = str(root)

    def path(self, name: str) -> Path:
        return self.root / name[:FANOUT_DIGITS] / name

    def _new_name(self) -> str:
        return secrets.token_hex(16)

    def write(self, data: bytes, durable: bool = True) -> str:
        return self.write_many([data], durable)[0]

    def write_many(self, items: list[bytes], durable: bool = True) -> list[str]:
        """Write several blobs into one fan-out directory, so one directory fsync covers them all."""
        prefix = secrets.token_hex(FANOUT_DIGITS // 2)
        names = [prefix + secrets.token_hex(16 - FANOUT_DIGITS // 2) for _ in items]
        directory = self.root / prefix
        directory.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        try:
            for name, data in zip(names, items, strict=True):
                temporary = directory / (name + ".tmp")
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        count = os.write(fd, view)
                        view = view[count:]
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temporary, directory / name)
                written.append(name)
        except BaseException:
            for name in written:
                self.remove(name)
            raise
        if durable:
            self._sync_directory(directory)
        return names

    def link(self, name: str, durable: bool = True) -> str:
        copy = self._new_name()
        target = self.path(copy)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.path(name), target)
        except OSError:
            # A file system without hard links: copy the bytes instead.
            return self.write(self.read(name), durable)
        if durable:
            self._sync_directory(target.parent)
        return copy

    def read(self, name: str) -> bytes:
        # Plain string joins: pathlib costs more than the read itself for a small message.
        with open(f"{self._root_text}/{name[:FANOUT_DIGITS]}/{name}", "rb") as handle:
            return handle.read()

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))

    def remove_many(self, names: list[str]) -> None:
        for name in names:
            self.remove(name)

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
