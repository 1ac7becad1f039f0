#!/usr/bin/env python3
"""bench/xmpp_muc: messages fanned out in a 100-occupant room, peerage beside Prosody's mod_muc.

Every server (pinned to CPU 0; the load tool runs on CPU 1) hosts ``conference.bench.test``; OCCUPANTS
logged-in clients (STARTTLS, SCRAM-SHA-256, bound, initial presence) join one room; SENDERS of them
send groupchat messages closed-loop, WINDOW in flight each (a sender sends its next message when the
room reflects one of its own back). Every occupant receives every message: one message in is
OCCUPANTS deliveries out.

The load tool writes one stanza per write, as interactive clients do. Every occupant parses whole
stanzas only, and checks, per sender, the sequence numbers it sees: lost (never arrived once the
senders stopped and the room drained), duplicated, reordered. Latency is from the send to each
delivery (every delivery counted). The server's CPU share is taken over the counted window only,
so "deliveries per server CPU second" tells a server limit from a load-tool limit.

Both servers: no room archive (Prosody's mod_muc keeps history in memory, as peerage does with
``archive_by_default = false``), no rate limits (peerage's [muc] message_rate raised; Prosody's
mod_muc has none without the community mod_muc_limits), history of 20 in memory.

Usage: python3 bench/xmpp_muc/run.py [--occupants 100] [--senders 10] [--window 4] [--seconds 10]
       [--rounds 3] [--no-write]
Appends a section to bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.machine import describe as machine  # noqa: E402
from bench.xmpp_common import LoadWindow, PairCheck, SendLoop, latency_figures, whole_stanza_reads  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_xmpp_c2s", ROOT / "bench" / "xmpp_c2s" / "run.py")
assert _spec is not None and _spec.loader is not None
c2s = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(c2s)

DOMAIN = c2s.DOMAIN
SERVICE = f"conference.{DOMAIN}"
ROOM = f"bench@{SERVICE}"
PEERAGE_ADDRESS = "127.0.11.200"
PROSODY_ADDRESS = "127.0.11.201"
#: A whole groupchat message of the load tool: the sender's nick, its sequence number and send time.
GROUPCHAT_RE = re.compile(rb"<message\b[^>]*?\bfrom=['\"]" + re.escape(ROOM.encode())
                          + rb"/u(\d+)['\"][^>]*>.*?<body>(\d+) (\d+)</body>.*?</message>", re.S)
SELF_PRESENCE_RE = re.compile(rb"code=['\"]110['\"]")
MUC_NS = "http://jabber.org/protocol/muc"


class PeerageMuc(c2s.PeerageBench):
    address = PEERAGE_ADDRESS

    def setup(self, users: list[str], cert: Path, key: Path) -> None:
        super().setup(users, cert, key)
        with open(self.config, "a") as config:
            config.write("""
[muc]
message_rate = 1000000.0
message_burst = 1000000.0
max_occupants = 1000
archive_by_default = false
""")


class ProsodyMuc(c2s.ProsodyBench):
    address = PROSODY_ADDRESS

    def extra_config(self) -> str:
        return f"""
Component "{SERVICE}" "muc"
    restrict_room_creation = false
    muc_room_locking = false
"""


async def measure_room(server: c2s.Server, users: list[str], occupants: int, senders: int, window: int,
                       warmup: float, seconds: float) -> dict[str, float]:
    ctx = c2s.client_context()
    conns = [c2s.Conn() for _ in range(occupants)]
    for index in range(0, occupants, 20):  # 20 logins at a time
        await asyncio.gather(*(conns[i].login(server.address, users[i], "muc", ctx)
                               for i in range(index, min(occupants, index + 20))))
    # The first occupant creates the room and makes it an instant room (XEP-0045 section 10.1.2).
    first = conns[0]
    assert first.writer is not None
    first.writer.write(f"<presence to='{ROOM}/u0'><x xmlns='{MUC_NS}'><history maxstanzas='0'/></x></presence>".encode())
    await until_re(first, SELF_PRESENCE_RE)
    first.writer.write(f"<iq type='set' id='cfg' to='{ROOM}'><query xmlns='{MUC_NS}#owner'>"
                       f"<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode())
    await until_re(first, re.compile(rb"id=['\"]cfg['\"]"))
    for index in range(1, occupants):
        conn = conns[index]
        assert conn.writer is not None
        conn.writer.write(f"<presence to='{ROOM}/u{index}'><x xmlns='{MUC_NS}'><history maxstanzas='0'/></x>"
                          "</presence>".encode())
        await until_re(conn, SELF_PRESENCE_RE)
    await asyncio.sleep(1.0)
    for conn in conns:
        conn.buffer = b""  # presence floods of the joins are not part of the count
    window_ = LoadWindow()
    checks = [[PairCheck() for _ in range(senders)] for _ in range(occupants)]

    def stanza(index: int, sequence: int, now_ns: int) -> bytes:
        return (f"<message to='{ROOM}' type='groupchat' id='m{sequence}'><body>"
                f"{sequence} {now_ns}</body></message>").encode()

    def write(index: int, data: bytes) -> None:
        writer = conns[index].writer
        assert writer is not None
        writer.write(data)

    loop = SendLoop(senders, stanza, write)
    sequences = loop.sequences

    def receiver_loop(index: int) -> Callable[[], Awaitable[None]]:
        async def receive() -> None:
            conn = conns[index]
            mine = checks[index]
            assert conn.reader is not None
            read = whole_stanza_reads(conn.reader, conn.buffer)
            while not window_.stop:
                complete = await read()
                now = time.perf_counter_ns()
                reflected = 0
                for nick, number, sent in GROUPCHAT_RE.findall(complete):
                    sender = int(nick)
                    if sender >= senders:
                        continue
                    if not mine[sender].saw(int(number)):
                        continue
                    if sender == index:
                        reflected += 1
                    if window_.counting:
                        mine[sender].counted += 1
                        window_.count(now, int(sent))
                if window_.replying and index < senders:
                    for _ in range(reflected):
                        loop.send(index)
        return receive

    # Let what is in flight arrive (bounded): whatever was sent and never came is lost.
    elapsed, cpu_share = await window_.run(
        server, [receiver_loop(i) for i in range(occupants)], lambda: loop.prime(window), warmup, seconds,
        lambda: all(checks[o][s].delivered >= sequences[s] for o in range(occupants) for s in range(senders)),
        15.0)
    for conn in conns:
        conn.close()
    delivered = window_.counted
    lost = sum(sequences[s] - checks[o][s].delivered for o in range(occupants) for s in range(senders))
    return {
        "deliveries_per_s": delivered / elapsed,
        "messages_per_s": delivered / elapsed / occupants,
        **latency_figures(window_.latencies),
        "server_cpu_share": cpu_share,
        "deliveries_per_cpu_s": delivered / elapsed / cpu_share if cpu_share > 0 else float("nan"),
        "lost": float(lost),
        "duplicates": float(sum(c.duplicates for row in checks for c in row)),
        "reordered": float(sum(c.reordered for row in checks for c in row)),
        "sent": float(sum(sequences)),
    }


async def until_re(conn: c2s.Conn, pattern: re.Pattern[bytes]) -> None:
    assert conn.reader is not None
    deadline = time.monotonic() + c2s.STEP_TIMEOUT
    while not pattern.search(conn.buffer):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {pattern.pattern!r}: {conn.buffer[-500:]!r}")
        chunk = await asyncio.wait_for(conn.reader.read(65536), c2s.STEP_TIMEOUT)
        if not chunk:
            raise ConnectionError(f"closed: {conn.buffer[-500:]!r}")
        conn.buffer += chunk
    conn.buffer = b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--occupants", type=int, default=100)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--window", type=int, default=4, help="messages in flight per sender")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        sys.exit("needs taskset (util-linux)")
    if shutil.which("prosody") is None:
        sys.exit("needs Debian's prosody (apt-get install prosody)")
    os.sched_setaffinity(0, {c2s.CLIENT_CPU})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    users = c2s.usernames(args.occupants)
    workdir = Path(tempfile.mkdtemp(prefix="bench-xmpp-muc-"))
    from peerage.net.tls import generate_self_signed

    cert, key = workdir / "cert.pem", workdir / "key.pem"
    generate_self_signed(DOMAIN, cert, key)
    key.chmod(0o644)
    servers = [PeerageMuc(workdir / "peerage"), ProsodyMuc(workdir / "prosody")]
    for server in servers:
        server.workdir.mkdir(parents=True)
        server.setup(users, cert, key)
    started = time.time()
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
    try:
        for server in servers:
            server.start()
        for round_index in range(args.rounds):
            for server in servers:
                print(f"  {server.name}: room fan-out", flush=True)
                figures = asyncio.run(measure_room(server, users, args.occupants, args.senders, args.window,
                                                   args.warmup, args.seconds))
                for name, value in figures.items():
                    samples[server.name].setdefault(name, []).append(value)
                print(f"    {server.name}: {figures['messages_per_s']:.0f} msg/s in, "
                      f"{figures['deliveries_per_s']:.0f} deliveries/s, CPU {figures['server_cpu_share']:.2f}, "
                      f"lost {figures['lost']:.0f}", flush=True)
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    finally:
        for server in servers:
            server.stop()
    load_after = os.getloadavg()
    results = {name: {key: statistics.median(values) for key, values in measures.items()}
               for name, measures in samples.items()}
    report = format_report(results, samples, args, load_before, load_after, started)
    print(report)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(report)
    shutil.rmtree(workdir, ignore_errors=True)


def format_report(results: dict[str, dict[str, float]], samples: dict[str, dict[str, list[float]]],
                  args: argparse.Namespace, load_before: tuple[float, float, float],
                  load_after: tuple[float, float, float], started: float) -> str:
    p, q = results["peerage"], results["prosody"]
    measures = [
        ("messages/s into the room", "messages_per_s", ".0f"),
        ("deliveries/s (messages x occupants)", "deliveries_per_s", ".0f"),
        ("latency p50 (ms, every delivery)", "p50_ms", ".1f"),
        ("latency p99 (ms, every delivery)", "p99_ms", ".1f"),
        ("server CPU share in the counted window", "server_cpu_share", ".2f"),
        ("deliveries per server CPU second", "deliveries_per_cpu_s", ".0f"),
    ]
    lines = [
        "",
        f"## xmpp_muc: a {args.occupants}-occupant room, peerage beside Prosody mod_muc "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))})",
        "",
        f"Machine: {machine()}. Load average before/after the run: "
        f"{' '.join(f'{x:.2f}' for x in load_before)} / {' '.join(f'{x:.2f}' for x in load_after)}; the machine "
        "was shared with other engineers' tests and builds during the run, so absolute figures are low and noisy. "
        f"Server pinned to CPU {c2s.SERVER_CPU}, load tool (Python, uvloop) on CPU {c2s.CLIENT_CPU}. "
        f"Medians of {args.rounds} interleaved rounds.",
        f"Load: {args.occupants} occupants (STARTTLS, SCRAM-SHA-256), {args.senders} of them sending closed-loop with "
        f"{args.window} messages in flight each, one stanza per write, {args.seconds:.0f} s counted after "
        f"{args.warmup:.0f} s warm-up; every occupant checks every sender's sequence. No room archive, no rate "
        f"limits, in-memory history. Prosody {c2s.package_version('prosody')} (mod_muc, muc_room_locking = false).",
        "",
        "| measure | peerage | prosody | peerage / prosody |",
        "|---|---|---|---|",
    ]
    for label, key, fmt in measures:
        lines.append(f"| {label} | {p[key]:{fmt}} | {q[key]:{fmt}} | "
                     + (f"{p[key] / q[key]:.2f}x" if q[key] else "-") + " |")
    lines.append("| lost / duplicated / reordered (sum over rounds) | "
                 + " | ".join(" / ".join(f"{sum(samples[n][k]):.0f}" for k in ("lost", "duplicates", "reordered"))
                              for n in ("peerage", "prosody")) + " | - |")
    lines.append("| messages sent (sum over rounds) | "
                 + " | ".join(f"{sum(samples[n]['sent']):.0f}" for n in ("peerage", "prosody")) + " | - |")
    lines += ["", "Per round, messages/s into the room: " + "; ".join(
        f"{n} " + ", ".join(f"{v:.0f}" for v in samples[n]["messages_per_s"]) for n in ("peerage", "prosody")) + "."]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
