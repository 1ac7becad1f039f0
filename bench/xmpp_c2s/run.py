#!/usr/bin/env python3
"""bench/xmpp_c2s: peerage's client service beside Debian's Prosody and ejabberd, same load, one run.

Measures, for each server (pinned to CPU 0; the load tool runs on CPU 1):
  (a) chat messages per second across N sender/receiver pairs of logged-in clients (closed loop,
      a fixed window of messages in flight per pair), with p50/p99 delivery latency of every message;
  (b) resident memory per idle authenticated connection: IDLE connections opened in two halves, the
      figure being the RSS growth over the second half (the first is the warm-up, see
      measure_idle_memory);
  (c) SCRAM-SHA-256 logins per second (TCP + STARTTLS + SASL + bind), CONCURRENCY at a time.

The load tool writes one stanza per write, as interactive clients do. Every receiver parses whole
stanzas only (a stanza split across reads is counted once, when complete), checks the sender and the
per-pair sequence number, and counts lost, duplicated and reordered messages. The server's CPU share
is taken over the counted window only.

Every server: STARTTLS with the same P-256 certificate, SCRAM-SHA-256 against stored salted keys
(Prosody internal_hashed with password_hash = "SHA-256", 10000 iterations; peerage's accounts table,
10000 iterations; ejabberd auth_password_format scram with auth_scram_hash sha256, its default
iterations), no archiving, no bandwidth limits. Prosody and ejabberd load the modules an operator
would enable for the features peerage serves here (roster, presence, offline, carbons, blocking,
private XML, vCard, stream management, CSI, ping, version, disco); see PROSODY_MODULES and
EJABBERD_MODULES.

With ``--baseline REV`` (a git revision) or ``--baseline-src DIR`` (a copy of an earlier ``src/``
tree), one more peerage runs from that tree in the same rounds, for a before/after figure.

Usage: python3 bench/xmpp_c2s/run.py [--pairs 50] [--seconds 10] [--idle 5000] [--logins 1500]
       [--baseline REV | --baseline-src DIR] [--no-ejabberd]
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
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.machine import describe as machine  # noqa: E402
from bench.xmpp_common import (  # noqa: E402
    CLIENT_CPU,
    DOMAIN,
    ITERATIONS,
    PASSWORD,
    PORT,
    PROSODY_MODULES,
    SALT,
    SERVER_CPU,
    STEP_TIMEOUT,
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

PEERAGE_ADDRESS = "127.0.1.200"
PROSODY_ADDRESS = "127.0.1.201"
BASELINE_ADDRESS = "127.0.1.202"
EJABBERD_ADDRESS = "127.0.1.203"
EJABBERD_API_PORT = 5280
ERL_LIBS = "/usr/lib/x86_64-linux-gnu"
#: Resources per account for the idle-connection test (peerage allows 32 per account).
RESOURCES_PER_USER = 25
#: An upper bound that keeps the idle-connection step finite.
IDLE_SETTLE_SECONDS = 15.0

HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          f" to='{DOMAIN}' version='1.0'>").encode()
EJABBERD_MODULES = ("mod_roster", "mod_disco", "mod_ping", "mod_version", "mod_carboncopy", "mod_blocking",
                    "mod_privacy", "mod_private", "mod_vcard", "mod_stream_mgmt", "mod_client_state",
                    "mod_offline", "mod_caps", "mod_pubsub")
#: Module options other than the defaults (PEP, as Prosody's mod_pep, is a pubsub plugin).
EJABBERD_OPTIONS = {"mod_pubsub": '{plugins: ["flat", "pep"]}'}


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------

class PeerageBench(Server):
    name = "peerage"
    address = PEERAGE_ADDRESS

    def __init__(self, workdir: Path, src: Path | None = None) -> None:
        super().__init__(workdir)
        #: The src/ tree this server runs (an earlier one for the baseline).
        self.src = src or ROOT / "src"
        if src is not None:
            self.name = "peerage before"
            self.address = BASELINE_ADDRESS

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

[web]
enabled = false

[[domain]]
name = "{DOMAIN}"
cert = "{cert}"
key = "{key}"
""")
        self.config = config
        # The accounts are written by the tree that serves them (its own schema and migrations).
        subprocess.run([sys.executable, "-c", CREATE_ACCOUNTS, str(config), str(len(users))], check=True,
                       env=dict(os.environ, PYTHONPATH=str(self.src)), cwd=self.workdir, timeout=600)

    def start(self) -> None:
        log = self.workdir / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "peerage", "--config", str(self.config),
                 "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                env=dict(os.environ, PYTHONPATH=str(self.src)))
        wait_port(self.address, PORT, self.process, log)


class ProsodyBench(ProsodyAnchor):
    address = PROSODY_ADDRESS


class EjabberdBench(Server):
    """Debian's ejabberd, run as ``ejabberdctl foreground`` would but without Erlang distribution;
    accounts are created through its HTTP API (mod_http_api, register allowed from loopback)."""

    name = "ejabberd"
    address = EJABBERD_ADDRESS

    def setup(self, users: list[str], cert: Path, key: Path) -> None:
        self.users = users
        modules = "\n".join(f"  {module}: {EJABBERD_OPTIONS.get(module, '{}')}" for module in EJABBERD_MODULES)
        self.config = self.workdir / "ejabberd.yml"
        self.config.write_text(f"""hosts: ["{DOMAIN}"]
loglevel: warning
log_rotate_count: 0
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha256
certfiles: ["{cert}", "{key}"]
c2s_ciphers: "HIGH:!aNULL"
max_fsm_queue: 100000
shaper: {{}}
shaper_rules: {{}}
acl:
  loopback:
    ip: 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
listen:
  - {{port: {PORT}, ip: "{self.address}", module: ejabberd_c2s, starttls: true, starttls_required: true,
     max_stanza_size: 262144}}
  - {{port: {EJABBERD_API_PORT}, ip: "{self.address}", module: ejabberd_http, request_handlers: {{/api: mod_http_api}}}}
api_permissions:
  "register from loopback":
    who: {{ip: 127.0.0.0/8}}
    what: ["register"]
modules:
{modules}
""")

    def start(self) -> None:
        import json
        import urllib.request

        log = self.workdir / "server.log"
        erl = shutil.which("erl") or "erl"
        env = dict(os.environ, EJABBERD_CONFIG_PATH=str(self.config), EJABBERD_LOG_PATH=str(log), ERL_LIBS=ERL_LIBS)
        with open(self.workdir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), erl, "-noinput", "+K", "true", "-mnesia", "dir",
                 f'"{self.workdir / "spool"}"', "-s", "ejabberd"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env, start_new_session=True)
        wait_port(self.address, EJABBERD_API_PORT, self.process, self.workdir / "stdout.log")
        wait_port(self.address, PORT, self.process, self.workdir / "stdout.log")
        if getattr(self, "_registered", False):
            return
        for user in self.users:
            body = json.dumps({"user": user, "host": DOMAIN, "password": PASSWORD}).encode()
            request = urllib.request.Request(f"http://{self.address}:{EJABBERD_API_PORT}/api/register", data=body,
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        self._registered = True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


#: Run by the interpreter of the tree under test: write the benchmark accounts as `user add` would,
#: with one derivation for all (same password and salt) instead of paying argon2 thousands of times.
CREATE_ACCOUNTS = f"""
import asyncio, sys
from sqlalchemy import insert
from peerage.config import load_config
from peerage.identity.address import parse_address
from peerage.identity.credentials import derive_credentials, scram_credential
from peerage.store import Store
from peerage.store.schema import accounts

async def main(path, count):
    config = load_config(path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.database_url)
    await store.migrate()
    creds = derive_credentials(parse_address("u0@{DOMAIN}"), {PASSWORD!r}, iterations={ITERATIONS})
    sha1 = scram_credential("SHA-1", {PASSWORD!r}, {SALT!r}, {ITERATIONS})
    sha256 = scram_credential("SHA-256", {PASSWORD!r}, {SALT!r}, {ITERATIONS})
    rows = [{{
        "address": f"u{{i}}@{DOMAIN}", "domain": "{DOMAIN}", "local": f"u{{i}}",
        "scram_salt": {SALT!r}, "scram_iterations": {ITERATIONS},
        "scram_sha1_stored_key": sha1.stored_key, "scram_sha1_server_key": sha1.server_key,
        "scram_sha256_stored_key": sha256.stored_key, "scram_sha256_server_key": sha256.server_key,
        "sip_ha1_md5": creds.sip_ha1["MD5"], "sip_ha1_sha256": creds.sip_ha1["SHA-256"],
        "argon2": creds.argon2,
    }} for i in range(count)]
    async with store.begin() as conn:
        await conn.execute(insert(accounts), rows)
    await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


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


async def measure_messages(server: Server, users: list[str], pairs: int, window: int, warmup: float,
                           seconds: float) -> dict[str, float]:
    address = server.address
    ctx = client_context()
    senders, receivers = [], []
    for index in range(pairs):
        sender, receiver = Conn(), Conn()
        await sender.login(address, users[2 * index], "send", ctx)
        await receiver.login(address, users[2 * index + 1], "recv", ctx)
        senders.append(sender)
        receivers.append(receiver)
    await asyncio.sleep(0.5)
    window_ = LoadWindow()
    checks = [PairCheck() for _ in range(pairs)]

    def stanza(index: int, sequence: int, now_ns: int) -> bytes:
        return (f"<message to='{receivers[index].jid}' type='chat' id='m{sequence}'><body>"
                f"{sequence} {now_ns}</body></message>").encode()

    def write(index: int, data: bytes) -> None:
        writer = senders[index].writer
        assert writer is not None
        writer.write(data)

    loop = SendLoop(pairs, stanza, write)

    def receiver_loop(index: int) -> Callable[[], Awaitable[None]]:
        receiver = receivers[index]
        assert receiver.reader is not None
        read = whole_stanza_reads(receiver.reader, receiver.buffer)
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
        # Messages per second of server CPU time: what one fully used core would carry when the
        # load tool, not the server, is the limit.
        "msgs_per_cpu_s": received / elapsed / cpu_share if cpu_share > 0 else float("nan"),
        "lost": float(lost),
    }
    figures.update(check_figures(checks))
    return figures


async def open_idle(address: str, users: list[str], count: int, first: int = 0,
                    concurrency: int = 20) -> list[Conn]:
    """``count`` idle connections, numbered from ``first`` (RESOURCES_PER_USER resources per account)."""
    ctx = client_context()
    conns: list[Conn] = []
    next_index = first

    async def worker() -> None:
        nonlocal next_index
        while next_index < first + count:
            index = next_index
            next_index += 1
            conn = Conn()
            await conn.login(address, users[index // RESOURCES_PER_USER], f"idle{index % RESOURCES_PER_USER}", ctx)
            conns.append(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return conns


# ------------------------------------------------------------------------------------------------

def measure_idle_memory(server: Server, users: list[str], count: int) -> tuple[int, int, int]:
    """RSS (KiB) before any idle connection, after the first half of ``count``, after all of them.

    What an idle connection costs is read from the second half: the first half is the warm-up. The
    RSS at the start holds whatever the earlier steps left behind (freed C heap, collectable garbage
    not yet collected, each server's own pools), and new connections reuse that before the process
    grows; how much there is differs from server to server and from tree to tree, so growth over
    the first connections says more about the earlier steps than about a connection. Once the first
    half is open that slack is used up and the second half (other accounts, as many again) grows
    the process by what each connection really costs. Nothing in the servers is asked to collect:
    the same measure for every server, Prosody and ejabberd included.
    """
    first_half = count // 2

    async def idle() -> tuple[int, int, int]:
        start = server.rss_kib()
        conns = await open_idle(server.address, users, first_half)
        # Idle means idle: let every server settle (peerage releases the parsers and TLS buffers of
        # connections quiet for 5 s, swept every 5 s; Prosody's Lua GC runs incrementally).
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        middle = server.rss_kib()
        conns += await open_idle(server.address, users, count - first_half, first=first_half)
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        end = server.rss_kib()
        for conn in conns:
            conn.close()
        return start, middle, end

    return asyncio.run(idle())


def bench_all(servers: list[Server], users: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every measure on every server, interleaved round by round so that load from other work
    on the machine hits both alike; report the median of the rounds."""
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}

    def add(server: Server, key: str, value: float) -> None:
        samples[server.name].setdefault(key, []).append(value)

    try:
        for server in servers:
            server.start()
        for round_index in range(args.rounds):
            for server in servers:
                print(f"  {server.name}: logins", flush=True)
                add(server, "logins_per_s",
                    asyncio.run(measure_logins(server.address, users, args.logins, args.concurrency)))
            for server in servers:
                print(f"  {server.name}: messages", flush=True)
                figures = asyncio.run(measure_messages(server, users, args.pairs, args.window, args.warmup,
                                                       args.seconds))
                for key, value in figures.items():
                    add(server, key, value)
            print(f"round {round_index + 1}/{args.rounds} done: "
                  + "; ".join(f"{name} {values['msgs_per_s'][-1]:.0f} msg/s" for name, values in samples.items()),
                  flush=True)
        for server in servers:
            print(f"  {server.name}: idle connections", flush=True)
            try:
                start, middle, end = measure_idle_memory(server, users, args.idle)
            except (OSError, TimeoutError, RuntimeError) as error:  # one server failing loses no other figure
                print(f"  {server.name}: idle measurement failed: {error!r}", flush=True)
                start = middle = end = 0
            first_half = args.idle // 2
            add(server, "rss_start_mib", start / 1024)
            add(server, "rss_middle_mib", middle / 1024)
            add(server, "rss_end_mib", end / 1024)
            add(server, "kib_per_conn_first", (middle - start) / first_half if end else float("nan"))
            add(server, "kib_per_conn", (end - middle) / (args.idle - first_half) if end else float("nan"))
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
    parser.add_argument("--baseline", metavar="REV", help="also run peerage from this git revision's src/")
    parser.add_argument("--baseline-src", type=Path, default=None, help="also run peerage from this src/ tree")
    parser.add_argument("--no-prosody", action="store_true")
    parser.add_argument("--no-ejabberd", action="store_true")
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
    user_count = max(2 * args.pairs, (args.idle + RESOURCES_PER_USER - 1) // RESOURCES_PER_USER, 50)
    users = usernames(user_count)
    workdir = Path(tempfile.mkdtemp(prefix="bench-xmpp-c2s-"))
    baseline = args.baseline_src.resolve() if args.baseline_src else None
    if args.baseline:
        tree = workdir / "baseline"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        baseline = tree / "src"
    from peerage.net.tls import generate_self_signed

    cert, key = workdir / "cert.pem", workdir / "key.pem"
    generate_self_signed(DOMAIN, cert, key)
    key.chmod(0o644)
    servers: list[Server] = []
    if baseline is not None:
        servers.append(PeerageBench(workdir / "peerage-before", baseline))
    servers.append(PeerageBench(workdir / "peerage"))
    if not args.no_prosody and shutil.which("prosody"):
        servers.append(ProsodyBench(workdir / "prosody"))
    if not args.no_ejabberd and shutil.which("erl") and Path("/usr/sbin/ejabberdctl").exists():
        servers.append(EjabberdBench(workdir / "ejabberd"))
    for server in servers:
        server.workdir.mkdir(parents=True)
        server.setup(users, cert, key)
    started = time.time()
    load_before = os.getloadavg()
    results = bench_all(servers, users, args)
    load_after = os.getloadavg()
    for name, figures in results.items():
        print(name, {k: round(v, 3) for k, v in figures.items()}, flush=True)
    report = format_report(results, servers, args, baseline_label(args), load_before, load_after, started)
    print(report)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(report)
    shutil.rmtree(workdir, ignore_errors=True)


def baseline_label(args: argparse.Namespace) -> str:
    if args.baseline:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                             text=True).stdout.strip()
        return f"git revision {args.baseline} ({rev})"
    if args.baseline_src:
        return f"the tree in {args.baseline_src}"
    return ""


def format_report(results: dict[str, dict[str, float]], servers: list[Server], args: argparse.Namespace,
                  baseline: str, load_before: tuple[float, float, float], load_after: tuple[float, float, float],
                  started: float) -> str:
    names = [server.name for server in servers]
    p = results["peerage"]

    def cell(name: str, key: str, fmt: str) -> str:
        return f"{results[name][key]:{fmt}}"

    def ratio(name: str, key: str) -> str:
        other = results[name][key]
        return f"{p[key] / other:.2f}x" if other else "-"

    measures = [
        ("messages/s", "msgs_per_s", ".0f"),
        ("latency p50 (ms, every message)", "p50_ms", ".2f"),
        ("latency p99 (ms, every message)", "p99_ms", ".2f"),
        ("server CPU share in the counted window", "server_cpu_share", ".2f"),
        ("messages per server CPU second", "msgs_per_cpu_s", ".0f"),
        ("lost / duplicated / reordered / wrong sender", "lost", ".0f"),
        ("RSS per idle connection (KiB), second half", "kib_per_conn", ".1f"),
        ("RSS per idle connection (KiB), first half (warm-up)", "kib_per_conn_first", ".1f"),
        ("SCRAM logins/s", "logins_per_s", ".0f"),
    ]
    others = [n for n in names if n != "peerage"]
    header = "| measure | " + " | ".join(names) + " | " + " | ".join(f"peerage / {n}" for n in others) + " |"
    lines = [
        "",
        f"## xmpp_c2s: peerage beside {', '.join(others) or 'nothing'} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))})",
        "",
        f"Machine: {machine()}. Load average before/after the run: "
        f"{' '.join(f'{x:.2f}' for x in load_before)} / {' '.join(f'{x:.2f}' for x in load_after)}; the machine "
        "was shared with other work (other engineers' tests and builds) during the run. "
        f"Server pinned to CPU {SERVER_CPU}, load tool (Python, uvloop) on CPU {CLIENT_CPU}. "
        f"Medians of {args.rounds} interleaved rounds ({', '.join(names)} in each round).",
        f"Load: {args.pairs} pairs, {args.window} messages in flight per pair, one stanza per write, "
        f"{args.seconds:.0f} s counted after {args.warmup:.0f} s warm-up; receivers check sender and sequence; "
        f"{args.idle} idle connections in two halves (STARTTLS, SCRAM-SHA-256, bound, initial presence; "
        "RSS per connection is the growth over the second half, the first half being the warm-up); "
        f"{args.logins} logins, {args.concurrency} at a time. TLS, SCRAM-SHA-256 from stored keys, no archive.",
        f"Versions: Prosody {package_version('prosody')} with modules {', '.join(PROSODY_MODULES)}; "
        f"ejabberd {package_version('ejabberd')} with {', '.join(EJABBERD_MODULES)}.",
    ]
    if baseline:
        lines.append(f"`peerage before` runs {baseline} in the same rounds; `peerage` is the working tree.")
    lines += ["", header, "|---" * (1 + len(names) + len(others)) + "|"]
    for label, key, fmt in measures:
        if key == "lost":
            cells = [" / ".join(f"{results[n][k]:.0f}" for k in ("lost", "duplicates", "reordered", "wrong_sender"))
                     for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join("-" for _ in others) + " |")
            continue
        lines.append(f"| {label} | " + " | ".join(cell(n, key, fmt) for n in names) + " | "
                     + " | ".join(ratio(n, key) for n in others) + " |")
    lines += ["", f"RSS with 0 -> {args.idle // 2} -> {args.idle} idle connections open (the figure is the "
              "growth over the second half; the first half is the warm-up): " + "; ".join(
                  f"{n} {results[n]['rss_start_mib']:.1f} -> {results[n]['rss_middle_mib']:.1f} -> "
                  f"{results[n]['rss_end_mib']:.1f} MiB" for n in names) + "."]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    main()
