"""`peerage check` against a running server and the harness DNS: what is published is ok, what is
missing is a problem with the record to publish, ports and STARTTLS are tried. 127.0.8.80-81."""

from __future__ import annotations

from pathlib import Path

from tests.harness import LocalDNS, PeerageServer

ADDRESS = "127.0.8.80"
DNS = "127.0.8.81"


def test_check_reports_published_missing_and_ports(tmp_path: Path) -> None:
    with LocalDNS(DNS) as dns:
        dns.add_zone("chk.test")
        dns.add_srv("_xmpp-client._tcp.chk.test", 5, 0, 5222, "chk.test")
        dns.add_mx("chk.test", 10, "chk.test")
        dns.add_txt("chk.test", "v=spf1 -all")  # published, but not what peerage wants
        server = PeerageServer(tmp_path, ["chk.test"], ADDRESS, dns=dns, services=("xmpp", "smtp", "imap", "sieve"))
        server.start()
        try:
            result = server.cli("check", check=False)
        finally:
            server.stop()
        out = result.stdout
        assert result.returncode == 1, out + result.stderr
        assert "ok       _xmpp-client._tcp.chk.test. SRV" in out
        assert "ok       chk.test. MX" in out
        assert "PROBLEM  _xmpp-server._tcp.chk.test. SRV is not published" in out
        assert "fix: publish: _xmpp-server._tcp.chk.test. 3600 IN SRV 5 0 5269 chk.test." in out
        assert 'PROBLEM  chk.test. TXT is published as "v=spf1 -all"' in out
        assert f"ok       [xmpp] c2s_listen {ADDRESS}:5222 answers" in out
        assert f"ok       [imap] tls_listen {ADDRESS}:993 answers with TLS" in out
        assert "offers STARTTLS" in out
        assert f"ok       ManageSieve on {ADDRESS}:4190 answers, STARTTLS works, SASL after TLS: " in out
        assert "warning  chk.test: self-signed" in out
        assert out.rstrip().splitlines()[-1].startswith("verdict: ")
        assert "Traceback" not in result.stderr
    # The s2s check is still there.
    assert "federation" in server.cli("check", "--help").stdout
