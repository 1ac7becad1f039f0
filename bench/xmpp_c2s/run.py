#!/usr/bin/env python3
"""bench/xmpp_c2s: peerage's client service side by side with Debian's Prosody, same load, one run.

Measures, for each server (pinned to CPU 0; the load tool runs on CPU 1):
  (a) chat messages per second across N sender/receiver pairs of logged-in clients (closed loop,
      a fixed window of messages in flight per pair), with p50/p99 delivery latency;
  (b) resident memory per idle authenticated connection, with IDLE connections open;
  (c) SCRAM-SHA-256 logins per second (TCP + STARTTLS + SASL + bind), CONCURRENCY at a time.

Both servers: STARTTLS with the same P-256 certificate, SCRAM-SHA-256 against stored salted keys
(Prosody internal_hashed with password_hash = "SHA-256", 10000 iterations; peerage's accounts table,
10000 iterations), no archiving (Prosody without mod_mam; peerage with archive_enabled = false), no
bandwidth limits (Prosody without mod_limits).

Usage: python3 bench/xmpp_c2s/run.py [--pairs 50] [--seconds 10] [--idle 5000] [--logins 1500]
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

DOMAIN = "bench.test"
PASSWORD = "bench password 1"
ITERATIONS = 10000
SALT = b"peeragebenchsalt"  # ASCII, so it can be written into Prosody's Lua account files as is
PEERAGE_ADDRESS = "127.0.1.200"
PROSODY_ADDRESS = "127.0.1.201"
PORT = 5222
SERVER_CPU = 0
CLIENT_CPU = 1
#: Resources per account for the idle-connection test (peerage allows 32 per account).
RESOURCES_PER_USER = 25
#: Upper bounds that keep every loop finite.
MAX_MESSAGES = 5_000_000
IDLE_SETTLE_SECONDS = 15.0
READY_TIMEOUT = 30.0
STEP_TIMEOUT = 30.0

HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          f" to='{DOMAIN}' version='1.0'>").encode()
BODY_RE = re.compile(rb"<body>(\d+) (\d+)</body>")


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------

def scram_keys(hash_name: str) -> tuple[bytes, bytes]:
    algorithm = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
    salted = hashlib.pbkdf2_hmac(algorithm, PASSWORD.encode(), SALT, ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    return hashlib.new(algorithm, client_key).digest(), hmac.digest(salted, b"Server Key", algorithm)


def usernames(count: int) -> list[str]:
    return [f"u{index}" for index in range(count)]


class Server:
    name = ""
    address = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        total = 0
        for pid in [self.pid, *child_pids(self.pid)]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_port(address: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {address}:{port}:\n{log.read_text()[-3000:]}")


class PeerageBench(Server):
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
c2s_listen = ["{self.address}:{PORT}"]
c2s_direct_tls_listen = ["{self.address}:5223"]
s2s_listen = []
s2s_direct_tls_listen = []
archive_enabled = false

[sip]
enabled = false

[smtp]
enabled = false

[imap]
enabled = false

[[domain]]
name = "{DOMAIN}"
cert = "{cert}"
key = "{key}"
""")
        self.config = config
        asyncio.run(self._create_accounts(users))

    async def _create_accounts(self, users: list[str]) -> None:
        from sqlalchemy import insert

        from peerage.config import load_config
        from peerage.identity.address import parse_address
        from peerage.identity.credentials import derive_credentials, scram_credential
        from peerage.store import Store
        from peerage.store.schema import accounts

        config = load_config(self.config)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.database_url)
        await store.migrate()
        # One derivation for all accounts (same password and salt): the rows are what `user add`
        # would write, without paying argon2 thousands of times.
        creds = derive_credentials(parse_address(f"u0@{DOMAIN}"), PASSWORD, iterations=ITERATIONS)
        sha1 = scram_credential("SHA-1", PASSWORD, SALT, ITERATIONS)
        sha256 = scram_credential("SHA-256", PASSWORD, SALT, ITERATIONS)
        rows = [{
            "address": f"{user}@{DOMAIN}", "domain": DOMAIN, "local": user,
            "scram_salt": SALT, "scram_iterations": ITERATIONS,
            "scram_sha1_stored_key": sha1.stored_key, "scram_sha1_server_key": sha1.server_key,
            "scram_sha256_stored_key": sha256.stored_key, "scram_sha256_server_key": sha256.server_key,
            "sip_ha1_md5": creds.sip_ha1["MD5"], "sip_ha1_sha256": creds.sip_ha1["SHA-256"],
            "argon2": creds.argon2,
        } for user in users]
        async with store.begin() as conn:
            await conn.execute(insert(accounts), rows)
        await store.close()

    def start(self) -> None:
        log = self.workdir / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "peerage", "--config", str(self.config),
                 "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
        wait_port(self.address, PORT, self.process, log)


class ProsodyBench(Server):
    name = "prosody"
    address = PROSODY_ADDRESS

    def setup(self, users: list[str], cert: Path, key: Path) -> None:
        data = self.workdir / "data"
        accounts = data / DOMAIN.replace(".", "%2e") / "accounts"
        accounts.mkdir(parents=True)
        stored, server = scram_keys("SHA-256")
        entry = (f'return {{\n\t["iteration_count"] = {ITERATIONS};\n\t["salt"] = "{SALT.decode()}";\n'
                 f'\t["stored_key"] = "{stored.hex()}";\n\t["server_key"] = "{server.hex()}";\n}};\n')
        for user in users:
            (accounts / f"{user}.dat").write_text(entry)
        self.config = self.workdir / "prosody.cfg.lua"
        self.config.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{self.workdir / 'prosody.pid'}"
data_path = "{data}"
plugin_paths = {{}}
interfaces = {{ "{self.address}" }}
c2s_ports = {{ {PORT} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
network_backend = "epoll"
-- Prosody's server_epoll keeps Nagle on by default; small stanzas then wait for delayed ACKs
-- (40 ms). peerage (asyncio) sets TCP_NODELAY, so Prosody gets the same.
network_settings = {{ nagle = false }}
log = {{ warn = "{self.workdir / 'prosody.log'}" }}
authentication = "internal_hashed"
password_hash = "SHA-256"
storage = "internal"
c2s_require_encryption = true
allow_registration = false
modules_enabled = {{
  "disco"; "roster"; "saslauth"; "tls"; "blocklist"; "carbons"; "private"; "smacks";
  "vcard_legacy"; "pep"; "csi_simple"; "ping"; "version";
}}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; "dialback" }}
ssl = {{ certificate = "{cert}"; key = "{key}" }}
VirtualHost "{DOMAIN}"
""")

    def start(self) -> None:
        log = self.workdir / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), "prosody", "--config", str(self.config), "-F"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_port(self.address, PORT, self.process, log)


# ------------------------------------------------------------------------------------------------
# Load tool: raw asyncio XMPP clients
# ------------------------------------------------------------------------------------------------

_salted: dict[tuple[bytes, int], bytes] = {}


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Conn:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = b""
        self.jid = ""

    async def until(self, marker: bytes) -> bytes:
        assert self.reader is not None
        while marker not in self.buffer:
            chunk = await asyncio.wait_for(self.reader.read(65536), STEP_TIMEOUT)
            if not chunk:
                raise ConnectionError(f"closed while waiting for {marker!r}: {self.buffer[-300:]!r}")
            self.buffer += chunk
        index = self.buffer.index(marker) + len(marker)
        data, self.buffer = self.buffer[:index], self.buffer[index:]
        return data

    async def login(self, address: str, user: str, resource: str, ctx: ssl.SSLContext) -> None:
        self.reader, self.writer = await asyncio.open_connection(address, PORT)
        w = self.writer
        w.write(HEADER)
        await self.until(b"</stream:features>")
        w.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.until(b"<proceed")
        await self.until(b"/>")
        await w.start_tls(ctx, server_hostname=DOMAIN)
        self.buffer = b""
        w.write(HEADER)
        await self.until(b"</stream:features>")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        w.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
                + base64.b64encode(("n,," + first_bare).encode()) + b"</auth>")
        challenge = await self.until(b"</challenge>")
        server_first = base64.b64decode(challenge[challenge.index(b">") + 1: challenge.rindex(b"<")]).decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        salted = _salted.get((salt, iterations))
        if salted is None:  # clients cache the salted password (RFC 5802 section 5.1 allows it)
            salted = _salted[(salt, iterations)] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
        w.write(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                + base64.b64encode(f"{without_proof},p={proof}".encode()) + b"</response>")
        answer = await self.until(b">")
        if b"<success" not in answer:
            raise RuntimeError(f"authentication failed: {answer!r} {self.buffer!r}")
        self.buffer = b""
        w.write(HEADER)
        await self.until(b"</stream:features>")
        w.write(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}"
                f"</resource></bind></iq>".encode())
        bound = await self.until(b"</iq>")
        match = re.search(rb"<jid>([^<]+)</jid>", bound)
        if not match:
            raise RuntimeError(f"bind failed: {bound!r}")
        self.jid = match.group(1).decode()
        w.write(b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq><presence/>")
        await self.until(b"id='s1'")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


async def measure_logins(address: str, users: list[str], total: int, concurrency: int) -> float:
    ctx = client_context()
    done = 0
    started = time.perf_counter()

    async def worker(index: int) -> None:
        nonlocal done
        while done < total:
            done += 1
            conn = Conn()
            try:
                await conn.login(address, users[(index + done) % len(users)], f"login{index}", ctx)
            finally:
                conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return total / (time.perf_counter() - started)


async def measure_messages(address: str, users: list[str], pairs: int, window: int, warmup: float,
                           seconds: float) -> tuple[float, float, float]:
    ctx = client_context()
    senders, receivers = [], []
    for index in range(pairs):
        sender, receiver = Conn(), Conn()
        await sender.login(address, users[2 * index], "send", ctx)
        await receiver.login(address, users[2 * index + 1], "recv", ctx)
        senders.append(sender)
        receivers.append(receiver)
    await asyncio.sleep(0.5)
    latencies: list[int] = []
    counting = False
    received = 0
    stop = False
    sequence = 0

    def message(to: str) -> bytes:
        nonlocal sequence
        sequence += 1
        return (f"<message to='{to}' type='chat' id='m{sequence}'><body>{sequence} {time.perf_counter_ns()}"
                f"</body></message>").encode()

    async def receive(index: int) -> None:
        nonlocal received
        receiver, sender = receivers[index], senders[index]
        assert receiver.reader is not None and sender.writer is not None
        pending = receiver.buffer
        while not stop:
            chunk = await receiver.reader.read(262144)
            if not chunk:
                raise ConnectionError("receiver connection closed")
            pending += chunk
            now = time.perf_counter_ns()
            matches = BODY_RE.findall(pending)
            cut = pending.rfind(b"</message>")
            pending = pending[cut + 10:] if cut >= 0 else pending
            if not matches:
                continue
            if counting:
                received += len(matches)
                latencies.extend(now - int(sent) for _, sent in matches[:4])
            if not stop and received < MAX_MESSAGES:
                sender.writer.write(b"".join(message(receiver.jid) for _ in matches))

    tasks = [asyncio.ensure_future(receive(i)) for i in range(pairs)]
    for index in range(pairs):
        assert senders[index].writer is not None
        senders[index].writer.write(b"".join(message(receivers[index].jid) for _ in range(window)))
    await asyncio.sleep(warmup)
    counting = True
    begin = time.perf_counter()
    await asyncio.sleep(seconds)
    counting = False
    elapsed = time.perf_counter() - begin
    stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in senders + receivers:
        conn.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] / 1e6 if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else float("nan")
    return received / elapsed, p50, p99


async def open_idle(address: str, users: list[str], count: int, concurrency: int = 50) -> list[Conn]:
    ctx = client_context()
    conns: list[Conn] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            conn = Conn()
            await conn.login(address, users[index // RESOURCES_PER_USER], f"idle{index % RESOURCES_PER_USER}", ctx)
            conns.append(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return conns


# ------------------------------------------------------------------------------------------------

def measure_idle_memory(server: Server, users: list[str], count: int) -> tuple[int, int]:
    async def idle() -> tuple[int, int]:
        warm = await open_idle(server.address, users, 200)
        for conn in warm:
            conn.close()
        await asyncio.sleep(2)
        before = server.rss_kib()
        conns = await open_idle(server.address, users, count)
        # Idle means idle: let both servers settle (peerage releases the parsers of connections
        # quiet for 5 s; Prosody's Lua GC runs incrementally).
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        after = server.rss_kib()
        for conn in conns:
            conn.close()
        return before, after

    return asyncio.run(idle())


def bench_all(servers: list[Server], users: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every measure on every server, interleaved round by round so that load from other work
    on the machine hits both alike; report the median of the rounds."""
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}

    def add(server: Server, key: str, value: float) -> None:
        samples[server.name].setdefault(key, []).append(value)

    for server in servers:
        server.start()
    try:
        for round_index in range(args.rounds):
            for server in servers:
                add(server, "logins_per_s",
                    asyncio.run(measure_logins(server.address, users, args.logins, args.concurrency)))
            for server in servers:
                cpu_before = server.cpu_seconds()
                wall_before = time.perf_counter()
                rate, p50, p99 = asyncio.run(measure_messages(server.address, users, args.pairs, args.window,
                                                              args.warmup, args.seconds))
                cpu_share = (server.cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
                add(server, "msgs_per_s", rate)
                add(server, "p50_ms", p50)
                add(server, "p99_ms", p99)
                add(server, "server_cpu_share", cpu_share)
                # Messages per second of server CPU time: what one fully used core would carry when
                # the load tool, not the server, is the limit.
                add(server, "msgs_per_cpu_s", rate / cpu_share if cpu_share > 0 else float("nan"))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
        for server in servers:
            before, after = measure_idle_memory(server, users, args.idle)
            add(server, "rss_before_mib", before / 1024)
            add(server, "rss_after_mib", after / 1024)
            add(server, "kib_per_conn", (after - before) / args.idle)
    finally:
        for server in servers:
            server.stop()
    return {name: {key: statistics.median(values) for key, values in measures.items()}
            for name, measures in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=8, help="messages in flight per pair")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--logins", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--only", choices=["peerage", "prosody"])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if shutil.which("prosody") is None or shutil.which("taskset") is None:
        sys.exit("needs Debian's prosody and taskset (util-linux)")
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    user_count = max(2 * args.pairs, (args.idle + RESOURCES_PER_USER - 1) // RESOURCES_PER_USER, 50)
    users = usernames(user_count)
    workdir = Path(tempfile.mkdtemp(prefix="bench-xmpp-c2s-"))
    from peerage.net.tls import generate_self_signed

    cert, key = workdir / "cert.pem", workdir / "key.pem"
    generate_self_signed(DOMAIN, cert, key)
    key.chmod(0o644)
    servers: list[Server] = []
    if args.only != "prosody":
        servers.append(PeerageBench(workdir / "peerage"))
    if args.only != "peerage":
        servers.append(ProsodyBench(workdir / "prosody"))
    for server in servers:
        server.workdir.mkdir(parents=True)
        server.setup(users, cert, key)
    results = bench_all(servers, users, args)
    for name, figures in results.items():
        print(name, {k: round(v, 3) for k, v in figures.items()}, flush=True)
    if len(results) < 2:
        return
    report = format_report(results, args)
    print(report)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(report)
    shutil.rmtree(workdir, ignore_errors=True)


def format_report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    p, q = results["peerage"], results["prosody"]

    def row(label: str, key: str, fmt: str, better: str) -> str:
        ratio = p[key] / q[key] if q[key] else float("nan")
        return f"| {label} | {p[key]:{fmt}} | {q[key]:{fmt}} | {ratio:.2f}x ({better}) |"

    lines = [
        "",
        f"## xmpp_c2s: peerage vs Prosody {prosody_version()} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Machine: {machine()}. Server pinned to CPU {SERVER_CPU}, load tool (Python, uvloop) on CPU {CLIENT_CPU}. "
        f"Medians of {args.rounds} interleaved rounds (peerage, then Prosody, in each round).",
        f"Load: {args.pairs} pairs, {args.window} messages in flight per pair, {args.seconds:.0f} s measured after "
        f"{args.warmup:.0f} s warm-up; {args.idle} idle connections (STARTTLS, SCRAM-SHA-256, bound, initial presence); "
        f"{args.logins} logins, {args.concurrency} at a time. Both with TLS, SCRAM-SHA-256 from stored keys, no archive.",
        "",
        "| measure | peerage | Prosody | ratio |",
        "|---|---|---|---|",
        row("messages/s", "msgs_per_s", ".0f", "higher is better; target >= 1.5x"),
        row("latency p50 (ms)", "p50_ms", ".2f", "lower is better"),
        row("latency p99 (ms)", "p99_ms", ".2f", "lower is better; target <= 1x"),
        row("server CPU share during messages", "server_cpu_share", ".2f", "1.0 = one core saturated"),
        row("messages per server CPU second", "msgs_per_cpu_s", ".0f", "higher is better"),
        row("RSS per idle connection (KiB)", "kib_per_conn", ".1f", "lower is better; target <= 20 kB and <= 1x"),
        row("SCRAM logins/s", "logins_per_s", ".0f", "higher is better"),
        "",
        f"RSS before/after idle connections: peerage {p['rss_before_mib']:.1f} -> {p['rss_after_mib']:.1f} MiB, "
        f"Prosody {q['rss_before_mib']:.1f} -> {q['rss_after_mib']:.1f} MiB.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def prosody_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    main()
