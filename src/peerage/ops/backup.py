"""Backups while serving, and restore: `peerage backup DIR`, `peerage restore DIR`.

This module is in charge of a consistent snapshot of everything the server keeps:
- the database, taken while the server runs: SQLite through its online backup API (a transaction-
  consistent copy, WAL included, that does not stop writers for long), PostgreSQL through `pg_dump`
  (one snapshot, custom format);
- the files of the data folder after it (message bodies, the outbound queue, DKIM keys, the dialback
  secret): they are written before the rows that point at them are committed and never changed in
  place, so a copy taken after the database snapshot holds every file the snapshot refers to;
- the configuration file and each domain's certificate and key, kept apart under `config/`;
- `manifest.json`: when, which schema revision, and a SHA-256 of every file, checked on restore.
Restore needs the server stopped; it puts the database and the data folder back and then migrates, so
a backup from an older release restores into a newer one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from peerage.config import Config

FORMAT = 1
# Files of the data folder that are not copied as files: the database itself (backed up through its
# API), SQLite's journals, and runtime status.
SKIPPED = {"peerage.db", "peerage.db-wal", "peerage.db-shm", "peerage.db-journal", "status.json", "status.json.tmp"}


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


def _sqlite_path(config: Config) -> Path | None:
    url = config.database_url
    if url.startswith("sqlite"):
        return Path(url.split(":///", 1)[1])
    return None


def _pg_url(config: Config) -> str:
    # pg_dump takes libpq URLs: drop the SQLAlchemy driver suffix.
    return config.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_tree(source: Path, target: Path, skip: set[str]) -> None:
    for item in sorted(source.rglob("*")):
        relative = item.relative_to(source)
        if relative.parts[0] in skip or item.name.endswith(".tmp"):
            continue
        destination = target / relative
        if item.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif item.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(item, destination)
            except FileNotFoundError:  # removed meanwhile (a delivered queue file): not in the snapshot
                continue


def backup(config: Config, target: Path, revision: str | None) -> Path:
    """Write a backup folder under `target` and return it."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = target / f"peerage-backup-{stamp}"
    if folder.exists():
        raise BackupError(f"{folder} already exists; wait a second or choose another folder")
    (folder / "data").mkdir(parents=True)
    database: dict[str, Any]
    sqlite_file = _sqlite_path(config)
    if sqlite_file is not None:
        if not sqlite_file.exists():
            raise BackupError(f"no database at {sqlite_file}; run `peerage init` or `peerage serve` first")
        source = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True, timeout=30)
        copy = sqlite3.connect(folder / "peerage.db")
        try:
            source.backup(copy)  # the whole database in one step: a single consistent snapshot
        finally:
            copy.close()
            source.close()
        database = {"kind": "sqlite", "file": "peerage.db"}
    else:
        if shutil.which("pg_dump") is None:
            raise BackupError("pg_dump is not installed (Debian package postgresql-client)")
        result = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--file", str(folder / "database.pgdump"),
                                 _pg_url(config)], capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise BackupError(f"pg_dump failed: {result.stderr.strip()}")
        database = {"kind": "postgresql", "file": "database.pgdump"}
    _copy_tree(config.data_dir, folder / "data", SKIPPED)
    configuration = folder / "config"
    configuration.mkdir()
    shutil.copy2(config.path, configuration / config.path.name)
    for name, domain in config.domains.items():
        for path in (domain.cert, domain.key):
            if path is not None and path.exists():
                (configuration / "certs" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, configuration / "certs" / name / path.name)
    files = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, "created": stamp, "revision": revision, "database": database,
                "domains": list(config.domains), "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def verify(folder: Path) -> dict[str, Any]:
    """Read the manifest and check every file against it."""
    try:
        manifest = dict(json.loads((folder / "manifest.json").read_text()))
    except FileNotFoundError:
        raise BackupError(f"{folder} has no manifest.json: not a peerage backup folder") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder}: backup format {manifest.get('format')} is not one this peerage reads")
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise BackupError(f"{folder}: {name} is missing or damaged (checksum differs); the backup is not usable")
    return manifest


def restore(config: Config, folder: Path) -> dict[str, Any]:
    """Put the backup's database and data files in place of the current ones (server stopped)."""
    manifest = verify(folder)
    database = manifest["database"]
    data = config.data_dir
    sqlite_file = _sqlite_path(config)
    if database["kind"] == "sqlite":
        if sqlite_file is None:
            raise BackupError("the backup holds a SQLite database but [database] url names PostgreSQL; "
                              "restore it with the SQLite configuration it came from")
    elif sqlite_file is not None:
        raise BackupError("the backup holds a PostgreSQL dump but [database] url is empty (SQLite); "
                          "set [database] url to the PostgreSQL server to restore into")
    if data.exists():
        for item in data.iterdir():
            if item.name in ("status.json",):
                continue
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
    data.mkdir(parents=True, exist_ok=True)
    _copy_tree(folder / "data", data, set())
    if database["kind"] == "sqlite":
        assert sqlite_file is not None
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{sqlite_file}{suffix}").unlink(missing_ok=True)
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / database["file"], sqlite_file)
        os.chmod(sqlite_file, 0o600)
    else:
        if shutil.which("pg_restore") is None:
            raise BackupError("pg_restore is not installed (Debian package postgresql-client)")
        result = subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
                                 "--dbname", _pg_url(config), str(folder / database["file"])],
                                capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed: {result.stderr.strip()}")
    return manifest
