"""bench/activitypub: fan-out of one post to 10,000 followers on 100 remote servers (local sinks).

A real `peerage serve` (alpha.bench on 127.0.15.2) has 10,000 followers spread over 100 sink servers
(sink-N.bench on 127.0.15.100-199, HTTPS with the harness's test CA, names from the harness's LocalDNS
on 127.0.15.53). One post from alice is timed from the outbox POST until every sink has answered every
delivery; the peerage process's CPU time (utime + stime from /proc) over the same span is divided by
the number of deliveries. Every delivery is signed (RSA-2048, RFC 9421 first; the sinks accept it).

Two shapes: followers with a shared inbox (ActivityPub §7.1.3: one delivery per server, 100 in all)
and followers without one (one delivery per follower, 10,000 in all, the worst case).

Run (as root, with the social area's lock, from the repository):
    flock /tmp/peerage-area-social.lock env PYTHONPATH=$PWD/src python3 -m bench.activitypub.run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from tests.harness.ca import TestCA
from tests.harness.dns import LocalDNS
from tests.harness.server import PeerageServer

from bench.machine import describe

DOMAIN, ADDRESS = "alpha.bench", "127.0.15.2"
DNS_ADDRESS = "127.0.15.53"
SINKS = 100
PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(followers: int, shared: bool, workdir: Path, ca: TestCA, dns: LocalDNS) -> dict[str, float]:
    names = [f"sink-{i}.bench" for i in range(SINKS)]
    cert, key = ca.issue("sinks.bench", dns_ids=names)
    for i, name in enumerate(names):
        dns.add_a(name, f"127.0.15.{100 + i}")
    received = 0
    done = asyncio.Event()
    expected = SINKS if shared else followers

    async def inbox(_request: web.Request) -> web.Response:
        nonlocal received
        await _request.read()
        received += 1
        if received >= expected:
            done.set()
        return web.Response(status=202)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/{tail:.*}", inbox)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    for i in range(SINKS):
        await web.TCPSite(runner, f"127.0.15.{100 + i}", 443, ssl_context=context).start()

    server_cert = ca.issue(DOMAIN)
    dns.add_a(DOMAIN, ADDRESS)
    server = PeerageServer(workdir / ("shared" if shared else "each"), DOMAIN, ADDRESS, dns=dns, services=("web",),
                           config={"social": {"allow_private_addresses": True, "per_host_rate": 100000.0,
                                              "per_host_concurrency": 4},
                                   "web": {"http_listen": []}, "server": {"log_level": "info"}},
                           certs={DOMAIN: server_cert}, ca_file=ca.cert_path)
    server.add_user(f"alice@{DOMAIN}", PASSWORD)
    server.cli("social", "publish", f"alice@{DOMAIN}")
    with sqlite3.connect(server.data_dir / "peerage.db") as db:
        db.executemany(
            "INSERT INTO social_followers (account, actor, inbox, shared_inbox, follow_id, created_at) "
            "VALUES (?, ?, ?, ?, '', 0)",
            [(f"alice@{DOMAIN}", f"https://{names[n % SINKS]}/users/u{n}", f"https://{names[n % SINKS]}/users/u{n}/inbox",
              f"https://{names[n % SINKS]}/inbox" if shared else "") for n in range(followers)])
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        context_client = ssl.create_default_context(cafile=str(ca.cert_path))
        connector = aiohttp.TCPConnector(ssl=context_client, resolver=_Static({DOMAIN: ADDRESS}))
        async with aiohttp.ClientSession(connector=connector) as http:
            auth = {"Authorization": aiohttp.encode_basic_auth(f"alice@{DOMAIN}", PASSWORD)}
            cpu_before, start = cpu_seconds(pid), time.perf_counter()
            async with http.post(f"https://{DOMAIN}/users/alice/outbox", headers=auth,
                                 json={"type": "Note", "content": "one post to everyone"}) as response:
                assert response.status == 201, await response.text()
            accepted = time.perf_counter() - start
            await asyncio.wait_for(done.wait(), timeout=1500)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(pid) - cpu_before
    finally:
        server.stop()
        await runner.cleanup()
    return {"followers": followers, "deliveries": expected, "received": received, "accepted_s": accepted, "elapsed_s": elapsed,
            "cpu_s": cpu, "cpu_ms_per_delivery": 1000 * cpu / expected, "per_second": expected / elapsed}


class _Static(aiohttp.abc.AbstractResolver):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[aiohttp.abc.ResolveResult]:
        import socket

        return [{"hostname": host, "host": self.names.get(host, host), "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--followers", type=int, default=10000)
    # One delivery per follower is the slow shape; on a shared 2-core machine 10,000 take over 15
    # minutes, so it runs with fewer followers unless told otherwise.
    parser.add_argument("--followers-without-shared-inbox", type=int, default=2000)
    parser.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-activitypub-") as tmp:
        workdir = Path(tmp)
        ca = TestCA(workdir / "ca")
        dns = LocalDNS(DNS_ADDRESS, 53).start()
        try:
            before = load_average()
            results = {
                "shared inboxes": await run(args.followers, True, workdir, ca, dns),
                "one inbox per follower": await run(args.followers_without_shared_inbox, False, workdir, ca, dns),
            }
            after = load_average()
        finally:
            dns.stop()
    lines = [f"\n## ActivityPub fan-out (bench/activitypub), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
             f"Machine: {describe()}; load average before {before}, after {after} (shared machine, other "
             "engineers' work running). One post by alice to "
             f"{args.followers} followers (shared inboxes) or {args.followers_without_shared_inbox} followers "
             f"(no shared inbox) on {SINKS} local HTTPS sink servers; every delivery signed (RSA-2048, "
             "RFC 9421); peerage CPU = utime+stime of the `peerage serve` process from the POST until the last "
             "sink answered.\n",
             "| shape | followers | deliveries | outbox POST answered | all delivered | deliveries/s | peerage CPU "
             "| CPU per delivery |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for shape, r in results.items():
        lines.append(f"| {shape} | {r['followers']:.0f} | {r['deliveries']:.0f} | {r['accepted_s']:.2f} s | {r['elapsed_s']:.2f} s | "
                     f"{r['per_second']:.0f} | {r['cpu_s']:.2f} s | {r['cpu_ms_per_delivery']:.2f} ms |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as file:
            file.write(text)


if __name__ == "__main__":
    asyncio.run(main())
