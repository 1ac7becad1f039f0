"""Well-known documents: security.txt, host-meta."""

from __future__ import annotations

from peerage.web import routes_for
from tests.web.conftest import WebHost, start_host, stop_host


async def test_security_txt(webhost: WebHost) -> None:
    async with webhost.client().get(webhost.base + "/.well-known/security.txt",
                                    headers={"Host": "example.org"}) as response:
        assert response.status == 200
        text = await response.text()
    assert "Contact: mailto:security@example.org" in text
    assert "Expires: " in text


async def test_host_meta_lists_registered_links(tmp_path) -> None:
    def register(host: object) -> None:
        routes_for(host).add_host_meta_link("urn:xmpp:alt-connections:websocket", "wss://{domain}/xmpp-websocket")

    server = await start_host(tmp_path, before_web=register)
    try:
        client = server.client()
        async with client.get(server.base + "/.well-known/host-meta", headers={"Host": "example.org"}) as response:
            xml = await response.text()
            assert response.content_type == "application/xrd+xml"
        assert "wss://example.org/xmpp-websocket" in xml and "<XRD" in xml
        async with client.get(server.base + "/.well-known/host-meta.json") as response:
            data = await response.json(content_type=None)
        assert data["links"][0]["rel"] == "urn:xmpp:alt-connections:websocket"
    finally:
        await stop_host(server)


async def test_thunderbird_autoconfig(mailhost: WebHost) -> None:
    import xml.etree.ElementTree as ET

    client = mailhost.client()
    for host, path in (("autoconfig.example.org", "/mail/config-v1.1.xml"),
                       ("example.org", "/.well-known/autoconfig/mail/config-v1.1.xml")):
        async with client.get(mailhost.base + path, headers={"Host": host}) as response:
            assert response.status == 200
            root = ET.fromstring(await response.text())
        provider = root.find("emailProvider")
        assert provider is not None and provider.findtext("domain") == "example.org"
        incoming = provider.findall("incomingServer")
        assert {(s.findtext("port"), s.findtext("socketType")) for s in incoming} == {("993", "SSL"),
                                                                                      ("143", "STARTTLS")}
        outgoing = provider.findall("outgoingServer")
        assert {(s.findtext("port"), s.findtext("socketType")) for s in outgoing} == {("465", "SSL"),
                                                                                      ("587", "STARTTLS")}
        assert incoming[0].findtext("username") == "%EMAILADDRESS%"


async def test_mta_sts_policy_matches_the_dns_record(mailhost: WebHost) -> None:
    import hashlib

    from peerage.mail import dnsrecords

    client = mailhost.client()
    async with client.get(mailhost.base + "/.well-known/mta-sts.txt",
                          headers={"Host": "mta-sts.example.org"}) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        policy = await response.text()
    assert "version: STSv1" in policy and "mode: enforce" in policy and "mx: example.org" in policy
    lines = policy.strip().split("\r\n")
    records = dnsrecords.records("example.org", mailhost.host.config)
    expected_id = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]
    assert any(f"v=STSv1; id={expected_id}" in r for r in records)
    async with client.get(mailhost.base + "/.well-known/mta-sts.txt", headers={"Host": "example.org"}) as r:
        assert r.status == 404  # only under mta-sts.DOMAIN (RFC 8461 §3.3)


def test_dns_prints_the_web_names(tmp_path) -> None:
    from peerage.config import config_from_dict
    from peerage.web import dnsrecords

    config = config_from_dict({"domain": [{"name": "example.org"}], "web": {"https_listen": ["0.0.0.0:8443"]}},
                              tmp_path / "peerage.toml", check_files=False)
    records = dnsrecords.records("example.org", config)
    assert "_jmap._tcp.example.org. 3600 IN SRV 0 1 8443 example.org." in records
    assert any(r.startswith("autoconfig.example.org.") for r in records)
