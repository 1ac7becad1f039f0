"""Benchmark: messages/s from users of one domain to users of another, across federation.

peerage <-> peerage and Prosody <-> Prosody (Debian's prosody 0.12) run one after the other in the
same run, with the same load tool: PAIRS senders on domain A each send MESSAGES chat messages to
their own receiver on domain B (all clients logged in, the s2s stream warmed up first). Both pairs of
servers federate at the encrypted level (STARTTLS with self-signed certificates, then dialback), with
no archiving and no offline storage in the path. The figure is messages received / seconds from the
first send to the last receipt. Prints both figures and the ratio and appends them to
bench/RESULTS.md.

Run from the repository root:  python bench/xmpp_s2s/run.py [--pairs 20] [--messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
from bench.machine import describe as machine  # noqa: E402
from tests.harness import LocalDNS, PeerageServer, TestCA  # noqa: E402
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


async def measure(a_addr: str, a_dom: str, b_addr: str, b_dom: str, pairs: int, messages: int,
                  mechanism: str) -> float:
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

    start = time.perf_counter()
    await asyncio.gather(*(blast(i, s) for i, s in enumerate(senders)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in counters)), RUN_TIMEOUT)
    elapsed = time.perf_counter() - start
    received = sum(c.count for c in counters)
    for task in tasks:
        task.cancel()
    for client in senders + receivers:
        await client.close()
    if received < pairs * messages:
        print(f"  warning: only {received} of {pairs * messages} messages arrived within {RUN_TIMEOUT}s")
    return received / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1000, help="messages per pair")
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peerage-bench-s2s-"))
    ca = TestCA(work / "ca")
    dns = LocalDNS(DNS_ADDRESS, 53).start()
    users_a = [f"s{i}" for i in range(args.pairs)]
    users_b = [f"r{i}" for i in range(args.pairs)]
    results: dict[str, float] = {}
    try:
        # --- peerage <-> peerage --------------------------------------------------------------
        servers = []
        for domain, address, users in (("pa.bench.test", "127.0.2.101", users_a),
                                       ("pb.bench.test", "127.0.2.102", users_b)):
            dns.add_a(domain, address)
            dns.add_srv(f"_xmpp-server._tcp.{domain}", 0, 5, 5269, domain)
            server = PeerageServer(work / domain, [domain], address, dns=dns, certs={domain: ca.self_signed(domain)},
                                   config={"server": {"log_level": "info"},
                                           "xmpp": {"archive_enabled": False,
                                                    "federation": {"level": "encrypted", "bidi": False}}})
            for user in users:
                server.add_user(f"{user}@{domain}", PASSWORD)
            servers.append(server.start())
        try:
            results["peerage"] = asyncio.run(measure("127.0.2.101", "pa.bench.test", "127.0.2.102",
                                                     "pb.bench.test", args.pairs, args.messages, "SCRAM-SHA-256"))
        finally:
            for server in servers:
                server.stop()
        print(f"peerage <-> peerage: {results['peerage']:.0f} msg/s")
        # --- Prosody <-> Prosody --------------------------------------------------------------
        prosodies = []
        for domain, address, users in (("xa.bench.test", "127.0.2.111", users_a),
                                       ("xb.bench.test", "127.0.2.112", users_b)):
            dns.add_a(domain, address)
            dns.add_srv(f"_xmpp-server._tcp.{domain}", 0, 5, 5269, domain)
            cert, key = ca.self_signed(domain)
            prosody = ProsodyServer(work / domain, domain, address, DNS_ADDRESS, cert=cert, key=key,
                                    users={u: PASSWORD for u in users})
            prosody.config_path.write_text(prosody.config_path.read_text().replace(
                'levels = { min = "debug" }', 'levels = { min = "warn" }'))
            prosodies.append(prosody.start())
        try:
            results["Prosody"] = asyncio.run(measure("127.0.2.111", "xa.bench.test", "127.0.2.112",
                                                     "xb.bench.test", args.pairs, args.messages, "PLAIN"))
        finally:
            for prosody in prosodies:
                prosody.stop()
        print(f"Prosody <-> Prosody: {results['Prosody']:.0f} msg/s")
    finally:
        dns.stop()
    ratio = results["peerage"] / results["Prosody"]
    print(f"ratio peerage/Prosody: {ratio:.2f}x (target >= 1.0x)")
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"\n## xmpp_s2s: federated messages/s, peerage vs Prosody ({stamp})\n\n"
            f"Machine: {machine()}. 1-minute load average {os.getloadavg()[0]:.1f} at the end "
            "(above about 1, other work shared the cores).\n\n"
            f"Load: {args.pairs} senders on domain A, each sending {args.messages} chat messages (100-byte "
            "body) to its own receiver on domain B; all clients logged in and the s2s stream warmed up "
            "first. Both server pairs federate at the encrypted level (STARTTLS, self-signed "
            "certificates, dialback); no archiving, receivers online. Same load tool for both.\n\n"
            "| servers | messages/s |\n| --- | ---: |\n"
            f"| peerage <-> peerage | {results['peerage']:.0f} |\n"
            f"| Prosody 0.12 <-> Prosody 0.12 | {results['Prosody']:.0f} |\n"
            f"| ratio | {ratio:.2f}x (target >= 1.0x) |\n")
        with open(ROOT / "bench" / "RESULTS.md", "a") as file:
            file.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
