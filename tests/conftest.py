"""Shared fixtures: the PostgreSQL server for storage tests, and cleanup of harness servers."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PeerageServer, free_port
from tests.harness.peers import IN_CI, require_binary


TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One pytest-xdist group per test area (tests/<area>/): each area owns a fixed loopback block
    (docs/architecture.md, "Tests"), so two of its tests must never run at once, while different areas
    may (`pytest -n 3 --dist loadgroup`, as .ci/run does). Without xdist the marker does nothing."""
    for item in items:
        try:
            area = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        item.add_marker(pytest.mark.xdist_group(area))


@pytest.fixture
def peerage_servers() -> Iterator[list[PeerageServer]]:
    """A list to append started servers to; every one is stopped (or killed) at the end."""
    servers: list[PeerageServer] = []
    yield servers
    for server in servers:
        server.kill()


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server: $PEERAGE_TEST_POSTGRES_URL, or a private cluster started here."""
    url = os.environ.get("PEERAGE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL server binaries (Debian package postgresql) are not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    require_binary("runuser")
    port = free_port("127.0.0.1")  # a fixed port collides with another run on the same machine
    base = Path(tempfile.mkdtemp(prefix="peerage-pg-"))
    base.chmod(0o755)
    data = base / "data"
    shutil.chown(base, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(base / "log"),
                        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on",
                        "start"], check=True, capture_output=True, timeout=90)
        subprocess.run([*as_pg, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "peerage"],
                       check=True, capture_output=True, timeout=30)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/peerage"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
