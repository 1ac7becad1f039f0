"""ACME on a three-node cluster against Pebble (Debian's `pebble`, Let's Encrypt's test server).

Two domains, three nodes with the same `[acme]`:

- `one.`: node n1 holds its `acme` lease when the nodes start (as if it had asked first), and the
  domain's A record names n2 only, so the CA's HTTP-01 validation of n1's order reaches n2, which
  answers it from `cluster_challenges` (n1's `[acme] challenge` says TLS-ALPN-01, which a cluster
  does not use);
- `two.`: n2 and n3 start at once and race for its lease (n1 starts once they are up); exactly one
  node orders;
- `three.`: its lease is held by a node that never comes (n9, as if it died while ordering) for
  the nodes' first check; once it lapses, the next load pass (`[acme] cluster_load_interval`) of
  one node orders it.

Afterwards every node serves the three CA-issued certificates on its TLS port (one serial per domain
across the nodes, the one stored in `cluster_keys`), the cluster has one ACME account, and no
challenge row or lease is left; a node restarted with self-signed files serves the stored ones
without ordering. Nodes on 127.0.16.61-63, Pebble on .60, nats-server on .64, DNS on
.65 (apart from the addresses of the other cluster tests' fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.cluster.conftest import NatsServer, _create_database
from tests.harness import LocalDNS, PeerageServer, require_binary, wait_for
from tests.ops.test_acme import pebble_tls

NODES = {"n1": "127.0.16.61", "n2": "127.0.16.62", "n3": "127.0.16.63"}
PEBBLE = "127.0.16.60"
NATS = "127.0.16.64"
DNS = "127.0.16.65"
ONE, TWO, THREE = "one.acme-cluster.test", "two.acme-cluster.test", "three.acme-cluster.test"
DOMAINS = (ONE, TWO, THREE)
#: Seconds the lease of the node that never comes holds three. after the database is prepared.
DEAD_LEASE = 15
#: Pebble's VA fetches http://NAME:HTTP_PORT/.well-known/acme-challenge/TOKEN.
HTTP_PORT = 5002


def served(address: str, name: str) -> x509.Certificate:
    """The leaf a node presents for `name` on its XMPP direct-TLS port, over a real handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 5223), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")


def served_if_up(address: str, name: str) -> x509.Certificate | None:
    try:
        return served(address, name)
    except OSError:
        return None


def pebble_listening() -> bool:
    try:
        socket.create_connection((PEBBLE, 14000), timeout=1).close()
    except OSError:
        return False
    return True


async def _prepare(database_url: str) -> None:
    """The schema, n1 holding `one.`'s lease for the next ten minutes, n9 `three.`'s for DEAD_LEASE s."""
    from sqlalchemy import insert

    from peerage.cluster.tables import cluster_leases
    from peerage.store import Store

    store = Store(database_url)
    try:
        await store.migrate()
        async with store.begin() as conn:
            await conn.execute(insert(cluster_leases).values(kind="acme", key=ONE, node="n1",
                                                             expires_at=int(time.time()) + 600))
            await conn.execute(insert(cluster_leases).values(kind="acme", key=THREE, node="n9",
                                                             expires_at=int(time.time()) + DEAD_LEASE))
    finally:
        await store.close()


async def _rows(database_url: str) -> dict[str, Any]:
    from sqlalchemy import select

    from peerage.cluster.tables import cluster_challenges, cluster_keys, cluster_leases
    from peerage.store import Store

    store = Store(database_url)
    try:
        async with store.begin() as conn:
            keys = [(r.kind, r.name, bytes(r.pem)) for r in await conn.execute(select(cluster_keys))]
            challenges = (await conn.execute(select(cluster_challenges))).all()
            leases = (await conn.execute(select(cluster_leases).where(cluster_leases.c.kind == "acme"))).all()
    finally:
        await store.close()
    return {"keys": keys, "challenges": challenges, "leases": leases}


@pytest.mark.timeout(300)
def test_one_order_per_domain_validated_at_another_node_and_served_by_all(tmp_path: Path, postgres_url: str) -> None:
    from peerage.cluster.acme import split_pair

    binary = require_binary("pebble")
    cert, key = pebble_tls(tmp_path, PEBBLE)
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"{PEBBLE}:14000", "managementListenAddress": f"{PEBBLE}:15000",
        "certificate": str(cert), "privateKey": str(key), "httpPort": HTTP_PORT, "tlsPort": 5443,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    name = f"acme_{secrets.token_hex(4)}"
    asyncio.run(_create_database(postgres_url, name))
    database_url = postgres_url.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_prepare(database_url))
    nats = NatsServer(tmp_path, NATS)
    with LocalDNS(DNS) as dns:
        dns.add_zone(ONE)
        dns.add_a(ONE, NODES["n2"])
        dns.add_zone(TWO)
        dns.add_a(TWO, NODES["n3"])
        dns.add_zone(THREE)
        dns.add_a(THREE, NODES["n1"])
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        pebble = subprocess.Popen([binary, "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"{DNS}:53"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        nodes: dict[str, PeerageServer] = {}
        try:
            nats.start()
            wait_for(pebble_listening, 30, "pebble listening")
            for node, address in NODES.items():
                nodes[node] = PeerageServer(tmp_path / node, list(DOMAINS), address, services=("xmpp", "web"), config={
                    "server": {"log_level": "info"},
                    "database": {"url": database_url},
                    "cluster": {"node": node, "nats_urls": [nats.url], "heartbeat_interval": 0.5,
                                "node_timeout": 4.0},
                    "web": {"http_listen": [f"{address}:{HTTP_PORT}"]},
                    "acme": {"directory": f"https://{PEBBLE}:14000/dir", "ca_file": str(cert), "names": [],
                             "email": f"postmaster@{ONE}", "check_interval": 3600.0,
                             "cluster_load_interval": 2.0,
                             # Not shareable: n1 orders with HTTP-01 all the same (no node answers
                             # TLS-ALPN-01 on Pebble's tlsPort).
                             "challenge": "tls-alpn-01" if node == "n1" else "http-01"}})
            # n2 and n3 at once (they race for two.), then n1, whose validation for one. reaches n2.
            starting = [threading.Thread(target=nodes[node].start, kwargs={"timeout": 90.0}) for node in ("n2", "n3")]
            for thread in starting:
                thread.start()
            for thread in starting:
                thread.join(120)
            assert nodes["n2"].running and nodes["n3"].running, "a node did not start"
            nodes["n1"].start()

            def every_node_serves_all() -> dict[str, int] | None:
                serials: dict[str, set[int]] = {domain: set() for domain in DOMAINS}
                for address in NODES.values():
                    for domain in serials:
                        leaf = served(address, domain)
                        if "Pebble" not in leaf.issuer.rfc4514_string():
                            return None
                        serials[domain].add(leaf.serial_number)
                return {domain: found.pop() for domain, found in serials.items() if len(found) == 1} or None

            found = wait_for(lambda: (s := every_node_serves_all()) and len(s) == 3 and s, 150,
                             "every node serving the three Pebble certificates")
            logs = {node: server.log_text() for node, server in nodes.items()}
            # n1 held one.'s lease: it alone ordered it, and its validation went to n2 (one.'s A record).
            assert [n for n, text in logs.items() if f"acme: ordering a certificate for {ONE}" in text] == ["n1"]
            assert logs["n1"].count(f"acme: ordering a certificate for {ONE}") == 1
            assert f"acme: new certificate for {ONE}" in logs["n1"]
            assert "acme: a cluster orders with http-01 only; [acme] challenge = 'tls-alpn-01' is not used" in logs["n1"]
            # Three nodes raced for two.: one order in all.
            assert sum(text.count(f"acme: ordering a certificate for {TWO}") for text in logs.values()) == 1, logs
            for node in ("n2", "n3"):
                assert f"acme: certificate for {ONE} loaded from the cluster" in logs[node]
            # three. waited for the lease of the node that never came, then was ordered once.
            assert any(f"acme: node n9 is ordering the certificate for {THREE}" in text for text in logs.values())
            assert sum(text.count(f"acme: ordering a certificate for {THREE}") for text in logs.values()) == 1, logs
            rows = asyncio.run(_rows(database_url))
            stored = {name: split_pair(pem) for kind, name, pem in rows["keys"] if kind == "acme-cert"}
            assert set(stored) == set(DOMAINS)
            for domain, (_key, chain) in stored.items():
                assert x509.load_pem_x509_certificates(chain)[0].serial_number == found[domain]
            assert [name for kind, name, _pem in rows["keys"] if kind == "acme"] == ["account"]
            assert rows["challenges"] == [] and rows["leases"] == []
            for server in nodes.values():
                assert server.running
            # A node starting with files of its own (self-signed again) loads the stored certificates.
            from peerage.net.tls import generate_self_signed

            nodes["n3"].stop()
            for domain in DOMAINS:
                generate_self_signed(domain, tmp_path / "n3" / f"{domain}.crt", tmp_path / "n3" / f"{domain}.key")
            assert served_if_up(NODES["n3"], ONE) is None
            offset = len(nodes["n3"].log_text().encode())
            nodes["n3"].start()
            wait_for(lambda: all((leaf := served_if_up(NODES["n3"], d)) is not None
                                 and leaf.serial_number == found[d] for d in DOMAINS), 30,
                     "n3 serving the stored certificates after its restart")
            assert "acme: ordering a certificate" not in nodes["n3"].log_text(offset)
        finally:
            for server in nodes.values():
                with contextlib.suppress(Exception):
                    server.stop() if server.running else server.kill()
            nats.stop()
            pebble.terminate()
            pebble.wait(10)
