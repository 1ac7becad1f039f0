#!/usr/bin/env python3
"""IMAP login benchmark: logins per second against peerage and Dovecot in the same run.

Each server listens with implicit TLS on its own 127.0.7.x address. CONCURRENCY client threads each
open a connection, do the TLS handshake, LOGIN and LOGOUT, again and again, for a fixed number of
logins; the figure is completed logins per second of wall time, and the mean time of the LOGIN command
alone. peerage verifies with argon2id, and repeated logins hit its verification cache ([auth]
cache_size) the way Thunderbird's repeated connections do; Dovecot uses the static passdb of
bench/imap/run.py (a plain comparison, no hash at all), which is the cheapest it can be.

    python3 bench/imap/logins.py [--clients 10] [--logins 400] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import imaplib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.imap import run as imap_bench  # noqa: E402
from bench.machine import describe as machine  # noqa: E402

PEERAGE_ADDRESS = "127.0.7.251"
DOVECOT_ADDRESS = "127.0.7.252"
USER = imap_bench.USER
PASSWORD = imap_bench.PASSWORD
START_TIMEOUT = 120.0


def serve_peerage(workdir: Path) -> None:
    from peerage.config import config_from_dict
    from peerage.mail.imap.service import ImapService
    from peerage.server import Host

    async def main() -> None:
        raw = {
            "server": {"data_dir": str(workdir / "peerage-data"), "log_level": "warning"},
            "domain": [{"name": "example.org", "cert": str(workdir / "cert.pem"), "key": str(workdir / "key.pem")}],
            "xmpp": {"enabled": False}, "sip": {"enabled": False}, "smtp": {"enabled": False},
            "imap": {"enabled": True, "listen": [], "tls_listen": [f"{PEERAGE_ADDRESS}:993"]},
            "sieve": {"listen": []},  # no ManageSieve on the wildcard 0.0.0.0:4190 default
            # The benchmark's clients all come from one address and log in hundreds of times a second.
            "limits": {"connections_per_ip": 1000},
        }
        host = Host(config_from_dict(raw, workdir / "peerage.toml"))
        await host.open()
        if not await host.accounts.exists(USER):
            await host.accounts.add(USER, PASSWORD)
        service = ImapService()
        await service.start(host)
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await service.stop()
        await host.store.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def start_peerage(workdir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, __file__, "--serve-peerage", str(workdir)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    if b"ready" not in process.stdout.readline():
        process.kill()
        raise RuntimeError("peerage did not start")
    return process


def login_once(address: str) -> float:
    client = imaplib.IMAP4_SSL(address, 993, ssl_context=imap_bench._context(), timeout=60)
    started = time.perf_counter()
    typ, _ = client.login(USER, PASSWORD)
    took = time.perf_counter() - started
    assert typ == "OK"
    client.logout()  # closes the connection
    return took


def measure(address: str, clients: int, logins: int) -> tuple[float, float]:
    """(logins per second, mean LOGIN seconds) for ``logins`` spread over ``clients`` threads."""
    login_once(address)  # warm: TLS session setup code paths, and peerage's cache for this password
    per_client = max(1, logins // clients)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [login_once(address) for _ in range(per_client)]
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return len(times) / wall, sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--logins", type=int, default=400)
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--serve-peerage", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peerage:
        serve_peerage(args.serve_peerage)
        return

    from peerage.net.tls import generate_self_signed

    imap_bench.DOVECOT_ADDRESS = DOVECOT_ADDRESS
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="peerage-login-bench-"))
    generate_self_signed("example.org", workdir / "cert.pem", workdir / "key.pem")
    peerage = dovecot = None
    try:
        peerage = start_peerage(workdir)
        dovecot = imap_bench.start_dovecot(workdir, imap_bench.generate(10))
        ours = measure(PEERAGE_ADDRESS, args.clients, args.logins)
        theirs = measure(DOVECOT_ADDRESS, args.clients, args.logins)
    finally:
        for process in (peerage, dovecot):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    load_after = os.getloadavg()
    table = (
        "| server | logins/s | mean LOGIN (ms) |\n|---|---|---|\n"
        f"| peerage | {ours[0]:.1f} | {ours[1] * 1000:.1f} |\n"
        f"| Dovecot | {theirs[0]:.1f} | {theirs[1] * 1000:.1f} |"
    )
    print(table)
    if args.no_write:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
    section = (
        f"\n## IMAP logins: peerage vs Dovecot ({now})\n\n"
        f"Machine: {machine()}. Shared with other work during the run: 1-minute load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (5-minute {load_before[1]:.1f} / "
        f"{load_after[1]:.1f}), so both figures are lower than on an idle machine; both servers ran in the "
        f"same run, one after the other. Dovecot {version}, static passdb (plain comparison, no hash). "
        f"peerage: argon2id hashes with the verification cache ([auth] cache_size, default). "
        f"{args.clients} concurrent imaplib clients, {args.logins} logins in all, each a new connection: "
        f"TLS handshake, LOGIN, LOGOUT. Target: peerage's logins/s at least Dovecot's.\n\n{table}\n"
    )
    with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
        handle.write(section)
    print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
