#!/usr/bin/env python3
"""JMAP benchmark: the same JMAP client workload against peerage and Cyrus IMAP 3.6 on 10,000 messages.

Both servers get the same generated messages in the INBOX of alice@example.org (peerage through its
mailbox store, Cyrus through IMAP APPEND). One client (aiohttp, HTTP Basic) then runs, per round and
against each server in turn:

- Mailbox/get of every mailbox;
- Email/query of the INBOX sorted by receivedAt (newest first, 50 results) with Email/get of those 50
  (the properties a message list shows, preview included) in the same request;
- Email/set of the keyword $flagged on 1,000 messages (set in odd rounds, cleared in even ones).

The first round warms caches and indexes on both sides and is reported on its own; the figure per
operation is the median of the warm rounds. peerage is reached over HTTPS (its only web listener),
Cyrus over plain HTTP on loopback, which favours Cyrus slightly. The load average is printed and
written with the results (the machine is shared).

    python3 bench/jmap/run.py [--messages 10000] [--rounds 7] [--no-write] [--only peerage|cyrus]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import imaplib
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
from bench.machine import describe as machine  # noqa: E402

PEERAGE_ADDRESS = "127.0.6.250"
CYRUS_ADDRESS = "127.0.6.251"
PEERAGE_HTTPS = 6443
CYRUS_HTTP = 8008
CYRUS_IMAP = 1143
USER = "alice@example.org"
PASSWORD = "bench-password-2026"
FLAG_COUNT = 1000
START_TIMEOUT = 120.0
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
LIST_PROPERTIES = ["id", "threadId", "mailboxIds", "keywords", "subject", "from", "to", "receivedAt", "size",
                   "preview", "hasAttachment"]
WORDS = ["meeting", "report", "budget", "invoice", "travel", "schedule", "project", "review", "draft", "update",
         "team", "lunch", "weekly", "quarterly", "deadline", "release", "server", "network", "storage"]
CYRUS_BIN = Path("/usr/lib/cyrus/bin")


def generate(count: int) -> list[bytes]:
    rng = random.Random(20261201)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    out = []
    for n in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(100, 400))]
        body = "\r\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)) + "\r\n"
        date = (start + datetime.timedelta(minutes=37 * n)).strftime("%a, %d %b %Y %H:%M:%S +0000")
        thread = n // 3
        refs = f"References: <t{thread}@bench.example>\r\n" if n % 3 else ""
        out.append((f"From: Sender {n % 50} <sender{n % 50}@remote.example>\r\nTo: {USER}\r\n"
                    f"Subject: {rng.choice(WORDS)} {rng.choice(WORDS)} number {n}\r\nDate: {date}\r\n"
                    f"Message-ID: <{'t' if n % 3 == 0 else 'm'}{thread if n % 3 == 0 else n}@bench.example>\r\n"
                    f"{refs}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode())
    return out


# --- peerage -------------------------------------------------------------------------------------------


def peerage_config(workdir: Path) -> Path:
    from peerage.net.tls import generate_self_signed

    cert, key = workdir / "example.org.crt", workdir / "example.org.key"
    generate_self_signed("example.org", cert, key)
    config = workdir / "peerage.toml"
    config.write_text(f"""
[server]
data_dir = "{workdir / 'data'}"
log_level = "warning"
[[domain]]
name = "example.org"
cert = "{cert}"
key = "{key}"
[xmpp]
enabled = false
[sip]
enabled = false
[smtp]
enabled = false
[imap]
enabled = true
listen = ["{PEERAGE_ADDRESS}:1143"]
tls_listen = ["{PEERAGE_ADDRESS}:1993"]
[web]
https_listen = ["{PEERAGE_ADDRESS}:{PEERAGE_HTTPS}"]
http_listen = []
""")
    return config


async def peerage_load(config_path: Path, messages: list[bytes]) -> None:
    from peerage.config import load_config
    from peerage.mail.mailbox import store_for
    from peerage.server import Host

    host = Host(load_config(config_path))
    await host.open()
    await host.accounts.add(USER, PASSWORD)
    store = store_for(host)
    inbox = await store.get_mailbox(USER, "INBOX")
    assert inbox is not None
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    for offset in range(0, len(messages), 500):
        batch = [(raw, (), start + 37 * 60 * (offset + i), 0) for i, raw in enumerate(messages[offset:offset + 500])]
        await store.append_many(inbox.id, batch)
    await host.store.close()


def start_peerage(workdir: Path, messages: list[bytes]) -> subprocess.Popen[bytes]:
    config = peerage_config(workdir)
    asyncio.run(peerage_load(config, messages))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen([sys.executable, "-m", "peerage", "--config", str(config), "serve"],
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "serve.log", "wb"), env=env,  # noqa: SIM115
                               start_new_session=True)
    wait_port(PEERAGE_ADDRESS, PEERAGE_HTTPS, process)
    return process


# --- Cyrus ---------------------------------------------------------------------------------------------


def cyrus_imapd(workdir: Path) -> Path:
    """Cyrus's imapd. Debian's cyrus-imapd conflicts with dovecot-imapd (the IMAP benchmark's anchor), so
    when it is not installed its package is fetched with apt-get and unpacked here, not installed."""
    installed = CYRUS_BIN / "imapd"
    if installed.exists():
        return installed
    unpacked = workdir / "cyrus-imapd"
    unpacked.mkdir(exist_ok=True)
    subprocess.run(["apt-get", "download", "cyrus-imapd"], cwd=unpacked, check=True, capture_output=True)
    (deb,) = unpacked.glob("cyrus-imapd_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked / "root")], check=True)
    return unpacked / "root" / "usr" / "lib" / "cyrus" / "bin" / "imapd"


def start_cyrus(workdir: Path, messages: list[bytes]) -> subprocess.Popen[bytes]:
    imapd_bin = cyrus_imapd(workdir)
    if not (CYRUS_BIN / "master").exists() or not (CYRUS_BIN / "httpd").exists():
        raise SystemExit("Cyrus is not installed (Debian packages cyrus-caldav, for master and httpd, and "
                         "sasl2-bin)")
    base = workdir / "cyrus"
    for sub in ("conf", "spool", "run", "conf/socket", "conf/proc", "conf/lock", "conf/db", "conf/user", "conf/quota",
                "conf/sieve", "conf/log", "conf/msg", "conf/ptclient"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    imapd = base / "imapd.conf"
    imapd.write_text(f"""configdirectory: {base}/conf
defaultpartition: default
partition-default: {base}/spool
admins: cyrus
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {base}/sasldb2
sasl_mech_list: PLAIN
allowplaintext: yes
virtdomains: userid
defaultdomain: example.org
unixhierarchysep: yes
servername: example.org
httpmodules: jmap
conversations: yes
conversations_db: twoskip
httpallowcompress: no
lmtpsocket: {base}/conf/socket/lmtp
idlesocket: {base}/conf/socket/idle
notifysocket: {base}/conf/socket/notify
syslog_prefix: cyrus-bench
""")
    cyrus_conf = base / "cyrus.conf"
    cyrus_conf.write_text(f"""START {{
  recover cmd="ctl_cyrusdb -r -C {imapd}"
}}
SERVICES {{
  imap cmd="{imapd_bin} -C {imapd}" listen="{CYRUS_ADDRESS}:{CYRUS_IMAP}" prefork=1
  http cmd="httpd -C {imapd}" listen="{CYRUS_ADDRESS}:{CYRUS_HTTP}" prefork=1
}}
EVENTS {{
  checkpoint cmd="ctl_cyrusdb -c -C {imapd}" period=30
}}
""")
    cyrus = pwd.getpwnam("cyrus")
    # The user under both spellings Cyrus may look it up by (realm example.org, or the whole address).
    for realm, name in (("example.org", USER.split("@")[0]), ("", USER), ("", "cyrus"), ("example.org", "cyrus"),
                        (socket.getfqdn(), USER.split("@")[0]), ("localhost", USER.split("@")[0])):
        subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(base / "sasldb2"), "-u", realm, name],
                       input=PASSWORD.encode(), check=True)
    subprocess.run(["chown", "-R", f"{cyrus.pw_uid}:{cyrus.pw_gid}", str(base)], check=True)
    # -D: master stays in the foreground, so stopping this process stops Cyrus.
    process = subprocess.Popen(["runuser", "-u", "cyrus", "--", str(CYRUS_BIN / "master"), "-D", "-C", str(imapd),
                                "-M", str(cyrus_conf), "-p", str(base / "run/master.pid")],
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "cyrus.log", "wb"),  # noqa: SIM115
                               start_new_session=True)
    wait_port(CYRUS_ADDRESS, CYRUS_IMAP, process)
    wait_port(CYRUS_ADDRESS, CYRUS_HTTP, process)
    admin = imaplib.IMAP4(CYRUS_ADDRESS, CYRUS_IMAP)
    admin.login("cyrus", PASSWORD)
    typ, data = admin.create(f"user/{USER}")
    assert typ == "OK", data
    admin.logout()
    client = imaplib.IMAP4(CYRUS_ADDRESS, CYRUS_IMAP)
    client.login(USER, PASSWORD)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for n, raw in enumerate(messages):
        when = imaplib.Time2Internaldate((start + datetime.timedelta(minutes=37 * n)).timestamp())
        typ, data = client.append("INBOX", "", when, raw)
        assert typ == "OK", data
    client.logout()
    return process


def wait_port(address: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on {address}:{port} exited with {process.returncode}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on {address}:{port} did not come up")


# --- the JMAP client workload --------------------------------------------------------------------------


class Client:
    def __init__(self, name: str, base: str, ssl_context: ssl.SSLContext | bool) -> None:
        self.name = name
        self.base = base
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context),
                                             headers={"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)})
        self.api = ""
        self.account = ""
        self.inbox = ""
        self.ids: list[str] = []

    async def setup(self) -> None:
        async with self.session.get(self.base + "/.well-known/jmap") as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        self.api = data["apiUrl"]
        if self.api.startswith("/"):
            self.api = self.base + self.api
        self.account = data["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        boxes = await self.call([["Mailbox/get", {"accountId": self.account, "ids": None}, "0"]])
        self.inbox = next(b["id"] for b in boxes[0][1]["list"] if b.get("role") == "inbox")
        query = await self.call([["Email/query", {"accountId": self.account, "filter": {"inMailbox": self.inbox},
                                                  "limit": FLAG_COUNT}, "0"]])
        self.ids = query[0][1]["ids"]

    async def call(self, calls: list[list[Any]]) -> list[list[Any]]:
        async with self.session.post(self.api, json={"using": USING, "methodCalls": calls}) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        for answer in data["methodResponses"]:
            if answer[0] == "error":
                raise RuntimeError(f"{self.name}: {answer}")
        return list(data["methodResponses"])

    async def mailbox_get(self) -> None:
        await self.call([["Mailbox/get", {"accountId": self.account, "ids": None}, "0"]])

    async def query_and_get(self) -> None:
        answers = await self.call([
            ["Email/query", {"accountId": self.account, "filter": {"inMailbox": self.inbox},
                             "sort": [{"property": "receivedAt", "isAscending": False}], "limit": 50}, "q"],
            ["Email/get", {"accountId": self.account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                           "properties": LIST_PROPERTIES}, "g"],
        ])
        assert len(answers[1][1]["list"]) == 50, answers

    async def set_keyword(self, on: bool) -> None:
        patch = {"keywords/$flagged": True if on else None}
        answers = await self.call([["Email/set", {"accountId": self.account,
                                                  "update": {i: patch for i in self.ids}}, "0"]])
        assert len(answers[0][1].get("updated") or {}) == len(self.ids), answers[0][1].get("notUpdated")


async def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    await fn(*args)
    return (time.perf_counter() - started) * 1000


async def measure(clients: list[Client], rounds: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {c.name: {"warm": [], "mailbox": [], "query": [], "set": []}
                                                  for c in clients}
    for client in clients:
        await client.setup()
    for round_number in range(rounds + 1):
        for client in clients:
            times = [await timed(client.mailbox_get), await timed(client.query_and_get),
                     await timed(client.set_keyword, round_number % 2 == 0)]
            if round_number == 0:
                results[client.name]["warm"] = times
            else:
                for key, value in zip(("mailbox", "query", "set"), times, strict=True):
                    results[client.name][key].append(value)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", choices=["peerage", "cyrus"])
    args = parser.parse_args()
    messages = generate(args.messages)
    workdir = Path(tempfile.mkdtemp(prefix="bench-jmap-"))
    workdir.chmod(0o755)
    processes: list[subprocess.Popen[bytes]] = []
    load_before = os.getloadavg()
    try:
        specs: list[tuple[str, str, ssl.SSLContext | bool]] = []
        if args.only in (None, "peerage"):
            started = time.monotonic()
            processes.append(start_peerage(workdir, messages))
            print(f"peerage loaded in {time.monotonic() - started:.1f} s", flush=True)
            context = ssl.create_default_context(cafile=str(workdir / "example.org.crt"))
            context.check_hostname = False
            specs.append(("peerage", f"https://{PEERAGE_ADDRESS}:{PEERAGE_HTTPS}", context))
        if args.only in (None, "cyrus"):
            started = time.monotonic()
            processes.append(start_cyrus(workdir, messages))
            print(f"Cyrus loaded in {time.monotonic() - started:.1f} s", flush=True)
            specs.append(("Cyrus", f"http://{CYRUS_ADDRESS}:{CYRUS_HTTP}", False))

        async def run() -> dict[str, dict[str, list[float]]]:
            clients = [Client(*spec) for spec in specs]
            try:
                return await measure(clients, args.rounds)
            finally:
                for client in clients:
                    await client.session.close()

        results = asyncio.run(run())
    finally:
        for pid_file in workdir.glob("cyrus/run/master.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # Cyrus's master and its children
            except (ProcessLookupError, PermissionError):
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    report(results, args, load_before, load_after)
    return 0


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace, before: tuple[float, ...],
           after: tuple[float, ...]) -> None:
    names = list(results)
    labels = {"mailbox": "Mailbox/get (ms)", "query": "Email/query 50 by date + Email/get (ms)",
              "set": f"Email/set $flagged on {FLAG_COUNT} (ms)"}
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## jmap: peerage vs Cyrus IMAP 3.6 ({stamp})", "",
             f"Machine: {machine()}. Load average before/after: {before[0]:.2f}/{after[0]:.2f} (1 min), "
             f"the machine shared with other work. {args.messages} messages in INBOX; medians of {args.rounds} "
             "warm rounds after one warm-up round, servers interleaved per round. peerage over HTTPS, Cyrus over "
             "plain HTTP on loopback.", "",
             "| operation | " + " | ".join(names) + (" | peerage / Cyrus |" if len(names) == 2 else " |"),
             "|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0))]
    for key, label in labels.items():
        medians = [statistics.median(results[n][key]) for n in names]
        row = f"| {label} | " + " | ".join(f"{m:.1f}" for m in medians)
        if len(names) == 2:
            row += f" | {medians[0] / medians[1]:.2f}"
        lines.append(row + " |")
    lines.append("")
    lines.append("First (warm-up) round, ms: " + "; ".join(
        f"{n}: " + ", ".join(f"{v:.0f}" for v in results[n]["warm"]) for n in names) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    raise SystemExit(main())
