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
from tests.harness.peers import IN_CI, MACHINE_LIMIT, require_binary

TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One pytest-xdist group per test area (tests/<area>/): each area owns a fixed loopback block
    (docs/architecture.md, "Tests"), so two of its tests must never run at once, while different areas
    may (`pytest -n 3 --dist loadgroup`, as .ci/run does). Without xdist the marker does nothing."""
    for item in items:
        area = _area(item)
        if area is not None:
            item.add_marker(pytest.mark.xdist_group(area))


def _area(item: pytest.Item) -> str | None:
    try:
        return Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
    except ValueError:
        return None


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _no_skips_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """In CI (CI=true) scripts/setup-test-env has installed every peer, so a skip means a test that
    proved nothing: a failure, except where the reason is a limit of the machine itself
    (tests.harness.peers.machine_limit: not running as root, files other users cannot read)."""
    if not IN_CI or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(MACHINE_LIMIT):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where nothing may be skipped but for a machine limit: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _no_skips_in_ci(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield  # a module-level pytest.importorskip
    _no_skips_in_ci(outcome.get_result())  # type: ignore[attr-defined]


_held_area_lock: dict[str, object] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """With PEERAGE_TEST_AREA_LOCKS=1, hold /tmp/peerage-area-<area>.lock while an area's tests run, so
    several runs on one machine (two checkouts, a developer beside CI) never share a loopback block.
    Taken before the item's fixtures start its servers; let go when the run moves to another area."""
    if os.environ.get("PEERAGE_TEST_AREA_LOCKS") != "1":
        return
    import fcntl

    area = _area(item)
    if area is None or _held_area_lock.get("area") == area:
        return
    previous = _held_area_lock.pop("file", None)
    if previous is not None:
        previous.close()  # type: ignore[attr-defined]
    lock = open(f"/tmp/peerage-area-{area}.lock", "w")  # noqa: SIM115 - held across tests
    fcntl.flock(lock, fcntl.LOCK_EX)
    _held_area_lock.update(area=area, file=lock)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Let the area's lock go once its last test here is torn down (its module and package fixtures,
    and so their servers, are finalized in this teardown), not only when the run reaches another
    area: a worker that ends with this area, or waits for more work, holds it no longer."""
    yield
    if _held_area_lock.get("area") is None or (nextitem is not None and _area(nextitem) == _area(item)):
        return
    held = _held_area_lock.pop("file", None)
    _held_area_lock.pop("area", None)
    if held is not None:
        held.close()  # type: ignore[attr-defined]


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
