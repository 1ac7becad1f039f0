"""SMTP acceptance benchmark: Postfix's smtp-source against peerage and against Postfix, in one run.

Both servers receive the same load (message count, size, parallel sessions) on loopback and deliver to
a local mailbox: peerage into its mailbox store, Postfix through virtual(8) into a Maildir. Reported
for each: messages per second accepted (smtp-source's wall time) and durable (until the last message
is in the mailbox; for peerage these are the same, since it answers 250 only after the mailbox commit),
and the ratio peerage / Postfix. Appends a section to bench/RESULTS.md.

With `--baseline-src DIR` (a copy of an earlier `src/` tree, e.g. `git archive REV src | tar -x -C DIR`),
one more peerage runs from that tree in the same rounds, so a change is measured against its
predecessor under the same load on the machine.

Usage: python bench/smtp/run.py [--messages N] [--sessions S] [--size BYTES] [--rounds R]
       [--mx-workers 0,2] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.machine import describe as machine  # noqa: E402
from tests.harness import LocalDNS, PeerageServer, TestCA  # noqa: E402
from tests.harness.server import to_toml  # noqa: E402
from tests.mail.postfix import Postfix  # noqa: E402

DNS_ADDRESS = "127.0.4.153"
PEERAGE_ADDRESS = "127.0.4.151"
# One address per measured peerage configuration (all run at once).
PEERAGE_ADDRESSES = ("127.0.4.151", "127.0.4.155", "127.0.4.156", "127.0.4.157", "127.0.4.158")
POSTFIX_ADDRESS = "127.0.4.152"
# Bounds: the load is finite and every wait has a deadline.
MAX_MESSAGES = 20000
DURABLE_TIMEOUT = 300.0
MAX_ROUNDS = 10


def _smtp_source(address: str, messages: int, sessions: int, size: int, sender: str, recipient: str) -> float:
    started = time.monotonic()
    subprocess.run(
        ["smtp-source", "-c", "-s", str(sessions), "-m", str(messages), "-l", str(size),
         "-f", sender, "-t", recipient, "-M", "bench.example.net", f"{address}:25"],
        check=True, capture_output=True, timeout=DURABLE_TIMEOUT,
    )
    return time.monotonic() - started


def _peerage_count(data_dir: Path, owner: str) -> int:
    with sqlite3.connect(data_dir / "peerage.db", timeout=30) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM mail_messages m JOIN mail_mailboxes b ON b.id = m.mailbox_id "
            "WHERE b.owner = ? AND b.name = 'INBOX'", (owner,)).fetchone()
    return int(row[0])


def _wait_count(count: Callable[[], int], target: int, started: float) -> float:
    deadline = time.monotonic() + DURABLE_TIMEOUT
    while count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count()} of {target} messages became durable in {DURABLE_TIMEOUT}s")
        time.sleep(0.01)
    return time.monotonic() - started


def _add_user(server: PeerageServer, address: str, password: str) -> None:
    """Add the user; a tree older than the harness may refuse config sections it does not know (the
    harness writes every service's, e.g. [web] and [sieve]): those that are switched off are dropped."""
    for _ in range(10):
        done = server.cli("user", "add", address, "--password-file", "-", input=password + "\n", check=False)
        if done.returncode == 0:
            return
        marker = "unknown section or key '"
        config = tomllib.loads(server.config_path.read_text())
        name = done.stderr.split(marker, 1)[1].split("'", 1)[0] if marker in done.stderr else ""
        if not isinstance(config.get(name), dict) or config[name].get("enabled", True):
            raise RuntimeError(f"peerage user add failed: {done.stderr.strip()}")
        del config[name]
        server.config_path.write_text(to_toml(config))
    raise RuntimeError("peerage user add failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--mx-workers", default="0,2",
                        help="comma-separated [smtp] mx_workers values to measure peerage with (default 0,2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also run peerage (mx_workers=0) from this earlier src/ tree, for a before/after figure")
    parser.add_argument("--no-results", action="store_true", help="do not write to bench/RESULTS.md")
    args = parser.parse_args()
    messages = min(args.messages, MAX_MESSAGES)
    rounds = min(max(args.rounds, 1), MAX_ROUNDS)
    args.rounds = rounds
    if shutil.which("smtp-source") is None:
        print("smtp-source (Debian package postfix) is required", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    # The sending domain publishes SPF and DMARC, as real senders do; both servers see the same zone.
    for domain, address in (("example.org", PEERAGE_ADDRESS), ("example.net", POSTFIX_ADDRESS)):
        dns.add_mx(domain, 10, f"mx.{domain}")
        dns.add_a(f"mx.{domain}", address)
        dns.add_txt(domain, "v=spf1 ip4:127.0.0.0/8 -all")
        dns.add_txt(f"_dmarc.{domain}", "v=DMARC1; p=none")
    ca = TestCA(workdir / "ca")
    worker_counts = [int(x) for x in args.mx_workers.split(",") if x.strip()]

    def make_peerage(workers: int, address: str, label: str = "") -> PeerageServer:
        server = PeerageServer(
            workdir / f"peerage-{workers}{label}", "example.org", address, dns=dns, services=("smtp",),
            config={
                "server": {"log_level": "info"},
                "smtp": {"mx_messages_per_minute": 10_000_000, "max_message_size": 10_240_000,
                         "mx_workers": workers},
                "limits": {"connections_per_ip": 10_000},
            },
            certs={"example.org": ca.issue("example.org")},
        )
        _add_user(server, "alice@example.org", "bench password")
        return server

    postfix = Postfix(workdir / "postfix", domain="example.net", hostname="mx.example.net", address=POSTFIX_ADDRESS,
                      dns_address=DNS_ADDRESS, users=["carol"], cert=ca.issue("mx.example.net"),
                      extra={"smtpd_client_connection_count_limit": "1000", "default_process_limit": "200"})
    # Every server runs for the whole benchmark; the rounds alternate between them, so a burst of other
    # work on the machine hits all of them alike, and the median of the rounds is reported.
    targets: list[tuple[str, str, str, str, Callable[[], int]]] = []
    peerages: list[PeerageServer] = []
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        postfix.start()
        maildir = postfix.mail_dir / "carol" / "new"
        targets.append(("postfix", POSTFIX_ADDRESS, "load@example.org", "carol@example.net",
                        lambda: len(os.listdir(maildir)) if maildir.is_dir() else 0))
        runs: list[tuple[str, int, Path | None]] = [(f"peerage (mx_workers={w})", w, None) for w in worker_counts]
        if args.baseline_src is not None:
            runs.insert(0, ("peerage before (mx_workers=0)", 0, args.baseline_src.resolve()))
        for index, (name, workers, source) in enumerate(runs[: len(PEERAGE_ADDRESSES)]):
            address = PEERAGE_ADDRESSES[index]
            saved_path = os.environ.get("PYTHONPATH")
            # The CLI that prepares its data, the server process and its MX workers import peerage
            # from the tree meant: the earlier one (a newer CLI would migrate the database past it), or
            # this checkout's (without PYTHONPATH they would import the virtualenv's installed one).
            os.environ["PYTHONPATH"] = str(source if source is not None else ROOT / "src")
            print(f"{name}: peerage from {os.environ['PYTHONPATH']}", flush=True)
            try:
                peerage = make_peerage(workers, address, "-before" if source else "")
                peerage.start()
            finally:
                if saved_path is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved_path
            peerages.append(peerage)
            targets.insert(-1, (name, address, "load@example.net", "alice@example.org",
                                functools.partial(_peerage_count, peerage.data_dir, "alice@example.org")))
        for _name, address, sender, recipient, count in targets:
            # Warm up (first table rows, caches, worker processes) with a few messages.
            before = count()
            _smtp_source(address, 20, 2, args.size, sender, recipient)
            _wait_count(count, before + 20, time.monotonic())
        for _ in range(args.rounds):
            for name, address, sender, recipient, count in targets:
                base = count()
                started = time.monotonic()
                accepted = _smtp_source(address, messages, args.sessions, args.size, sender, recipient)
                durable = _wait_count(count, base + messages, started)
                samples.setdefault(name, []).append((messages / accepted, messages / durable))
    finally:
        for peerage in peerages:
            peerage.stop()
        postfix.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        name: (statistics.median(a for a, _ in runs), statistics.median(d for _, d in runs))
        for name, runs in samples.items()
    }
    pf_acc, pf_dur = results["postfix"]
    lines = [f"messages={messages} size={args.size} sessions={args.sessions}"]
    for name, (acc, dur) in results.items():
        lines.append(f"{name:30s} accepted {acc:8.1f} msg/s   durable {dur:8.1f} msg/s"
                     f"   ratio {acc / pf_acc:.2f}x / {dur / pf_dur:.2f}x")
    print("\n".join(lines))
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            f"## smtp: smtp-source, peerage vs Postfix ({stamp})\n",
            f"Machine: {machine()}. "
            "1-minute load average "
            f"{os.getloadavg()[0]:.1f} at the end (above about 1, other work shared the cores).\n",
            f"Load: `smtp-source -s {args.sessions} -m {messages} -l {args.size}`, {args.rounds} rounds "
            "alternating between the servers (all running throughout), median reported; one recipient per message, "
            "one message per connection, delivered to a local mailbox (peerage: mailbox store, answer "
            "after the commit; Postfix 3.7: queue file, then virtual(8) into a Maildir). Accepted = "
            "smtp-source's wall time; durable = until the last message is in the mailbox.\n",
            *(["`peerage before` runs the earlier source tree given with `--baseline-src` in the same rounds.\n"]
              if args.baseline_src is not None else []),
            "| server | accepted msg/s | durable msg/s | ratio to Postfix (accepted / durable) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, (acc, dur) in results.items():
            section.append(f"| {name} | {acc:.1f} | {dur:.1f} | {acc / pf_acc:.2f}x / {dur / pf_dur:.2f}x |")
        section.append("")
        _write_section(ROOT / "bench" / "RESULTS.md", "\n".join(section))
    return 0


def _write_section(results_path: Path, section: str) -> None:
    """Append this run's section to RESULTS.md: earlier runs stay, so figures can be compared."""
    text = results_path.read_text() if results_path.exists() else ""
    results_path.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
