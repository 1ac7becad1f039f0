#!/usr/bin/env python3
"""bench/cluster: what routing between nodes costs, how two nodes scale, how fast failover routes.

Real `peerage serve` nodes on 127.0.16.1-3 (the cluster test block: run under
/tmp/peerage-area-cluster.lock), one private PostgreSQL, one nats-server, clients over TCP+STARTTLS
(tests/cluster/xmppclient.py), archiving off (routing is measured, not PostgreSQL writes).

  (a) CPU per chat message, within one node (sender and receiver on node 1) and between two nodes
      (sender on node 1, receiver on node 2): CPU seconds of every node and of nats-server over
      the messages, from /proc. Target: between nodes <= 2x within one node.
  (b) messages/s of one node pinned to CPU 0, then of two nodes pinned to CPUs 0 and 1, with the
      same number of sender/receiver pairs (closed loop, WINDOW messages in flight per pair), pairs
      within a node and pairs across nodes. Target: two nodes >= 1.7x one node. The load tool runs
      unpinned on the same two CPUs, and the machine is shared: the figures say so.
  (c) after kill -9 of the receiver's node: time until a message to the receiver's bare JID reaches
      it again, its client reconnecting at once to the next SRV target. Target: <= 5 s.
  (d) SIP: CPU per MESSAGE (RFC 3428) sent over UDP to node 1 for a user agent registered over TCP
      with RFC 5626 outbound, once on node 1 (within) and once on node 2 (the request goes to node 2
      over NATS and down the flow). Target, decided here: between nodes <= 2.5x within one node.
      Both nodes run the stateful proxy (two server and two client transactions instead of one of
      each), so 2x is the floor by design; NATS and the extra parse should add at most half again.

  (e) what cluster mode adds to a roster change: subscription stanzas (subscribe, subscribed,
      unsubscribe between two users of one node, closed loop) on a node with a [cluster] section
      (each one decided under the account's PostgreSQL advisory lock, cluster/roster.py, and
      announced to the other nodes) and on the same node without one (the per-node lock only);
      CPU of the node, nats-server and PostgreSQL per subscription stanza.
  (f) what the archive write before a XEP-0198 ack costs (Mam.durable(), cluster/xmpp.py): chat
      messages from senders using XEP-0198 (each followed by <r/>, WINDOW unacknowledged per
      sender), archive on, on the same node with and without a [cluster] section; CPU of the
      node, nats-server and PostgreSQL per message, and the mean time to the ack (Little's law:
      messages in flight / messages per second).

Cores in (b): the node(s) pinned with taskset (one node on CPU 0; two nodes on CPUs 0 and 1);
nats-server, PostgreSQL and this load tool are not pinned and run on the same two CPUs. The CPU
each used during each step is recorded, so the figure can be read against what the nodes had.

  (b') with --quota F[,F...] (run as root, cgroup v1 cpu controller at /sys/fs/cgroup/cpu): (b)
      again with each node in a cgroup of its own whose CFS quota is F of one CPU (a 10 ms period,
      cpu.cfs_quota_us = F x cpu.cfs_period_us), pinned as in (b), with --quota-window messages in
      flight per pair (a throttled node waits out its period: with the window of (b) the closed loop,
      not the node, would set the rate), the same F for the one node and
      for each of the two. On a 2-CPU machine the one-process load tool cannot feed two unlimited
      nodes; with the nodes capped, nats-server, PostgreSQL and the load tool have the rest, so
      the ratio says whether two nodes give twice one node's capacity. The share of CFS periods in
      which each node was throttled (cpu.stat) shows it was held at its quota, i.e. saturated.
      Each step of (b) and (b') starts once the nodes are idle after the logins, after WARM_UP
      seconds of the same traffic, not counted.

Targets (a) <= 2x and (b) >= 1.7x are the issue's; (c) <= 5 s is the issue's; (d) is ours; (e) and
(f) have no target (measured costs).

Usage: python3 bench/cluster/run.py [--messages 4000] [--pairs 20] [--seconds 8] [--quota 0.1,0.15]
       [--quota-seconds 20] [--repeats 3] [--warm-up 2] [--no-write]
Appends a section to bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.machine import describe as machine  # noqa: E402
from tests.cluster.conftest import (  # noqa: E402
    DNS_ADDRESS,
    DOMAIN,
    NODES,
    PASSWORD,
    NatsServer,
    _add_users,
    _create_database,
)
from tests.cluster.sipua import FlowUA  # noqa: E402
from tests.cluster.xmppclient import ClusterClient, srv_targets  # noqa: E402
from tests.harness import LocalDNS, PeerageServer, free_port  # noqa: E402

WINDOW = 10
#: Seconds of unmeasured traffic before each step of (b) and (b').
WARM_UP = 2.0


class Postgres:
    def __init__(self) -> None:
        bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="peerage-bench-pg-"))
        self.base.chmod(0o755)
        shutil.chown(self.base, "postgres", "postgres")
        self.port = free_port("127.0.0.1")
        self.as_pg = ["runuser", "-u", "postgres", "--"]
        data = self.base / "data"
        subprocess.run([*self.as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*self.as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.base / "log"),
                        "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=90)
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, writers)."""
        try:
            master = int((self.base / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return [master, *children]

    def stop(self) -> None:
        subprocess.run([*self.as_pg, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone (a PostgreSQL backend that ended)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_config(database_url: str, name: str, nats_url: str | None, archive: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"log_level": "info"},
        "database": {"url": database_url},
        "xmpp": {"archive_enabled": archive},
        # one load tool sends every MESSAGE from one address: above the flood guard's 200/s
        "sip": {"digest_algorithms": ["MD5"], "flood_requests_per_second": 1_000_000},
    }
    if nats_url is not None:
        config["cluster"] = {"node": name, "nats_urls": [nats_url], "heartbeat_interval": 0.5, "node_timeout": 2.0}
    return config


def pin(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
QUOTA_PERIOD_US = 10_000


class Quota:
    """Nodes held to a CPU quota each: one cgroup (v1 cpu controller) per node."""

    def __init__(self) -> None:
        self.groups: dict[str, Path] = {}

    def apply(self, name: str, pid: int, fraction: float) -> None:
        group = CGROUP_CPU / f"peerage-bench-{os.getpid()}-{name}"
        group.mkdir(exist_ok=True)
        # A short period (the default is 100 ms): a node held at its quota waits at most this long,
        # so the closed loop's messages in flight are not what limits it.
        (group / "cpu.cfs_quota_us").write_text("-1")
        (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(QUOTA_PERIOD_US * fraction)))
        (group / "cgroup.procs").write_text(str(pid))  # every thread of the process
        self.groups[name] = group

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per node: (CFS periods, periods throttled) so far."""
        out = {}
        for name, group in self.groups.items():
            fields = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines() if line.strip())
            out[name] = (int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)))
        return out

    def release(self, pids: list[int]) -> None:
        """The processes back to the root group, the groups removed."""
        for pid in pids:
            with contextlib.suppress(OSError):
                (CGROUP_CPU / "cgroup.procs").write_text(str(pid))
        for group in self.groups.values():
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups = {}


def throttled(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """Share of the step's CFS periods in which each node was held at its quota."""
    parts = []
    for name in sorted(after):
        periods = after[name][0] - before.get(name, (0, 0))[0]
        held = after[name][1] - before.get(name, (0, 0))[1]
        parts.append(f"{name} {100 * held / max(periods, 1):.0f} %")
    return ", ".join(parts)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def own_cpu() -> float:
    """CPU seconds of this load process (all its threads)."""
    times = os.times()
    return times.user + times.system


class Bench:
    def __init__(self, workdir: Path, database_url: str, nats: NatsServer, dns: LocalDNS) -> None:
        self.nodes: dict[str, PeerageServer] = {}
        for name, address in NODES.items():
            self.nodes[name] = PeerageServer(workdir / name, [DOMAIN], address, dns=dns, services=("xmpp", "sip"),
                                             config=node_config(database_url, name, nats.url, archive=False))
        self.nats = nats
        self.pg: Postgres | None = None
        self.workdir = workdir
        self.dns = dns
        self.database_url = database_url

    def pids(self, with_pg: bool = False) -> list[int]:
        pids = [s.process.pid for s in self.nodes.values() if s.running and s.process is not None]
        if self.nats.process is not None:
            pids.append(self.nats.process.pid)
        if with_pg and self.pg is not None:
            pids.extend(self.pg.pids())
        return pids

    def shares(self) -> dict[str, float]:
        """CPU seconds so far: the nodes, nats-server, PostgreSQL, this load tool."""
        nodes = sum(cpu_seconds(s.process.pid) for s in self.nodes.values() if s.running and s.process is not None)
        nats = cpu_seconds(self.nats.process.pid) if self.nats.process is not None else 0.0
        pg = sum(cpu_seconds(pid) for pid in self.pg.pids()) if self.pg is not None else 0.0
        return {"nodes": nodes, "nats": nats, "pg": pg, "load": own_cpu()}


async def connect_pairs(pairs: int, sender_nodes: list[str], receiver_nodes: list[str],
                        tag: str) -> list[tuple[ClusterClient, ClusterClient]]:
    result = []
    for index in range(pairs):
        sender = await ClusterClient(f"s{index}", tag).connect(NODES[sender_nodes[index % len(sender_nodes)]])
        receiver = await ClusterClient(f"r{index}", tag).connect(NODES[receiver_nodes[index % len(receiver_nodes)]])
        result.append((sender, receiver))
    await asyncio.sleep(1.0)  # the registry reaches the other nodes within milliseconds
    return result


def received(receiver: ClusterClient) -> int:
    return receiver.counts["message"]


async def run_pair(sender: ClusterClient, receiver: ClusterClient, count: int | None, until: float,
                   window: int = WINDOW) -> int:
    sent = 0
    base = received(receiver)
    while (count is None or sent < count) and time.monotonic() < until:
        while sent - (received(receiver) - base) >= window:
            await receiver.wait(lambda s=sent: s - (received(receiver) - base) < window, timeout=30,
                                what="window")
        await sender.write(f"<message to='{receiver.jid}' type='chat'><body>m {sent}</body></message>")
        sent += 1
    await receiver.wait(lambda: received(receiver) - base >= sent, timeout=30, what="all messages")
    return sent


async def close_pairs(pairs: list[tuple[ClusterClient, ClusterClient]]) -> None:
    for sender, receiver in pairs:
        await sender.close()
        await receiver.close()


async def forwarded(bench: Bench, node: str) -> tuple[int, int]:
    """Stanzas ``node`` forwarded to other nodes, and the NATS messages they went in."""
    from peerage.cluster.cli import gather

    for answer in await gather([bench.nats.url], 1.0):
        if answer.get("node") == node:
            return int(answer.get("forwarded_out", 0)), int(answer.get("forwarded_batches", 0))
    return 0, 0


async def cpu_per_message(bench: Bench, messages: int, pairs: int) -> dict[str, float]:
    out = {}
    for label, senders, receivers in (("within node 1", ["n1"], ["n1"]), ("node 1 -> node 2", ["n1"], ["n2"])):
        clients = await connect_pairs(pairs, senders, receivers, secrets.token_hex(3))
        stanzas, batches = await forwarded(bench, "n1")
        before = sum(cpu_seconds(p) for p in bench.pids())
        started = time.monotonic()
        await asyncio.gather(*(run_pair(s, r, messages // pairs, time.monotonic() + 600) for s, r in clients))
        elapsed = time.monotonic() - started
        used = sum(cpu_seconds(p) for p in bench.pids()) - before
        out[label] = used / messages * 1e6
        out[label + " msg/s"] = messages / elapsed
        if senders != receivers:
            after = await forwarded(bench, "n1")
            out["per batch"] = (after[0] - stanzas) / max(after[1] - batches, 1)
        await close_pairs(clients)
    return out


async def idle(bench: Bench, timeout: float = 20.0) -> None:
    """Until every node is idle (at most one clock tick of CPU in half a second): what the logins
    left behind (roster loads, presence, registry announcements) is not counted in the next step.
    A node held to a small quota works it off slowly, and one node has twice the logins of each of
    two, so without this the one-node steps paid for more of it."""
    pids = [s.process.pid for s in bench.nodes.values() if s.running and s.process is not None]
    tick = 1 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        await asyncio.sleep(0.5)
        if all(cpu_seconds(pid) - used <= tick * 1.01 for pid, used in zip(pids, before, strict=True)):
            return


async def throughput(bench: Bench, pairs: int, seconds: float, senders: list[str],
                     receivers: list[str], window: int = WINDOW,
                     warm_up: float = WARM_UP) -> tuple[float, dict[str, float]]:
    """Messages/s, and the CPU each part used per second of the step (1.0 = one core)."""
    clients = await connect_pairs(pairs, senders, receivers, secrets.token_hex(3))
    await idle(bench)
    # The same traffic for WARM_UP seconds first, not counted: the first seconds a node spends under
    # a new quota were measured slower than the rest (63,000-65,000 messages per CPU-second at 0.10
    # CPU against 74,000-90,000 in the later steps with pairs within a node), and the one-node steps
    # come first.
    warm_until = time.monotonic() + warm_up
    await asyncio.gather(*(run_pair(s, r, None, warm_until, window) for s, r in clients))
    until = time.monotonic() + seconds
    before = bench.shares()
    started = time.monotonic()
    counts = await asyncio.gather(*(run_pair(s, r, None, until, window) for s, r in clients))
    elapsed = time.monotonic() - started
    after = bench.shares()
    await close_pairs(clients)
    return sum(counts) / elapsed, {part: (after[part] - before[part]) / elapsed for part in after}


def presences(client: ClusterClient, kind: str) -> int:
    return sum(1 for e in client.received if e.name == "presence" and e.attrs.get("type") == kind)


async def roster_pair(asker: ClusterClient, contact: ClusterClient, rounds: int) -> int:
    """``rounds`` of subscribe / subscribed / unsubscribe, each waited for at the other end."""
    for _ in range(rounds):
        seen = presences(contact, "subscribe")
        await asker.send(f"<presence to='{contact.bare}' type='subscribe'/>")
        await contact.wait(lambda s=seen: presences(contact, "subscribe") > s, timeout=30, what="subscribe")
        seen = presences(asker, "subscribed")
        await contact.send(f"<presence to='{asker.bare}' type='subscribed'/>")
        await asker.wait(lambda s=seen: presences(asker, "subscribed") > s, timeout=30, what="subscribed")
        seen = presences(contact, "unsubscribe")
        await asker.send(f"<presence to='{contact.bare}' type='unsubscribe'/>")
        await contact.wait(lambda s=seen: presences(contact, "unsubscribe") > s, timeout=30, what="unsubscribe")
    return 3 * rounds


async def sm_pair(sender: ClusterClient, receiver: ClusterClient, count: int) -> int:
    """``count`` messages, each followed by <r/>, at most WINDOW not yet acknowledged (XEP-0198)."""
    await sender.request_ack()
    await sender.wait(lambda: sender.server_h >= 1, timeout=30, what="first ack")
    base, sent = sender.server_h, 0
    while sent < count:
        await sender.wait(lambda n=sent: n - (sender.server_h - base) < WINDOW, timeout=30, what="ack window")
        await sender.write(f"<message to='{receiver.jid}' type='chat'><body>d {sent}</body></message>"
                           "<r xmlns='urn:xmpp:sm:3'/>")
        sent += 1
    await sender.wait(lambda: sender.server_h - base >= count, timeout=30, what="every ack")
    return count


async def single_node(bench: Bench, label: str, cluster: bool, pairs: int, rounds: int,
                      messages: int) -> dict[str, float]:
    """(e) and (f) on one node at node 1's address, with or without a [cluster] section."""
    server = PeerageServer(bench.workdir / label, [DOMAIN], NODES["n1"], dns=bench.dns, services=("xmpp",),
                           config=node_config(bench.database_url, "n1", bench.nats.url if cluster else None,
                                              archive=True))
    bench.nodes[label] = server
    server.start()
    out: dict[str, float] = {}
    try:
        tag = secrets.token_hex(3)
        clients = []
        for index in range(pairs):
            asker = await ClusterClient(f"ea{index}", tag).connect(NODES["n1"])
            contact = await ClusterClient(f"eb{index}", tag).connect(NODES["n1"])
            clients.append((asker, contact))
        await asyncio.gather(*(roster_pair(a, c, 1) for a, c in clients))  # warm-up (roster rows, caches)
        before, started = sum(cpu_seconds(p) for p in bench.pids(True)), time.monotonic()
        done = sum(await asyncio.gather(*(roster_pair(a, c, rounds) for a, c in clients)))
        elapsed = time.monotonic() - started
        out["roster us"] = (sum(cpu_seconds(p) for p in bench.pids(True)) - before) / done * 1e6
        out["roster /s"] = done / elapsed
        await close_pairs(clients)
        clients = []
        for index in range(pairs):
            sender = await ClusterClient(f"ds{index}", tag).connect(NODES["n1"], sm=True)
            receiver = await ClusterClient(f"dr{index}", tag).connect(NODES["n1"])
            clients.append((sender, receiver))
        await asyncio.gather(*(sm_pair(s, r, 20) for s, r in clients))  # warm-up
        before, started = sum(cpu_seconds(p) for p in bench.pids(True)), time.monotonic()
        done = sum(await asyncio.gather(*(sm_pair(s, r, messages // pairs) for s, r in clients)))
        elapsed = time.monotonic() - started
        out["sm us"] = (sum(cpu_seconds(p) for p in bench.pids(True)) - before) / done * 1e6
        out["sm /s"] = done / elapsed
        out["sm ack ms"] = pairs * WINDOW / out["sm /s"] * 1e3
        await close_pairs(clients)
    finally:
        server.kill()
        del bench.nodes[label]
    return out


async def failover(bench: Bench) -> tuple[float, float]:
    sender = await ClusterClient("fs", "x").connect(NODES["n1"])
    receiver = await ClusterClient("fr", "x").connect(NODES["n3"])
    await asyncio.sleep(1.0)
    stop = asyncio.Event()

    async def keep_sending() -> None:
        number = 0
        while not stop.is_set():
            await sender.write(f"<message to='fr@{DOMAIN}' type='chat'><body>f {number} {time.monotonic()}"
                               f"</body></message>")
            number += 1
            await asyncio.sleep(0.02)

    task = asyncio.ensure_future(keep_sending())
    await asyncio.sleep(0.5)
    bench.nodes["n3"].kill()
    killed = time.monotonic()
    receiver.drop()
    target = next(address for address, _ in await srv_targets() if address != NODES["n3"])
    again = await ClusterClient("fr", "x").connect(target)
    logged_in = time.monotonic() - killed
    await again.wait(lambda: any(float(b.split()[2]) > killed for b in again.bodies() if b.startswith("f ")),
                     timeout=30, what="a message after the kill")
    first = time.monotonic()
    stop.set()
    await task
    await sender.close()
    await again.close()
    return first - killed, logged_in


SIP_WINDOW = 10


def sip_send(server: str, user: str, count: int) -> None:
    """``count`` MESSAGEs from a foreign domain (no challenge) over UDP, SIP_WINDOW in flight."""
    import socket

    from peerage.sip.message import parse_datagram

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.16.35", 0))
    sock.settimeout(10)
    port = sock.getsockname()[1]
    outstanding: set[str] = set()
    sent = done = 0
    while done < count:
        while sent < count and len(outstanding) < SIP_WINDOW:
            call_id = f"b{sent}-{secrets.token_hex(4)}"
            body = f"m {sent}"
            sock.sendto((f"MESSAGE sip:{user}@{DOMAIN} SIP/2.0\r\n"
                         f"Via: SIP/2.0/UDP 127.0.16.35:{port};branch=z9hG4bK-{call_id};rport\r\n"
                         "Max-Forwards: 70\r\n"
                         f"From: <sip:bench@visitor.test>;tag={call_id}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
                         f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}").encode(), (server, 5060))
            outstanding.add(call_id)
            sent += 1
        response = parse_datagram(sock.recv(65535))
        if response.status is not None and response.status >= 200 and response.call_id in outstanding:
            assert response.status == 200, response.status
            outstanding.discard(response.call_id)
            done += 1
    sock.close()


def sip_answer(ua: FlowUA, count: int) -> None:
    for _ in range(count):
        ua.answer_message()


async def sip_round(ua: FlowUA, user: str, count: int) -> None:
    answering = asyncio.ensure_future(asyncio.to_thread(sip_answer, ua, count))
    await asyncio.to_thread(sip_send, NODES["n1"], user, count)
    await answering


async def sip_cpu_per_message(bench: Bench, messages: int) -> dict[str, float]:
    out = {}
    for label, holder in (("within node 1", "n1"), ("node 1 -> node 2", "n2")):
        user = f"sip{holder}"
        ua = FlowUA("127.0.16.36", NODES[holder], user, DOMAIN, PASSWORD)
        ua.register()
        await asyncio.sleep(1.0)  # the registration reaches node 1 within milliseconds
        await sip_round(ua, user, 50)  # warm-up (connections, caches)
        before = sum(cpu_seconds(p) for p in bench.pids())
        started = time.monotonic()
        await sip_round(ua, user, messages)
        elapsed = time.monotonic() - started
        used = sum(cpu_seconds(p) for p in bench.pids()) - before
        out[label] = used / messages * 1e6
        out[label + " msg/s"] = messages / elapsed
        ua.close()
    return out


async def main_async(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="peerage-bench-cluster-"))
    pg = Postgres()
    nats = NatsServer(workdir)
    dns = LocalDNS(DNS_ADDRESS, 53)
    dns.add_zone(DOMAIN)
    for index, (node, address) in enumerate(NODES.items()):
        dns.add_a(f"{node}.{DOMAIN}", address)
        dns.add_srv(f"_xmpp-client._tcp.{DOMAIN}", 10, 10 + index, 5222, f"{node}.{DOMAIN}")
    lines: list[str] = []
    bench: Bench | None = None
    try:
        name = f"bench_{secrets.token_hex(3)}"
        await _create_database(pg.url, name)
        url = pg.url.rsplit("/", 1)[0] + "/" + name
        nats.start()
        dns.start()
        bench = Bench(workdir, url, nats, dns)
        bench.pg = pg
        bench.nodes["n1"].add_user("fs@" + DOMAIN, PASSWORD)
        await _add_users(url, [f"{p}{i}@{DOMAIN}" for p in ("s", "r") for i in range(args.pairs)]
                         + [f"{p}{i}@{DOMAIN}" for p in ("ea", "eb", "ds", "dr") for i in range(args.single_pairs)]
                         + [f"fr@{DOMAIN}", f"sipn1@{DOMAIN}", f"sipn2@{DOMAIN}"])
        load_start = loadavg()
        # (b) one node on CPU 0.
        n1 = bench.nodes["n1"].start()
        assert n1.process is not None
        pin(n1.process.pid, 0)
        one, one_cpu = await throughput(bench, args.pairs, args.seconds, ["n1"], ["n1"])
        quotas = [float(f) for f in args.quota.split(",")] if args.quota else []
        quota = Quota()
        #: (b') per quota, per step ("one", "local", "cross"): one (rate, CPU, throttled) per repetition.
        capped: dict[float, dict[str, list[tuple[float, dict[str, float], str]]]] = {}
        # Then two nodes, on CPUs 0 and 1.
        n2 = bench.nodes["n2"].start()
        assert n2.process is not None
        pin(n2.process.pid, 1)
        await asyncio.sleep(2)
        two_local, local_cpu = await throughput(bench, args.pairs, args.seconds, ["n1", "n2"], ["n1", "n2"])
        two_cross, cross_cpu = await throughput(bench, args.pairs, args.seconds, ["n1", "n2"], ["n2", "n1"])
        try:
            # The one-node and two-node steps interleaved, --repeats times: the machine's speed drifts
            # by more than the 10 % the target turns on, and a one-node step taken first, alone, is
            # compared with two-node steps taken minutes later. In the one-node steps node 2 runs, idle
            # (no sessions; its heartbeats only), under the same quota.
            quota_seconds = args.quota_seconds or args.seconds
            for fraction in quotas:
                quota.apply("n1", n1.process.pid, fraction)
                quota.apply("n2", n2.process.pid, fraction)
                steps: dict[str, list[tuple[float, dict[str, float], str]]] = {"one": [], "local": [], "cross": []}
                for _ in range(args.repeats):
                    for key, senders, receivers in (("one", ["n1"], ["n1"]), ("local", ["n1", "n2"], ["n1", "n2"]),
                                                    ("cross", ["n1", "n2"], ["n2", "n1"])):
                        before = quota.stats()
                        rate, used = await throughput(bench, args.pairs, quota_seconds, senders, receivers,
                                                      args.quota_window, args.warm_up)
                        steps[key].append((rate, used, throttled(before, quota.stats())))
                capped[fraction] = steps
        finally:
            quota.release([n1.process.pid, n2.process.pid])
        # (a) CPU per message, unpinned.
        for server in (n1, n2):
            assert server.process is not None
            subprocess.run(["taskset", "-a", "-p", "-c", "0,1", str(server.process.pid)], capture_output=True)
        cpu = await cpu_per_message(bench, args.messages, args.pairs)
        sip = await sip_cpu_per_message(bench, args.sip_messages)
        # (c) failover with three nodes.
        bench.nodes["n3"].start()
        await asyncio.sleep(2)
        routed, logged_in = await failover(bench)
        for server in bench.nodes.values():
            if server.running:
                server.kill()
        # (e) and (f): one node with archiving, with and without [cluster].
        single = {}
        for label, cluster in (("cluster", True), ("solo", False)):
            single[label] = await single_node(bench, label, cluster, args.single_pairs, args.roster_rounds,
                                              args.sm_messages)
        load_end = loadavg()
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        ratio = cpu["node 1 -> node 2"] / cpu["within node 1"]

        def shares(used: dict[str, float]) -> str:
            return f"{used['nodes']:.2f} / {used['nats']:.2f} / {used['pg']:.2f} / {used['load']:.2f}"

        lines += [
            f"## Cluster (bench/cluster/run.py), {when}",
            "",
            "Three peerage nodes (XMPP with archive off, and SIP) over one PostgreSQL 15 and one nats-server 2.9, on",
            f"127.0.16.1-3; clients over TCP+STARTTLS from one Python load process. {machine()}. The machine is",
            f"shared with other engineers' test runs: load average {load_start} at the start, {load_end} at the end.",
            f"Run as `{' '.join(sys.argv[1:]) or '(defaults)'}`.",
            "",
            f"(a) CPU per chat message ({args.messages} messages, {args.pairs} pairs, {WINDOW} in flight per pair;",
            "CPU of every node plus nats-server):",
            "",
            "| path | us CPU/message | messages/s |",
            "| --- | ---: | ---: |",
            f"| within node 1 | {cpu['within node 1']:.0f} | {cpu['within node 1 msg/s']:.0f} |",
            f"| node 1 -> node 2 (NATS) | {cpu['node 1 -> node 2']:.0f} | {cpu['node 1 -> node 2 msg/s']:.0f} |",
            "",
            f"Between nodes / within one node: {ratio:.2f}x (target <= 2x). Stanzas per NATS message node 1 -> 2:"
            f" {cpu.get('per batch', 0):.1f}.",
            "",
            f"(b) messages/s, {args.pairs} pairs, {args.seconds:.0f} s each. Cores: the node(s) pinned with taskset"
            " as shown; nats-server, PostgreSQL and the load tool unpinned on the same two CPUs. CPU used during"
            " the step, in cores (1.00 = one CPU busy for the whole step): nodes / nats-server / PostgreSQL /"
            " load tool:",
            "",
            "| nodes | pairs | messages/s | CPU: nodes / nats / pg / load |",
            "| --- | --- | ---: | --- |",
            f"| one node on CPU 0 | within the node | {one:.0f} | {shares(one_cpu)} |",
            f"| two nodes on CPUs 0 and 1 | each pair within one node | {two_local:.0f} ({two_local / one:.2f}x) "
            f"| {shares(local_cpu)} |",
            f"| two nodes on CPUs 0 and 1 | every pair across the nodes | {two_cross:.0f} ({two_cross / one:.2f}x) "
            f"| {shares(cross_cpu)} |",
            "",
            f"Messages per node CPU-second: one node {one / max(one_cpu['nodes'], 1e-9):.0f}, two nodes"
            f" {two_local / max(local_cpu['nodes'], 1e-9):.0f} (pairs within) and"
            f" {two_cross / max(cross_cpu['nodes'], 1e-9):.0f} (pairs across). Target >= 1.7x.",
            "",
        ]
        if capped:
            quota_seconds = args.quota_seconds or args.seconds
            lines += [
                "(b') the same steps with each node held to a CPU quota (a cgroup v1 cpu group per node,",
                f"cpu.cfs_period_us = {QUOTA_PERIOD_US}, cpu.cfs_quota_us = quota x period; pinned as in (b)),",
                "the same quota for the one node and for each of the two, so nats-server, PostgreSQL and the load",
                "tool (unpinned, on the same two CPUs, outside the quota groups: their CPU is not counted in the",
                f"nodes' figures) have the rest of the two CPUs; {args.pairs} pairs, {args.quota_window} messages in",
                f"flight per pair; {quota_seconds:.0f} s counted per step after {args.warm_up:.0f} s of the same traffic",
                "not counted, once every node is idle after the logins. The one-node and two-node steps are",
                f"interleaved, {args.repeats} repetition(s) of (one node, two nodes pairs within, two nodes pairs",
                "across); in the one-node steps node 2 runs idle under the same quota. Throttled: share of the",
                "step's CFS periods in which the node used up its quota (near 100 %: the node, not the load, set",
                "the rate). Ratio: each two-node step against the one-node step of the same repetition.",
                "",
                "| quota per node | nodes | pairs | messages/s per repetition | median (min-max) | ratio per "
                "repetition | median ratio | CPU (median step): nodes / nats / pg / load | throttled (median step) |",
                "| ---: | --- | --- | --- | --- | --- | ---: | --- | --- |",
            ]
            for fraction, steps in capped.items():
                bases = [rate for rate, _, _ in steps["one"]]
                for key, what, pairs_are in (("one", "one node on CPU 0", "within the node"),
                                             ("local", "two nodes on CPUs 0 and 1", "each pair within one node"),
                                             ("cross", "two nodes on CPUs 0 and 1", "every pair across the nodes")):
                    rates = [rate for rate, _, _ in steps[key]]
                    middle = sorted(range(len(rates)), key=lambda i: rates[i])[len(rates) // 2]
                    _, used, held = steps[key][middle]
                    ratios = [] if key == "one" else [rate / base for rate, base in zip(rates, bases, strict=True)]
                    lines.append(
                        f"| {fraction:.2f} CPU | {what} | {pairs_are} | {', '.join(f'{r:.0f}' for r in rates)} "
                        f"| {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) "
                        f"| {', '.join(f'{r:.2f}x' for r in ratios)} "
                        f"| {f'{statistics.median(ratios):.2f}x' if ratios else ''} | {shares(used)} | {held} |")
            lines += ["", "Target >= 1.7x (two nodes against one, each node with the same quota).", ""]
        lines += [
            f"(d) SIP: CPU per MESSAGE ({args.sip_messages} over UDP to node 1 from one sender, {SIP_WINDOW} in flight;",
            "the callee registered over TCP with outbound; CPU of every node plus nats-server):",
            "",
            "| callee's flow | us CPU/MESSAGE | MESSAGEs/s |",
            "| --- | ---: | ---: |",
            f"| on node 1 | {sip['within node 1']:.0f} | {sip['within node 1 msg/s']:.0f} |",
            f"| on node 2 (node 1 -> NATS -> node 2 -> flow) | {sip['node 1 -> node 2']:.0f} "
            f"| {sip['node 1 -> node 2 msg/s']:.0f} |",
            "",
            f"Between nodes / within one node: {sip['node 1 -> node 2'] / sip['within node 1']:.2f}x (target <= 2.5x).",
            "",
            "(c) kill -9 of the receiver's node: its client reconnected and logged in to the next SRV target in",
            f"{logged_in:.2f} s; the first message to its bare JID reached it {routed:.2f} s after the kill",
            "(target <= 5 s). The client saw the connection reset at once (a killed process; a crashed machine",
            "would leave it to the client's own timeout).",
            "",
            f"(e) roster changes and (f) XEP-0198 acks with archiving, one node (archive on), {args.single_pairs}"
            " pairs of users of that node; CPU of the node, nats-server and PostgreSQL:",
            "",
            "| measure | with [cluster] | without | cluster / without |",
            "| --- | ---: | ---: | ---: |",
        ]
        c, o = single["cluster"], single["solo"]
        for key, what in (("roster us", f"(e) us CPU per subscription stanza ({args.roster_rounds} rounds of 3)"),
                          ("roster /s", "(e) subscription stanzas/s"),
                          ("sm us", f"(f) us CPU per message, sender using XEP-0198 ({args.sm_messages})"),
                          ("sm /s", "(f) messages/s"),
                          ("sm ack ms", f"(f) mean ms to the ack ({WINDOW} unacked per sender)")):
            lines.append(f"| {what} | {c[key]:.0f} | {o[key]:.0f} | {c[key] / o[key]:.2f}x |")
        lines += [
            "",
            "With [cluster], each subscription stanza is decided under the account's PostgreSQL advisory lock",
            "(cluster/roster.py: one pooled connection, five round trips per decision) and each roster write is",
            "announced on NATS; a message from a XEP-0198 sender is acknowledged only once its archive rows",
            "are written (Mam.durable(): the writer starts at once instead of after its batching delay).",
            "",
        ]
    finally:
        for server in bench.nodes.values() if bench is not None else []:
            if server.running:
                server.kill()
        nats.stop()
        dns.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sip-messages", type=int, default=2000)
    parser.add_argument("--single-pairs", type=int, default=10)
    parser.add_argument("--roster-rounds", type=int, default=20)
    parser.add_argument("--sm-messages", type=int, default=2000)
    parser.add_argument("--quota", default="", help="(b') CPU quota per node, fractions of a CPU, comma-separated")
    parser.add_argument("--quota-window", type=int, default=50, help="(b') messages in flight per pair")
    parser.add_argument("--quota-seconds", type=float, default=0.0,
                        help="(b') seconds counted per step (default: --seconds)")
    parser.add_argument("--repeats", type=int, default=1, help="(b') interleaved repetitions of the three steps")
    parser.add_argument("--warm-up", type=float, default=WARM_UP, help="(b') seconds of traffic not counted per step")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    text = asyncio.run(main_async(args))
    print(text)
    if not args.no_write and text:
        with open(ROOT / "bench" / "RESULTS.md", "a") as results:
            results.write("\n" + text)


if __name__ == "__main__":
    main()
