"""Benchmark: messages/s from users of one domain to users of another, across federation.

peerage <-> peerage, Prosody <-> Prosody (Debian's prosody 0.12) and ejabberd <-> ejabberd (Debian's
ejabberd 23.01) run in the same run, with the same load tool: PAIRS senders on domain A each send
MESSAGES chat messages to their own receiver on domain B (all clients logged in, the s2s stream warmed
up first). Every pair of servers federates at the encrypted level (STARTTLS with self-signed
certificates, then dialback), with no archiving and no offline storage in the path. The figure is
messages received / seconds from the first send to the last receipt; beside it, the CPU time both
servers of the pair used over the same span, per 1000 messages (the load tool shares the machine, so
messages/s can be set by it or by the scheduler; CPU per message is each server's own). Every server runs for the whole
benchmark and the rounds alternate between the pairs, so a burst of other work on the machine hits
them alike; the median of the rounds is reported, with the spread.

With ``--baseline-src DIR`` (a copy of an earlier ``src/`` tree, e.g.
``git archive REV src | tar -x -C DIR``), a second peerage pair runs that tree in the same rounds.

Run from the repository root:
    python bench/xmpp_s2s/run.py [--pairs 20] [--messages 5000] [--rounds 3] [--baseline-src DIR]
        [--no-prosody] [--no-ejabberd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.machine import describe as machine  # noqa: E402
from tests.harness import LocalDNS, PeerageServer, TestCA  # noqa: E402
from tests.s2s.ejabberd import EjabberdServer  # noqa: E402
from tests.s2s.prosody import ProsodyServer  # noqa: E402
from tests.xmpp.rawclient import RawClient  # noqa: E402

DNS_ADDRESS = "127.0.2.249"
PASSWORD = "bench password"
#: Upper bound on one measured run, whatever the load (seconds).
RUN_TIMEOUT = 300.0
#: Messages written before awaiting the socket buffer (keeps the sender from hogging memory).
SEND_BATCH = 50


class Receiver:
    def __init__(self, client: RawClient, expected: int) -> None:
        self.client = client
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    async def run(self) -> None:
        reader = self.client.reader
        assert reader is not None
        tail = b""
        while self.count < self.expected:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data = tail + chunk
            self.count += data.count(b"</message>")
            tail = data[-10:]
        self.done.set()


async def login(address: str, domain: str, user: str, mechanism: str) -> RawClient:
    client = RawClient(address, domain)
    await client.login(user, PASSWORD, "bench", mechanism=mechanism)
    await client.send("<presence/>")
    client.buffer = ""
    return client


def tree_cpu(root: int) -> float:
    """CPU seconds run by process ``root`` and its live descendants (every thread; the scheduler's
    nanosecond count in /proc/PID/task/TID/schedstat, not the 10 ms ticks of /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


async def measure(a_addr: str, a_dom: str, b_addr: str, b_dom: str, pairs: int, messages: int,
                  mechanism: str, servers: list[int]) -> tuple[float, float]:
    """Messages/s, and the CPU milliseconds per 1000 messages the processes ``servers`` (and their
    children) used over the same span."""
    senders = [await login(a_addr, a_dom, f"s{i}", mechanism) for i in range(pairs)]
    receivers = [await login(b_addr, b_dom, f"r{i}", mechanism) for i in range(pairs)]
    # Warm up: one message per pair establishes the s2s streams in both directions.
    for i, sender in enumerate(senders):
        await sender.send(f"<message to='r{i}@{b_dom}' type='chat'><body>warm</body></message>")
    for receiver in receivers:
        await receiver.read_until(r"</message>", timeout=30)
        receiver.buffer = ""
    counters = [Receiver(r, messages) for r in receivers]
    tasks = [asyncio.ensure_future(c.run()) for c in counters]
    body = "x" * 100

    async def blast(index: int, sender: RawClient) -> None:
        assert sender.writer is not None
        for n in range(0, messages, SEND_BATCH):
            chunk = "".join(f"<message to='r{index}@{b_dom}' type='chat' id='m{k}'><body>{body}</body></message>"
                            for k in range(n, min(n + SEND_BATCH, messages)))
            sender.writer.write(chunk.encode())
            await sender.writer.drain()

    cpu_before = sum(tree_cpu(pid) for pid in servers)
    start = time.perf_counter()
    await asyncio.gather(*(blast(i, s) for i, s in enumerate(senders)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in counters)), RUN_TIMEOUT)
    elapsed = time.perf_counter() - start
    cpu_used = sum(tree_cpu(pid) for pid in servers) - cpu_before
    received = sum(c.count for c in counters)
    for task in tasks:
        task.cancel()
    for client in senders + receivers:
        await client.close()
    if received < pairs * messages:
        print(f"  warning: only {received} of {pairs * messages} messages arrived within {RUN_TIMEOUT}s")
    return received / elapsed, cpu_used * 1e6 / max(received, 1)


#: name -> (domain A, address A, domain B, address B, SASL mechanism of the load clients)
PAIRS = {
    "peerage before": ("qa.bench.test", "127.0.2.103", "qb.bench.test", "127.0.2.104", "SCRAM-SHA-256"),
    "peerage": ("pa.bench.test", "127.0.2.101", "pb.bench.test", "127.0.2.102", "SCRAM-SHA-256"),
    "Prosody 0.12": ("xa.bench.test", "127.0.2.111", "xb.bench.test", "127.0.2.112", "PLAIN"),
    "ejabberd 23.01": ("ea.bench.test", "127.0.2.141", "eb.bench.test", "127.0.2.142", "PLAIN"),
}


def _fit_config(path: Path) -> None:
    """Drop from ``path`` the sections and keys the tree on PYTHONPATH does not know (the harness
    writes today's configuration; an earlier tree refuses what came later, e.g. ``[sieve]``)."""
    for _ in range(20):
        check = subprocess.run([sys.executable, "-m", "peerage", "--config", str(path), "user", "list"],
                               capture_output=True, text=True, timeout=120)
        match = re.search(r"unknown section or key '([^']+)'", check.stderr)
        if check.returncode == 0 or match is None:
            return
        name = match.group(1)
        lines, kept, skipping, section = path.read_text().splitlines(), [], False, ""
        for line in lines:
            header = re.fullmatch(r"\[+([^\]]+)\]+\s*", line)
            if header:
                section = header.group(1)
                skipping = section == name or section.startswith(name + ".")
            elif "." in name and section == name.rpartition(".")[0] and \
                    line.split("=", 1)[0].strip() == name.rpartition(".")[2]:
                continue  # an unknown key of a known section
            if not skipping:
                kept.append(line)
        path.write_text("\n".join(kept) + "\n")
        print(f"  baseline configuration: dropped [{name}], which that tree does not know", flush=True)


def _peerage(work: Path, ca: TestCA, dns: LocalDNS, domain: str, address: str, users: list[str],
             source: Path | None) -> PeerageServer:
    server = PeerageServer(work / domain, [domain], address, dns=dns, certs={domain: ca.self_signed(domain)},
                           config={"server": {"log_level": "info"},
                                   "xmpp": {"archive_enabled": False,
                                            "federation": {"level": "encrypted", "bidi": False}}})
    saved = os.environ.get("PYTHONPATH")
    # The server process (and the CLI that adds users) import peerage from the tree named here: the
    # earlier tree for the baseline, this checkout's src/ otherwise. Without it the child imports the
    # package the virtualenv has installed, which may be another checkout's tree.
    os.environ["PYTHONPATH"] = str(source if source is not None else ROOT / "src")
    try:
        if source is not None:
            _fit_config(server.config_path)
        tree = subprocess.run([sys.executable, "-c", "import peerage; print(peerage.__file__)"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        print(f"  {domain}: peerage from {Path(tree).parents[1]}", flush=True)
        for user in users:
            server.add_user(f"{user}@{domain}", PASSWORD)
        return server.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000,
                        help="messages per pair (5000: 1000 lasts about 0.5 s, which mostly times how fast the "
                        "buffers on the path fill, not a steady rate)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="an earlier src/ tree, run as 'peerage before' in the same rounds")
    parser.add_argument("--no-prosody", action="store_true")
    parser.add_argument("--no-ejabberd", action="store_true")
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peerage-bench-s2s-"))
    ca = TestCA(work / "ca")
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    users_a = [f"s{i}" for i in range(args.pairs)]
    users_b = [f"r{i}" for i in range(args.pairs)]
    names = ["peerage"]
    if args.baseline_src is not None:
        names.insert(0, "peerage before")
    if not args.no_prosody:
        names.append("Prosody 0.12")
    if not args.no_ejabberd:
        names.append("ejabberd 23.01")
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu_samples: dict[str, list[float]] = {name: [] for name in names}
    stoppers: list[object] = []
    pids: dict[str, list[int]] = {name: [] for name in names}
    loads: list[float] = []
    try:
        for name in names:
            a_dom, a_addr, b_dom, b_addr, _ = PAIRS[name]
            for domain, address, users in ((a_dom, a_addr, users_a), (b_dom, b_addr, users_b)):
                dns.add_a(domain, address)
                dns.add_srv(f"_xmpp-server._tcp.{domain}", 0, 5, 5269, domain)
                if name.startswith("peerage"):
                    source = args.baseline_src.resolve() if name == "peerage before" and args.baseline_src else None
                    stoppers.append(_peerage(work, ca, dns, domain, address, users, source))
                elif name.startswith("Prosody"):
                    cert, key = ca.self_signed(domain)
                    prosody = ProsodyServer(work / domain, domain, address, DNS_ADDRESS, cert=cert, key=key,
                                            users={u: PASSWORD for u in users})
                    prosody.config_path.write_text(prosody.config_path.read_text().replace(
                        'levels = { min = "debug" }', 'levels = { min = "warn" }'))
                    stoppers.append(prosody.start())
                else:
                    cert, key = ca.self_signed(domain)
                    stoppers.append(EjabberdServer(work / domain, domain, address, DNS_ADDRESS, level="encrypted",
                                                   cert=cert, key=key, users={u: PASSWORD for u in users},
                                                   loglevel="warning").start())
            for server in stoppers[-2:]:
                pids[name].append(server.process.pid)  # type: ignore[attr-defined]
        for round_ in range(args.rounds):
            for name in names:
                a_dom, a_addr, b_dom, b_addr, mechanism = PAIRS[name]
                rate, cpu_ms = asyncio.run(measure(a_addr, a_dom, b_addr, b_dom, args.pairs, args.messages,
                                                   mechanism, pids[name]))
                samples[name].append(rate)
                cpu_samples[name].append(cpu_ms)
                loads.append(os.getloadavg()[0])
                print(f"round {round_ + 1}: {name}: {rate:.0f} msg/s, {cpu_ms:.1f} CPU ms per 1000 messages "
                      f"(load {loads[-1]:.1f})")
    finally:
        for server in reversed(stoppers):
            server.stop()  # type: ignore[attr-defined]
        dns.stop()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_samples.items()}
    for name in names:
        print(f"{name}: median {medians[name]:.0f} msg/s of {', '.join(f'{v:.0f}' for v in samples[name])}; "
              f"CPU ms per 1000 messages {cpu_medians[name]:.1f} of "
              f"{', '.join(f'{v:.1f}' for v in cpu_samples[name])}")
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        rows = "".join(f"| {name} <-> {name} | {medians[name]:.0f} | {min(samples[name]):.0f}-"
                       f"{max(samples[name]):.0f} | {cpu_medians[name]:.1f} | {min(cpu_samples[name]):.1f}-"
                       f"{max(cpu_samples[name]):.1f} |\n" for name in names)
        ratios = []
        if "Prosody 0.12" in medians:
            ratios.append(f"peerage/Prosody {medians['peerage'] / medians['Prosody 0.12']:.2f}x")
        if "ejabberd 23.01" in medians:
            ratios.append(f"peerage/ejabberd {medians['peerage'] / medians['ejabberd 23.01']:.2f}x")
        if "peerage before" in medians:
            ratios.append(f"after/before {medians['peerage'] / medians['peerage before']:.3f}x in messages/s, "
                          f"{cpu_medians['peerage'] / cpu_medians['peerage before']:.3f}x in CPU per message")
        section = (
            f"\n## xmpp_s2s: federated messages/s, {', '.join(names)} ({stamp})\n\n"
            f"Machine: {machine()}. 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the "
            "rounds (the machine was shared with other work: above about 1, the figures are lower and "
            "noisier than on an idle machine).\n\n"
            f"Load: {args.pairs} senders on domain A, each sending {args.messages} chat messages (100-byte "
            "body) to its own receiver on domain B; all clients logged in and the s2s stream warmed up "
            "first. Every server pair federates at the encrypted level (STARTTLS, self-signed "
            "certificates, dialback); no archiving, receivers online. Same load tool for all; "
            f"{args.rounds} alternating rounds, median reported.\n"
            + ("`peerage before` runs the earlier source tree given with `--baseline-src` in the same "
               "rounds.\n" if args.baseline_src is not None else "")
            + "\n| servers | messages/s (median) | range | CPU ms per 1000 messages, both servers (median) "
              "| range |\n| --- | ---: | ---: | ---: | ---: |\n" + rows
            + (f"\nRatios: {'; '.join(ratios)}.\n" if ratios else ""))
        with open(ROOT / "bench" / "RESULTS.md", "a") as file:
            file.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
