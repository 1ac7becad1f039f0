"""Privilege drop: started as root, the server binds its ports and then runs as `[server] user`.

Also the systemd units (`peerage systemd-unit`, contrib/systemd/) pass `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PeerageServer, require_binary
from tests.harness.peers import machine_limit
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.20"
PASSWORD = "correct horse"
ROOT = Path(__file__).resolve().parents[2]
AS_ROOT = machine_limit("dropping privileges needs a start as root")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # The unprivileged user must reach its data folder: pytest's tmp_path is under a root-only folder.
    folder = Path(tempfile.mkdtemp(prefix="peerage-ops-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ids(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])  # effective ids


@pytest.mark.skipif(os.geteuid() != 0, reason=AS_ROOT)
async def test_runs_as_the_configured_user_after_binding(workdir: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    server = PeerageServer(workdir, ["drop.test"], ADDRESS, services=("xmpp", "smtp", "imap"),
                           config={"server": {"user": "nobody"},
                                   # Port 25 and 143 need root to bind; the drop comes after.
                                   "smtp": {"mx_listen": [f"{ADDRESS}:25"]}})
    server.add_user("alice@drop.test", PASSWORD)
    server.start()
    try:
        assert server.process is not None
        assert ids(server.process.pid) == (nobody.pw_uid, nobody.pw_gid)
        assert f"running as user nobody (uid {nobody.pw_uid}" in server.log_text()
        assert (server.data_dir / "peerage.db").stat().st_uid == nobody.pw_uid
        # It still works as that user: a login reads the database, the archive writes it.
        client = RawClient(ADDRESS, "drop.test")
        await client.login("alice", PASSWORD, resource="r")
        await client.send("<message to='alice@drop.test/r' type='chat'><body>self</body></message>")
        assert "self" in await client.read_until("<body>self</body>")
        await client.close()
    finally:
        assert server.stop() == 0


def test_unknown_user_is_one_line(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, ["drop.test"], "127.0.8.21", config={"server": {"user": "no-such-user-x"}})
    result = subprocess.run([sys.executable, "-m", "peerage", "-c", str(server.config_path), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no such user" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("ambient", [False, True])
def test_systemd_unit_verifies(tmp_path: Path, ambient: bool) -> None:
    analyze = require_binary("systemd-analyze")  # Debian package systemd
    assert subprocess.run([sys.executable, "-m", "peerage", "init", "unit.test", "--dir", str(tmp_path)],
                          capture_output=True, timeout=60).returncode == 0
    args = ["--ambient-capabilities"] if ambient else []
    unit = subprocess.run([sys.executable, "-m", "peerage", "-c", str(tmp_path / "peerage.toml"), "systemd-unit",
                           *args], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "NoNewPrivileges=yes" in unit
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit) == ambient
    path = tmp_path / "peerage.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_shipped_units_are_the_generated_ones() -> None:
    from peerage.ops.systemd import unit

    for name, ambient in (("peerage.service", False), ("peerage-ambient.service", True)):
        shipped = (ROOT / "contrib" / "systemd" / name).read_text()
        assert shipped == unit(config_path=Path("/etc/peerage/peerage.toml"), python="/opt/peerage/venv/bin/python",
                               ambient=ambient), f"regenerate contrib/systemd/{name}"


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason=AS_ROOT)
def test_mx_workers_drop_privileges_too(workdir: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    address = "127.0.8.22"
    server = PeerageServer(workdir, ["drop.test"], address, services=("smtp",),
                           config={"server": {"user": "nobody"},
                                   "smtp": {"mx_listen": [f"{address}:25"], "mx_workers": 1}})
    server.start()
    try:
        assert server.process is not None
        workers = [pid for pid in children(server.process.pid)
                   if b"peerage.mail.smtp.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1, server.log_text()
        assert ids(workers[0]) == (nobody.pw_uid, nobody.pw_gid)
        real = dict(line.split(":", 1) for line in Path(f"/proc/{workers[0]}/status").read_text().splitlines())
        assert real["Uid"].split() == [str(nobody.pw_uid)] * 4  # real, effective, saved, filesystem
        # The worker still serves the MX port after the drop.
        import smtplib

        with smtplib.SMTP(address, 25, timeout=10) as client:
            assert client.ehlo()[0] == 250
    finally:
        assert server.stop() == 0


def worker_runs_as(user: str) -> str | None:
    """Why `user` cannot start an MX worker with this interpreter and environment, or None when it can.

    A worker started again after the drop runs `sys.executable -m peerage.mail.smtp.worker` as that
    user, so the interpreter, its packages and peerage's sources must all be readable by it: not so when
    any of them lives under /root (0700), as a pyenv interpreter or a checkout with its .venv there does.
    """
    import pwd

    entry = pwd.getpwnam(user)
    # The interpreter is started from a shell already running as the user, as the server starts its
    # worker after the drop (setpriv's own exec of it can still pass where the worker's would not), and
    # imports what the worker's run() does.
    result = subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                             "/bin/sh", "-c", 'exec "$0" -c "$1"', sys.executable,
                             "import peerage.mail.service, peerage.ops.privileges, peerage.server"],
                            cwd="/", capture_output=True, text=True, timeout=60)
    if result.returncode == 0:
        return None
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return f"{user} cannot run {sys.executable} -m peerage.mail.smtp.worker ({last})"


@pytest.mark.skipif(os.geteuid() != 0, reason=AS_ROOT)
def test_mx_worker_started_again_after_the_drop_serves(workdir: Path) -> None:
    import pwd
    import smtplib

    unable = worker_runs_as("nobody")
    if unable:
        pytest.skip(machine_limit(f"no worker can start after the drop: {unable}; put the checkout and "
                                  "the interpreter where other users may read them, as /opt/peerage is"))
    nobody = pwd.getpwnam("nobody")
    address = "127.0.8.23"
    server = PeerageServer(workdir, ["drop.test"], address, services=("smtp",),
                           config={"server": {"user": "nobody"},
                                   "smtp": {"mx_listen": [f"{address}:25"], "mx_workers": 1}})
    server.start()
    try:
        assert server.process is not None
        workers = [pid for pid in children(server.process.pid)
                   if b"peerage.mail.smtp.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1, server.log_text()
        # A worker started again after the drop needs no right to bind port 25: it inherits the socket.
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        again: list[int] = []
        while time.monotonic() < deadline and not again:
            time.sleep(0.2)
            again = [pid for pid in children(server.process.pid) if pid != workers[0]
                     and b"peerage.mail.smtp.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert again, server.log_text()
        assert ids(again[0]) == (nobody.pw_uid, nobody.pw_gid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP(address, 25, timeout=10) as client:
                    assert client.ehlo()[0] == 250
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(server.log_text())
    finally:
        assert server.stop() == 0
