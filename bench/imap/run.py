#!/usr/bin/env python3
# imaplib's stubs type every response as a union of bytes, tuples and None; this script indexes them.
# mypy: disable-error-code="assignment,operator,attr-defined,index,union-attr,return-value,arg-type"
"""IMAP benchmark: the same client workload against peerage and Dovecot on a 10,000-message mailbox.

Both servers get the same 10,000 generated messages (plain text, quoted-printable and base64 MIME),
each serves them over implicit TLS on its own 127.0.5.x address, and one client (Python's imaplib)
runs, per round: SELECT INBOX, FETCH 1:* (BODY.PEEK[HEADER]), SEARCH TEXT <word>, and
STORE 1:1000 +FLAGS/-FLAGS (\\Flagged). The first round warms caches and indexes on both sides and is
reported separately; the figure per operation is the median of the warm rounds. Prints a table and
appends a section to bench/RESULTS.md.

With ``--baseline-src DIR`` (an earlier ``src/`` tree, e.g. ``git archive REV src | tar -x -C DIR``), a
second peerage runs from that tree on its own address with the same messages, in the same rounds, so a
change is measured against its predecessor under the same load on the machine.

    python3 bench/imap/run.py [--messages 10000] [--rounds 7] [--baseline-src DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import imaplib
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.machine import describe as machine  # noqa: E402

PEERAGE_ADDRESS = "127.0.5.251"
BASELINE_ADDRESS = "127.0.5.253"
DOVECOT_ADDRESS = "127.0.5.252"
USER = "alice@example.org"
PASSWORD = "bench-password-2026"
SEARCH_WORD = "zanzibar"
STORE_COUNT = 1000
# Bounds on how long a server may take to come up and one client operation may take.
START_TIMEOUT = 120.0
CLIENT_TIMEOUT = 300.0

WORDS = ["meeting", "report", "budget", "invoice", "travel", "schedule", "project", "review", "draft", "update", "team", "lunch", "weekly", "quarterly", "deadline", "release", "server", "network", "storage", "backup", "contract", "offer", "price", "delivery"]


def generate(count: int) -> list[bytes]:
    rng = random.Random(20261125)
    messages = []
    for number in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(200, 600))]
        if number % 97 == 0:
            words.insert(rng.randint(0, len(words)), SEARCH_WORD)
        lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
        body = "\r\n".join(lines) + "\r\n"
        header = (
            f"From: Sender {number % 50} <sender{number % 50}@example.net>\r\n"
            f"To: Alice <{USER}>\r\n"
            f"Subject: {rng.choice(WORDS)} {rng.choice(WORDS)} #{number}\r\n"
            f"Date: Mon, 23 Nov 2026 {number % 24:02d}:{number % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench{number}@example.net>\r\n"
            "MIME-Version: 1.0\r\n"
        )
        kind = number % 10
        if kind == 8:
            import quopri

            unix_body = body.replace("\r\n", "\n").replace("e", "é")
            encoded = quopri.encodestring(unix_body.encode("utf-8")).decode()
            message = (
                header + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded.replace("\n", "\r\n")
            )
        elif kind == 9:
            import base64

            encoded = base64.encodebytes(body.encode()).decode().replace("\n", "\r\n")
            message = (
                header + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + encoded + "--b--\r\n"
            )
        else:
            message = header + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body
        messages.append(message.encode())
    return messages


# -- peerage, in its own process ------------------------------------------------------------


def serve_peerage(workdir: Path, count: int, address: str = PEERAGE_ADDRESS, source: Path | None = None) -> None:
    if source is not None:
        # The earlier tree's peerage, not this checkout's (nothing of peerage is imported yet).
        sys.path.insert(0, str(source))
    import importlib.util

    from peerage.config import config_from_dict
    from peerage.mail.imap.service import ImapService
    from peerage.mail.mailbox import mailbox_owner, store_for
    from peerage.server import Host

    async def main() -> None:
        raw = {
            "server": {"data_dir": str(workdir / "peerage-data"), "log_level": "warning"},
            "domain": [{"name": "example.org", "cert": str(workdir / "cert.pem"), "key": str(workdir / "key.pem")}],
            "xmpp": {"enabled": False}, "sip": {"enabled": False}, "smtp": {"enabled": False},
            "imap": {"enabled": True, "listen": [], "tls_listen": [f"{address}:993"]},
        }
        if importlib.util.find_spec("peerage.mail.sieve") is not None:  # trees before Sieve lack the section
            raw["sieve"] = {"listen": []}  # no ManageSieve on the wildcard 0.0.0.0:4190 default
        host = Host(config_from_dict(raw, workdir / "peerage.toml"))
        await host.open()
        if not await host.accounts.exists(USER):
            await host.accounts.add(USER, PASSWORD)
        store = store_for(host)
        inbox = await store.get_mailbox(mailbox_owner(USER), "INBOX")
        assert inbox is not None
        if not await store.uids(inbox.id):
            messages = generate(count)
            for start in range(0, count, 1000):
                batch = messages[start : start + 1000]
                await store.append_many(inbox.id, [(m, (), None, 0) for m in batch], durable=False)
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


def start_peerage(workdir: Path, count: int, address: str = PEERAGE_ADDRESS,
                  source: Path | None = None) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-peerage", str(workdir), "--messages", str(count), "--address", address,
         *(["--peerage-src", str(source)] if source is not None else [])],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = process.stdout.readline()
    if b"ready" not in line or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError("peerage did not start")
    return process


# -- Dovecot -----------------------------------------------------------------------------------


def start_dovecot(workdir: Path, messages: list[bytes]) -> subprocess.Popen[bytes]:
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    base = workdir / "dovecot"
    maildir = base / "mail" / "alice"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time()) - len(messages)
    for number, message in enumerate(messages):
        (maildir / "cur" / f"{stamp + number}.M{number}P1.bench,S={len(message)}:2,").write_bytes(message)
    for sub in ("run", "state", "home"):
        (base / sub).mkdir(exist_ok=True)
    os.chmod(base / "run", 0o755)
    config = base / "dovecot.conf"
    config.write_text(
        f"""base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = {DOVECOT_ADDRESS}
ssl = required
ssl_cert = <{workdir}/cert.pem
ssl_key = <{workdir}/key.pem
ssl_min_protocol = TLSv1.2
first_valid_uid = 100
mail_location = maildir:{base}/mail/%n
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={base}/home/%n
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = {DOVECOT_ADDRESS}
    port = 993
  }}
}}
"""
    )
    # Mail is read and written as the unprivileged dovecot user, as a packaged install would.
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(base / "mail"), str(base / "home")], check=True)
    os.chmod(workdir, 0o755)
    os.chmod(base, 0o755)
    process = subprocess.Popen([binary, "-F", "-c", str(config)])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            client = imaplib.IMAP4_SSL(DOVECOT_ADDRESS, 993, ssl_context=_context(), timeout=5)
            client.logout()
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {(base / 'dovecot.log').read_text()[-2000:]}") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("dovecot did not start")


# -- the workload ----------------------------------------------------------------------------


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def workload(address: str, round_number: int, count: int) -> dict[str, float]:
    client = imaplib.IMAP4_SSL(address, 993, ssl_context=_context(), timeout=CLIENT_TIMEOUT)
    client.login(USER, PASSWORD)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    typ, data = client.select("INBOX")
    timings["SELECT"] = time.perf_counter() - start
    assert typ == "OK" and int(data[0]) == count, data

    start = time.perf_counter()
    typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER])")
    timings["FETCH headers (all)"] = time.perf_counter() - start
    assert typ == "OK" and sum(1 for item in data if isinstance(item, tuple)) == count

    start = time.perf_counter()
    typ, data = client.search(None, "TEXT", SEARCH_WORD)
    timings["SEARCH TEXT"] = time.perf_counter() - start
    found = len(data[0].split())
    expected = len(range(0, count, 97))
    assert typ == "OK" and found == expected, (address, found, expected)

    operation = "+FLAGS" if round_number % 2 == 0 else "-FLAGS"
    start = time.perf_counter()
    typ, data = client.store(f"1:{STORE_COUNT}", operation, "(\\Flagged)")
    timings[f"STORE flags x{STORE_COUNT}"] = time.perf_counter() - start
    assert typ == "OK" and len(data) == STORE_COUNT, len(data)
    client.logout()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also run peerage from this earlier src/ tree, for a before/after figure")
    parser.add_argument("--serve-peerage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", default=PEERAGE_ADDRESS, help=argparse.SUPPRESS)
    parser.add_argument("--peerage-src", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peerage:
        serve_peerage(args.serve_peerage, args.messages, args.address, args.peerage_src)
        return

    from peerage.net.tls import generate_self_signed

    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="peerage-imap-bench-"))
    generate_self_signed("example.org", workdir / "cert.pem", workdir / "key.pem")
    messages = generate(args.messages)
    peerage = dovecot = baseline = None
    results: dict[str, dict[str, list[float]]] = {"peerage": {}, "dovecot": {}}
    cold: dict[str, dict[str, float]] = {}
    servers = [("peerage", PEERAGE_ADDRESS), ("dovecot", DOVECOT_ADDRESS)]
    try:
        peerage = start_peerage(workdir, args.messages)
        if args.baseline_src is not None:
            # The same messages (same generator seed) in the earlier tree's own data directory.
            (workdir / "before").mkdir()
            for name in ("cert.pem", "key.pem"):
                shutil.copy(workdir / name, workdir / "before" / name)
            baseline = start_peerage(workdir / "before", args.messages, BASELINE_ADDRESS, args.baseline_src.resolve())
            results["before"] = {}
            servers.insert(0, ("before", BASELINE_ADDRESS))
        dovecot = start_dovecot(workdir, messages)
        for round_number in range(args.rounds + 1):
            for name, address in servers:
                timings = workload(address, round_number, args.messages)
                if round_number == 0:
                    cold[name] = timings
                    continue
                for op, seconds in timings.items():
                    results[name].setdefault(op, []).append(seconds)
    finally:
        for process in (peerage, baseline, dovecot):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    load_after = os.getloadavg()[0]
    rows = []
    for op in results["peerage"]:
        ours = statistics.median(results["peerage"][op])
        theirs = statistics.median(results["dovecot"][op])
        rows.append((op, ours, theirs, ours / theirs if theirs else float("inf"),
                     cold["peerage"][op], cold["dovecot"][op]))
    header = "| operation | peerage (s) | Dovecot (s) | ratio | first round peerage / Dovecot (s) |"
    if "before" in results:
        header += " peerage before (s) / ratio |"
    lines = [header, "|---|---|---|---|---|" + ("---|" if "before" in results else "")]
    for op, ours, theirs, ratio, cold_ours, cold_theirs in rows:
        line = f"| {op} | {ours:.4f} | {theirs:.4f} | {ratio:.2f}x | {cold_ours:.4f} / {cold_theirs:.4f} |"
        if "before" in results:
            earlier = statistics.median(results["before"][op])
            line += f" {earlier:.4f} / {earlier / statistics.median(results['dovecot'][op]):.2f}x |"
        lines.append(line)
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## IMAP: peerage vs Dovecot ({now})\n\n"
        f"Machine: {machine()}. Dovecot {subprocess.run(['dovecot', '--version'], capture_output=True, text=True).stdout.strip()}, "
        f"Maildir, default settings; peerage on SQLite (WAL), bodies below 64 KiB in the database. {args.messages} messages "
        f"(80% plain, 10% quoted-printable, 10% base64 multipart; about 2-4 KB each), implicit TLS, one "
        f"imaplib client doing SELECT, FETCH 1:* (BODY.PEEK[HEADER]), SEARCH TEXT, STORE 1:{STORE_COUNT} "
        f"+/-FLAGS. Median of {args.rounds} warm rounds; the first (cold) round is shown apart. The times "
        f"include the client's own parsing, which is the same for both. 1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after (above about 1, other work shared the cores). "
        f"Target: each ratio <= 1.5."
        + (f" `peerage before` is the tree given with `--baseline-src` ({args.baseline_src.name}), run in the "
           "same rounds on the same messages; its ratio is to the same Dovecot figures." if args.baseline_src else "")
        + f"\n\n{table}\n"
    )
    results_path = ROOT / "bench" / "RESULTS.md"
    with open(results_path, "a", encoding="utf-8") as handle:
        handle.write(section)
    print(f"appended to {results_path}")


if __name__ == "__main__":
    main()
