"""What the XMPP benchmarks share: the server process wrapper, the Prosody anchor and the load loop.

bench/xmpp_c2s, bench/xmpp_websocket and bench/xmpp_muc each compare peerage with Debian's Prosody
under the same load. This module is in charge of the parts they have in common:

- ``Server``: a server process pinned to ``SERVER_CPU`` (the load tool runs on ``CLIENT_CPU``), its
  RSS (with children) and CPU seconds read from /proc, and ``wait_port``;
- ``ProsodyAnchor``: Prosody with accounts written as ``internal_hashed`` SCRAM-SHA-256 files (the
  same salt and iterations as peerage's accounts), the c2s modules an operator would enable
  (``PROSODY_MODULES``), STARTTLS required, Nagle off; a benchmark adds modules, an HTTPS port or
  configuration lines (``Component``) through its attributes and ``extra_config``;
- the closed load loop: ``PairCheck`` (per-sender sequence: lost, duplicated, reordered),
  ``whole_stanzas`` and ``whole_stanza_reads`` (a stanza split across reads is counted once, when
  complete), ``SendLoop`` (the senders: one stanza per write, each carrying its sender's next
  sequence number and its send time), ``tally_pair`` (one receiver of a sender/receiver pair: the
  sender and sequence checks, the count, and one reply per new message), ``LoadWindow`` (warm-up, a
  counted window with the server's CPU share taken over that window only, then the drain), and
  ``latency_figures``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

DOMAIN = "bench.test"
PASSWORD = "bench password 1"
ITERATIONS = 10000
SALT = b"peeragebenchsalt"  # ASCII, so it can be written into Prosody's Lua account files as is
PORT = 5222
SERVER_CPU = 0
CLIENT_CPU = 1
READY_TIMEOUT = 120.0  # a loaded machine starts servers slowly
STEP_TIMEOUT = 60.0  # generous: the benchmark machine may be shared
#: An upper bound that keeps every load loop finite.
MAX_MESSAGES = 5_000_000
#: One whole chat message of the load tool: sender, then the pair's sequence number and send time.
MESSAGE_RE = re.compile(rb"<message\b[^>]*?\bfrom=['\"]([^'\"]+)['\"][^>]*>.*?<body>(\d+) (\d+)</body>.*?</message>", re.S)
#: The modules a Prosody operator enables for what peerage serves on c2s: roster, presence,
#: offline, carbons, blocking, private XML, vCard, PEP, stream management, CSI, ping, version, disco.
PROSODY_MODULES = ("disco", "roster", "saslauth", "tls", "blocklist", "carbons", "private", "smacks",
                   "vcard_legacy", "pep", "csi_simple", "ping", "version", "offline")


def scram_keys(hash_name: str) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of the benchmark password (RFC 5802 section 3)."""
    algorithm = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
    salted = hashlib.pbkdf2_hmac(algorithm, PASSWORD.encode(), SALT, ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    return hashlib.new(algorithm, client_key).digest(), hmac.digest(salted, b"Server Key", algorithm)


def usernames(count: int) -> list[str]:
    return [f"u{index}" for index in range(count)]


# ------------------------------------------------------------------------------------------------
# Server processes
# ------------------------------------------------------------------------------------------------

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


class ProsodyAnchor(Server):
    """Debian's Prosody on ``address``: c2s on ``PORT``, HTTPS on ``https_port`` when set."""

    name = "prosody"
    #: Loaded on top of PROSODY_MODULES (``websocket`` for bench/xmpp_websocket).
    extra_modules: tuple[str, ...] = ()
    https_port: int | None = None

    def extra_config(self) -> str:
        """Lines appended after the VirtualHost (a ``Component`` for bench/xmpp_muc)."""
        return ""

    def setup(self, users: list[str], cert: Path, key: Path) -> None:
        data = self.workdir / "data"
        accounts = data / DOMAIN.replace(".", "%2e") / "accounts"
        accounts.mkdir(parents=True)
        stored, server = scram_keys("SHA-256")
        entry = (f'return {{\n\t["iteration_count"] = {ITERATIONS};\n\t["salt"] = "{SALT.decode()}";\n'
                 f'\t["stored_key"] = "{stored.hex()}";\n\t["server_key"] = "{server.hex()}";\n}};\n')
        for user in users:
            (accounts / f"{user}.dat").write_text(entry)
        modules = (*PROSODY_MODULES, *self.extra_modules)
        https = ""
        if self.https_port is not None:
            https = (f'https_ports = {{ {self.https_port} }}\nhttps_interfaces = {{ "{self.address}" }}\n'
                     f'https_ssl = {{ certificate = "{cert}"; key = "{key}" }}\n'
                     f'http_default_host = "{DOMAIN}"\nconsider_websocket_secure = true\n')
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
http_ports = {{ }}
{https}network_backend = "epoll"
-- Prosody's server_epoll keeps Nagle on by default; small stanzas then wait for delayed ACKs
-- (40 ms). peerage (asyncio) sets TCP_NODELAY, so Prosody gets the same.
network_settings = {{ nagle = false }}
log = {{ warn = "{self.workdir / 'prosody.log'}" }}
authentication = "internal_hashed"
password_hash = "SHA-256"
storage = "internal"
c2s_require_encryption = true
allow_registration = false
modules_enabled = {{ {"; ".join(f'"{m}"' for m in modules)}; }}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; "dialback" }}
ssl = {{ certificate = "{cert}"; key = "{key}" }}
VirtualHost "{DOMAIN}"
{self.extra_config()}""")

    def start(self) -> None:
        log = self.workdir / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), "prosody", "--config", str(self.config), "-F"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_port(self.address, PORT, self.process, log)
        if self.https_port is not None:
            wait_port(self.address, self.https_port, self.process, log)


# ------------------------------------------------------------------------------------------------
# The closed load loop
# ------------------------------------------------------------------------------------------------

class PairCheck:
    """What one receiver saw of one sender's sequence: delivered, lost, duplicated, reordered."""

    __slots__ = ("counted", "delivered", "duplicates", "missing", "next", "reordered", "wrong_sender")

    def __init__(self) -> None:
        self.next = 1
        self.missing: set[int] = set()  # skipped numbers that may still arrive late
        self.counted = 0
        self.duplicates = 0
        self.reordered = 0
        self.wrong_sender = 0
        self.delivered = 0

    def saw(self, number: int) -> bool:
        """Record ``number``; True if it is a new message (not a duplicate)."""
        if number == self.next:
            self.next += 1
            self.delivered += 1
            return True
        if number > self.next:
            self.missing.update(range(self.next, number))
            self.next = number + 1
            self.delivered += 1
            return True
        if number in self.missing:
            self.missing.discard(number)
            self.reordered += 1
            self.delivered += 1
            return True
        self.duplicates += 1
        return False


def whole_stanzas(pending: bytes) -> tuple[bytes, bytes]:
    """Split ``pending`` into whole ``<message/>`` stanzas and the rest, which waits for more bytes:
    a message split across reads is counted once, when complete."""
    cut = pending.rfind(b"</message>")
    if cut < 0:
        return b"", pending
    return pending[:cut + 10], pending[cut + 10:]


def whole_stanza_reads(reader: asyncio.StreamReader, pending: bytes = b"") -> Callable[[], Awaitable[bytes]]:
    """A read of ``reader`` that returns whole ``<message/>`` stanzas only (``whole_stanzas``), the
    rest kept for the next read; ``pending`` is what the login left unread."""
    rest = pending

    async def read() -> bytes:
        nonlocal rest
        while True:
            chunk = await reader.read(262144)
            if not chunk:
                raise ConnectionError("connection closed")
            complete, rest = whole_stanzas(rest + chunk)
            if complete:
                return complete
    return read


class SendLoop:
    """The senders of a closed loop. ``send(index)`` writes one stanza (one write, as an interactive
    client sends it) made by ``stanza(index, sequence, send time in ns)`` through ``write(index, data)``;
    ``sequences[index]`` is how many sender ``index`` has sent."""

    def __init__(self, count: int, stanza: Callable[[int, int, int], bytes],
                 write: Callable[[int, bytes], None]) -> None:
        self.sequences = [0] * count
        self.stanza = stanza
        self.write = write

    def send(self, index: int) -> None:
        self.sequences[index] += 1
        self.write(index, self.stanza(index, self.sequences[index], time.perf_counter_ns()))

    def prime(self, window: int) -> None:
        """The first ``window`` messages of every sender."""
        for index in range(len(self.sequences)):
            for _ in range(window):
                self.send(index)

    def lost(self, checks: list[PairCheck]) -> int:
        """Sent and never delivered, sender ``i`` received by ``checks[i]``'s receiver."""
        return sum(sent - check.delivered for sent, check in zip(self.sequences, checks, strict=True))

    def drained(self, checks: list[PairCheck]) -> bool:
        return all(check.delivered >= sent for check, sent in zip(checks, self.sequences, strict=True))


async def tally_pair(window: LoadWindow, check: PairCheck, read: Callable[[], Awaitable[bytes]],
                     sender_jid: str, reply: Callable[[], None]) -> None:
    """One receiver of a pair until ``window.stop``: every ``read()`` gives whole messages, each checked
    for its sender (``sender_jid`` or another resource of its account) and its sequence number; each
    new message is counted while the window counts and answered with one ``reply()`` while it replies."""
    full = sender_jid.encode()
    resource_prefix = full.split(b"/")[0] + b"/"
    findall = MESSAGE_RE.findall
    while not window.stop:
        complete = await read()
        now = time.perf_counter_ns()
        replies = 0
        for sender, number, sent in findall(complete):
            if sender != full and not sender.startswith(resource_prefix):
                check.wrong_sender += 1
                continue
            if not check.saw(int(number)):
                continue
            replies += 1
            if window.counting:
                check.counted += 1
                window.count(now, int(sent))
        if window.replying and window.counted < MAX_MESSAGES:
            for _ in range(replies):
                reply()


class LoadWindow:
    """One closed-loop run: the receivers' tasks reply while ``replying``, count while
    ``counting`` (latencies in ns, from the send time each message carries), end at ``stop``."""

    def __init__(self) -> None:
        self.counting = False
        self.replying = True
        self.stop = False
        self.counted = 0
        self.latencies: list[int] = []
        #: What the receivers raised (other than being cancelled at the end).
        self.errors: list[BaseException] = []

    def count(self, now_ns: int, sent_ns: int) -> None:
        self.counted += 1
        self.latencies.append(now_ns - sent_ns)

    async def run(self, server: Server, receivers: list[Callable[[], Awaitable[None]]],
                  prime: Callable[[], None], warmup: float, seconds: float,
                  drained: Callable[[], bool], drain_seconds: float) -> tuple[float, float]:
        """Start the receivers, ``prime`` the loop (the first window of messages), warm up, count
        for ``seconds`` and stop replying; wait until ``drained()`` (what is in flight has arrived)
        or ``drain_seconds``. Returns (elapsed seconds counted, the server's CPU share in them)."""
        tasks = [asyncio.ensure_future(receive()) for receive in receivers]
        prime()
        await asyncio.sleep(warmup)
        cpu_before = server.cpu_seconds()
        self.counting = True
        begin = time.perf_counter()
        await asyncio.sleep(seconds)
        self.counting = False
        elapsed = time.perf_counter() - begin
        cpu_share = (server.cpu_seconds() - cpu_before) / elapsed
        # Stop the loop and let what is in flight arrive: whatever was sent and never came is lost.
        self.replying = False
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and not drained():
            await asyncio.sleep(0.2)
        self.stop = True
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        self.errors = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, asyncio.CancelledError)]
        return elapsed, cpu_share


def latency_figures(latencies: list[int]) -> dict[str, float]:
    """p50 and p99 in milliseconds of every counted message."""
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] / 1e6 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else float("nan"),
    }


def check_figures(checks: list[PairCheck]) -> dict[str, float]:
    return {
        "duplicates": float(sum(c.duplicates for c in checks)),
        "reordered": float(sum(c.reordered for c in checks)),
        "wrong_sender": float(sum(c.wrong_sender for c in checks)),
    }
