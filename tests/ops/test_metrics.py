"""Metrics and health on `[metrics] listen`, scraped and parsed with prometheus_client's own parser;
JSON log lines. Server on 127.0.8.40."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import PeerageServer
from tests.xmpp.rawclient import RawClient

ADDRESS = "127.0.8.40"
PASSWORD = "correct horse"


def scrape(path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{ADDRESS}:9477{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_connections_logins_and_stanzas(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, ["m.test"], ADDRESS, services=("xmpp", "sip", "smtp", "imap"),
                           config={"metrics": {"listen": [f"{ADDRESS}:9477"]},
                                   "server": {"log_format": "json"}})
    server.add_user("alice@m.test", PASSWORD)
    server.start()
    try:
        alice = RawClient(ADDRESS, "m.test")
        await alice.login("alice", PASSWORD, resource="r")
        for n in range(3):
            await alice.send(f"<message to='alice@m.test/r' type='chat'><body>n{n}</body></message>")
            await alice.read_until(f"<body>n{n}</body>")
        failed = RawClient(ADDRESS, "m.test")
        await failed.connect()
        await failed.open_stream()
        await failed.starttls()
        await failed.open_stream()
        assert "<failure" in await failed.authenticate("alice", "wrong password")
        await failed.close()

        status, text = scrape()
        assert status == 200
        found = samples(text)
        assert found["peerage_connections_total", (("listener", "xmpp-client"),)] >= 2
        assert found["peerage_connections_open", (("listener", "xmpp-client"),)] >= 1
        assert found["peerage_logins_total", (("result", "success"),)] >= 1
        assert found["peerage_logins_total", (("result", "failure"),)] >= 1
        assert found["peerage_xmpp_stanzas_total", (("kind", "message"),)] >= 3
        assert found["peerage_mail_queue_entries", ()] == 0
        assert found["peerage_database_statement_seconds_count", ()] > 0
        assert ("peerage_sip_transactions_active", ()) in found
        assert found["peerage_up", ()] == 1
        assert found["process_open_fds", ()] > 0
        await alice.close()

        status, body = scrape("/health")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok" and health["database"] == "ok"
        assert "XmppService" in health["services"]

        lines = [line for line in server.log_text().splitlines() if line.startswith("{")]
        ready = [json.loads(line) for line in lines if "peerage ready" in line]
        assert ready and ready[0]["level"] == "info" and ready[0]["logger"] == "peerage"
    finally:
        server.stop()
