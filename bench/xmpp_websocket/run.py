#!/usr/bin/env python3
"""bench/xmpp_websocket: chat messages per second over XMPP WebSocket (RFC 7395) and over TCP, peerage
beside Debian's Prosody (mod_websocket), same load, one run.

Four configurations, measured in interleaved rounds (medians reported): peerage over TCP (STARTTLS on
5222), peerage over WebSocket (``wss://.../xmpp-websocket`` on its web service), Prosody over TCP,
Prosody over WebSocket (mod_websocket on its HTTPS port). Each server is pinned to CPU 0, the load
tool to CPU 1. N sender/receiver pairs of logged-in clients (SCRAM-SHA-256, bind, presence) run a
closed loop with a fixed window of messages in flight per pair; a receiver answers each message it
sees with the next one. The load tool writes one stanza per write (one WebSocket message per stanza,
as browsers do), and every receiver checks every delivery: the sender, the per-pair sequence number
(lost, duplicated and reordered messages are counted), and the latency of each message.

The WebSocket client is a small raw one (HTTP upgrade, then frames), as light as the raw TCP client
of bench/xmpp_c2s, so the load tool's own cost is alike on both transports (during the load both scan
their received bytes for whole messages with the same regular expression). Its frames are masked
with the all-zero key (legal on the wire; the server does the same unmasking work for any key).
Both servers: the same P-256 certificate, TLS on both transports, SCRAM keys with 10000 iterations,
no archive, the modules of bench/xmpp_c2s plus Prosody's websocket module.

Usage: python3 bench/xmpp_websocket/run.py [--pairs 50] [--window 8] [--seconds 10] [--rounds 3]
Appends a section to bench/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import re
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
from bench.xmpp_c2s.run import CREATE_ACCOUNTS, Conn, client_context  # noqa: E402
from bench.xmpp_common import (  # noqa: E402
    CLIENT_CPU,
    DOMAIN,
    PASSWORD,
    SERVER_CPU,
    LoadWindow,
    PairCheck,
    ProsodyAnchor,
    SendLoop,
    Server,
    check_figures,
    latency_figures,
    tally_pair,
    usernames,
    wait_port,
    whole_stanza_reads,
)

PEERAGE_ADDRESS = "127.0.13.200"
PROSODY_ADDRESS = "127.0.13.201"
C2S_PORT = 5222  # bench/xmpp_c2s's Conn logs in on this port
HTTPS_PORT = 13443
STEP_TIMEOUT = 60.0
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>".encode()
_salted: dict[tuple[bytes, int], bytes] = {}


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------

class PeerageWs(Server):
    name = "peerage"
    address = PEERAGE_ADDRESS

    def setup(self, users: list[str], cert: Path, key: Path) -> None:
        config = self.workdir / "peerage.toml"
        config.write_text(f"""
[server]
data_dir = "{self.workdir / 'data'}"
log_level = "warning"

[limits]
connections_per_ip = 100000
auth_failures_per_ip = 100000
idle_timeout = 36000.0

[xmpp]
c2s_listen = ["{self.address}:{C2S_PORT}"]
c2s_direct_tls_listen = []
s2s_listen = []
s2s_direct_tls_listen = []
archive_enabled = false

[sip]
enabled = false

[smtp]
enabled = false

[imap]
enabled = false

[web]
https_listen = ["{self.address}:{HTTPS_PORT}"]
http_listen = []

[[domain]]
name = "{DOMAIN}"
cert = "{cert}"
key = "{key}"
""")
        self.config = config
        subprocess.run([sys.executable, "-c", CREATE_ACCOUNTS, str(config), str(len(users))], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), cwd=self.workdir, timeout=600)

    def start(self) -> None:
        log = self.workdir / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "peerage", "--config", str(self.config),
                 "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        wait_port(self.address, C2S_PORT, self.process, log)
        wait_port(self.address, HTTPS_PORT, self.process, log)


class ProsodyWs(ProsodyAnchor):
    """Prosody with mod_websocket on its HTTPS port (``xmpp_common.ProsodyAnchor``)."""

    address = PROSODY_ADDRESS
    extra_modules = ("websocket",)
    https_port = HTTPS_PORT


# ------------------------------------------------------------------------------------------------
# Load tool: a raw RFC 7395 client beside bench/xmpp_c2s's raw TCP client
# ------------------------------------------------------------------------------------------------

def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 §5.3) with the all-zero masking key."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class WsConn:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = b""
        self.jid = ""

    def send(self, payload: bytes) -> None:
        assert self.writer is not None
        self.writer.write(client_frame(payload))

    def parse(self) -> list[bytes]:
        """The payloads of the complete text frames in the buffer (answering pings)."""
        out: list[bytes] = []
        buffer = self.buffer
        offset = 0
        while len(buffer) - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            size = second & 0x7F
            start = offset + 2
            if size == 126:
                if len(buffer) - offset < 4:
                    break
                size = int.from_bytes(buffer[offset + 2:offset + 4], "big")
                start = offset + 4
            elif size == 127:
                if len(buffer) - offset < 10:
                    break
                size = int.from_bytes(buffer[offset + 2:offset + 10], "big")
                start = offset + 10
            if len(buffer) < start + size:
                break
            payload = buffer[start:start + size]
            offset = start + size
            opcode = first & 0x0F
            if opcode == 0x1:
                out.append(payload)
            elif opcode == 0x9 and self.writer is not None:
                self.writer.write(client_frame(payload, 0xA))
            elif opcode == 0x8:
                raise ConnectionError(f"server closed the WebSocket: {payload!r}")
        self.buffer = buffer[offset:]
        return out

    async def _frames(self) -> list[bytes]:
        assert self.reader is not None
        while True:
            chunk = await asyncio.wait_for(self.reader.read(262144), STEP_TIMEOUT)
            if not chunk:
                raise ConnectionError("WebSocket connection closed")
            self.buffer += chunk
            payloads = self.parse()
            if payloads:
                return payloads

    async def until(self, marker: bytes) -> bytes:
        while True:
            for payload in await self._frames():
                if marker in payload:
                    return payload

    def whole_reads(self) -> Any:
        """During the load: the bytes up to the last complete message, frame heads and all, as the TCP
        client reads its stream (the 2-4 byte heads between stanzas do not disturb MESSAGE_RE, and
        neither server sends control frames within a run), so both clients cost the same per message."""
        assert self.reader is not None
        return whole_stanza_reads(self.reader, self.buffer)

    async def login(self, address: str, user: str, resource: str, ctx: Any) -> None:
        self.reader, self.writer = await asyncio.open_connection(address, HTTPS_PORT, ssl=ctx, server_hostname=DOMAIN)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET /xmpp-websocket HTTP/1.1\r\nHost: {address}:{HTTPS_PORT}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"WebSocket refused: {head!r}")
        self.send(OPEN)
        await self.until(b"features")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        self.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
                  + base64.b64encode(("n,," + first_bare).encode()) + b"</auth>")
        challenge = await self.until(b"challenge")
        server_first = base64.b64decode(challenge[challenge.index(b">") + 1: challenge.rindex(b"<")]).decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        salted = _salted.get((salt, iterations))
        if salted is None:
            salted = _salted[(salt, iterations)] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
        self.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                  + base64.b64encode(f"{without_proof},p={proof}".encode()) + b"</response>")
        answer = await self.until(b"urn:ietf:params:xml:ns:xmpp-sasl")
        if b"<success" not in answer:
            raise RuntimeError(f"authentication failed: {answer!r}")
        self.send(OPEN)
        await self.until(b"features")
        self.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>".encode())
        bound = await self.until(b"</jid>")
        match = re.search(rb"<jid>([^<]+)</jid>", bound)
        if not match:
            raise RuntimeError(f"bind failed: {bound!r}")
        self.jid = match.group(1).decode()
        self.send(b"<presence xmlns='jabber:client'/>")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


class TcpConn(Conn):
    """bench/xmpp_c2s's raw TCP client with the WebSocket client's two calls."""

    def send(self, payload: bytes) -> None:
        assert self.writer is not None
        self.writer.write(payload)

    def whole_reads(self) -> Any:
        assert self.reader is not None
        return whole_stanza_reads(self.reader, self.buffer)


async def measure(server: Server, transport: str, users: list[str], pairs: int, window: int, warmup: float,
                  seconds: float) -> dict[str, float]:
    ctx = client_context()
    kind = WsConn if transport == "ws" else TcpConn
    senders: list[Any] = []
    receivers: list[Any] = []
    for index in range(pairs):
        sender, receiver = kind(), kind()
        await sender.login(server.address, users[2 * index], "send", ctx)
        await receiver.login(server.address, users[2 * index + 1], "recv", ctx)
        senders.append(sender)
        receivers.append(receiver)
    await asyncio.sleep(0.5)
    window_ = LoadWindow()
    checks = [PairCheck() for _ in range(pairs)]
    namespace = " xmlns='jabber:client'" if transport == "ws" else ""

    def stanza(index: int, sequence: int, now_ns: int) -> bytes:
        return (f"<message{namespace} to='{receivers[index].jid}' type='chat' id='m{sequence}'>"
                f"<body>{sequence} {now_ns}</body></message>").encode()

    loop = SendLoop(pairs, stanza, lambda index, data: senders[index].send(data))

    def receiver_loop(index: int) -> Any:
        read = receivers[index].whole_reads()
        return lambda: tally_pair(window_, checks[index], read, senders[index].jid, lambda: loop.send(index))

    elapsed, cpu_share = await window_.run(
        server, [receiver_loop(i) for i in range(pairs)], lambda: loop.prime(window), warmup, seconds,
        lambda: loop.drained(checks), 2.0)
    for conn in senders + receivers:
        conn.close()
    received = window_.counted
    lost = loop.lost(checks)
    figures = {
        "msgs_per_s": received / elapsed,
        **latency_figures(window_.latencies),
        "server_cpu_share": cpu_share,
        "msgs_per_cpu_s": received / elapsed / cpu_share if cpu_share > 0 else float("nan"),
        "lost": float(lost),
    }
    figures.update(check_figures(checks))
    figures["receiver_errors"] = float(len(window_.errors))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=8, help="messages in flight per pair")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--no-prosody", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        sys.exit("needs taskset (util-linux)")
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    users = usernames(max(2 * args.pairs, 50))
    workdir = Path(tempfile.mkdtemp(prefix="bench-xmpp-ws-"))
    from peerage.net.tls import generate_self_signed

    cert, key = workdir / "cert.pem", workdir / "key.pem"
    generate_self_signed(DOMAIN, cert, key)
    key.chmod(0o644)
    servers: list[Server] = [PeerageWs(workdir / "peerage")]
    if not args.no_prosody and shutil.which("prosody"):
        servers.append(ProsodyWs(workdir / "prosody"))
    for server in servers:
        server.workdir.mkdir(parents=True)
        server.setup(users, cert, key)
    started = time.time()
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for server in servers:
            server.start()
        for round_index in range(args.rounds):
            for server in servers:
                for transport in ("tcp", "ws"):
                    label = f"{server.name} {transport}"
                    print(f"  {label}", flush=True)
                    figures = asyncio.run(measure(server, transport, users, args.pairs, args.window, args.warmup,
                                                  args.seconds))
                    for key_, value in figures.items():
                        samples.setdefault(label, {}).setdefault(key_, []).append(value)
            print(f"round {round_index + 1}/{args.rounds}: "
                  + "; ".join(f"{label} {v['msgs_per_s'][-1]:.0f} msg/s" for label, v in samples.items()), flush=True)
    finally:
        for server in servers:
            server.stop()
    load_after = os.getloadavg()
    results = {label: {k: statistics.median(v) for k, v in figures.items()} for label, figures in samples.items()}
    # Totals over every round: a single lost or duplicated message must show.
    totals = {label: {k: sum(v) for k, v in figures.items() if k in ("lost", "duplicates", "reordered",
                                                                    "wrong_sender", "receiver_errors")}
              for label, figures in samples.items()}
    report = format_report(results, totals, args, load_before, load_after, started)
    print(report)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(report)
    shutil.rmtree(workdir, ignore_errors=True)


def format_report(results: dict[str, dict[str, float]], totals: dict[str, dict[str, float]],
                  args: argparse.Namespace, load_before: tuple[float, float, float],
                  load_after: tuple[float, float, float], started: float) -> str:
    lines = [
        "",
        f"## bench/xmpp_websocket — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}",
        "",
        f"Machine: {machine()}; load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} (a shared machine: other work ran "
        "during the run). Servers pinned to CPU 0, load tool to CPU 1.",
        f"Load: {args.pairs} sender/receiver pairs, {args.window} messages in flight per pair, one stanza per write "
        f"(one WebSocket message per stanza), {args.seconds:.0f} s counted after {args.warmup:.0f} s warm-up, "
        f"{args.rounds} interleaved rounds, medians; TLS on every transport (STARTTLS on TCP, HTTPS for wss:), "
        f"SCRAM-SHA-256. {args.note}".rstrip(),
        "",
        "| server, transport | msgs/s | p50 ms | p99 ms | server CPU | msgs per CPU-s | lost | dup | reordered | wrong sender | receiver errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results.items():
        t = totals[label]
        lines.append(f"| {label} | {r['msgs_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['server_cpu_share'] * 100:.0f}% | {r['msgs_per_cpu_s']:.0f} | {t['lost']:.0f} | "
                     f"{t['duplicates']:.0f} | {t['reordered']:.0f} | {t['wrong_sender']:.0f} | "
                     f"{t['receiver_errors']:.0f} |")
    lines.append("")
    for server in sorted({label.split()[0] for label in results}):
        tcp, ws = results.get(f"{server} tcp"), results.get(f"{server} ws")
        if tcp and ws:
            lines.append(f"- {server}: WebSocket / TCP = {ws['msgs_per_s'] / tcp['msgs_per_s']:.2f} in msgs/s, "
                         f"{ws['msgs_per_cpu_s'] / tcp['msgs_per_cpu_s']:.2f} in msgs per server CPU-second.")
    if "peerage ws" in results and "prosody ws" in results:
        p, q = results["peerage ws"], results["prosody ws"]
        lines.append(f"- WebSocket, peerage / Prosody = {p['msgs_per_s'] / q['msgs_per_s']:.2f} in msgs/s, "
                     f"{p['msgs_per_cpu_s'] / q['msgs_per_cpu_s']:.2f} in msgs per server CPU-second.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
