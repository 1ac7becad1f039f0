"""Stream negotiation on the wire: STARTTLS, Direct TLS, SASL mechanisms and channel binding, binding."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import PeerageServer
from tests.xmpp.conftest import PASSWORD
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.3"
SERVER_USERS = ["alice@a.test", "bob@b.test", "carol@a.test", "dave@a.test"]


@pytest.fixture
async def raw() -> list[RawClient]:
    created: list[RawClient] = []
    yield created  # type: ignore[misc]
    for client in created:
        await client.close()


def new(raw: list[RawClient], domain: str = "a.test", **kwargs: object) -> RawClient:
    client = RawClient(SERVER_ADDRESS, domain, **kwargs)  # type: ignore[arg-type]
    raw.append(client)
    return client


async def test_starttls_is_required_before_auth(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.connect()
    features = await client.open_stream()
    assert "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in features
    assert "mechanism" not in features
    await client.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
    closing = await client.read_to_eof()
    assert "<encryption-required/>" in closing
    assert "</stream:stream>" in closing


async def test_mechanisms_after_tls_include_plus_variants(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.connect()
    await client.open_stream()
    await client.starttls()
    features = await client.open_stream()
    for mechanism in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        assert f"<mechanism>{mechanism}</mechanism>" in features
    assert "<channel-binding type='tls-exporter'/>" in features
    assert "<channel-binding type='tls-server-end-point'/>" in features


@pytest.mark.parametrize("mechanism,binding", [
    ("SCRAM-SHA-256", None),
    ("SCRAM-SHA-1", None),
    ("SCRAM-SHA-256-PLUS", "tls-exporter"),
    ("SCRAM-SHA-256-PLUS", "tls-server-end-point"),
    ("SCRAM-SHA-1-PLUS", "tls-exporter"),
    ("PLAIN", None),
])
async def test_each_mechanism_logs_in(xmpp_server: PeerageServer, raw: list[RawClient],
                                      mechanism: str, binding: str | None) -> None:
    client = new(raw)
    jid = await client.login("alice", PASSWORD, resource=f"m-{mechanism}-{binding}", mechanism=mechanism,
                             binding=binding)
    assert jid == f"alice@a.test/m-{mechanism}-{binding}"


async def test_wrong_channel_binding_data_fails(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.connect()
    await client.open_stream()
    await client.starttls()
    await client.open_stream()
    answer = await client.authenticate("alice", PASSWORD, "SCRAM-SHA-256-PLUS", "tls-exporter", b"\0" * 32)
    assert "<failure" in answer and "<not-authorized/>" in answer


async def test_downgrade_flag_y_is_refused(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.connect()
    await client.open_stream()
    await client.starttls()
    await client.open_stream()
    answer = await client.authenticate("alice", PASSWORD, "SCRAM-SHA-256", "y")
    assert "<failure" in answer


async def test_wrong_password_and_unknown_user_fail_alike(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    for user in ("bob", "nobody"):
        client = new(raw, domain="b.test")
        await client.connect()
        await client.open_stream()
        await client.starttls()
        await client.open_stream()
        answer = await client.authenticate(user, "wrong password")
        assert "<not-authorized/>" in answer


async def test_direct_tls_port(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw, domain="b.test", port=5223, direct_tls=True)
    await client.connect()
    features = await client.open_stream()
    assert "starttls" not in features and "SCRAM-SHA-256-PLUS" in features
    assert client.ssl_object().version() in ("TLSv1.2", "TLSv1.3")
    result = await client.authenticate("bob", PASSWORD, "SCRAM-SHA-256-PLUS", "tls-exporter")
    assert "<success" in result
    await client.open_stream()
    assert await client.bind("direct") == "bob@b.test/direct"


async def test_unknown_host_gets_host_unknown(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw, domain="elsewhere.test")
    await client.connect()
    await client.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                      "xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.test' version='1.0'>")
    text = await client.read_to_eof()
    assert "<stream:stream" in text
    assert "<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text


async def test_bind_conflict_replaces_older_session(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    first = new(raw)
    await first.login("carol", PASSWORD, resource="same")
    second = new(raw)
    assert await second.login("carol", PASSWORD, resource="same") == "carol@a.test/same"
    closing = await first.read_to_eof()
    assert "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closing
    # The new session works: it answers a ping.
    await second.send("<iq type='get' id='p1' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert "type='result'" in await second.read_until(r"<iq[^>]*id='p1'[^>]*/>|<iq[^>]*id='p1'.*?</iq>")


async def test_empty_resource_gets_generated_one(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    jid = await client.login("dave", PASSWORD, resource="")
    assert jid.startswith("dave@a.test/") and len(jid) > len("dave@a.test/")


async def test_spoofed_from_is_invalid_from(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.login("dave", PASSWORD, resource="spoof")
    await client.send("<message from='alice@a.test/x' to='bob@b.test'><body>not me</body></message>")
    assert "<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in await client.read_to_eof()


async def test_server_disco_version_and_ping(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    client = new(raw)
    await client.login("dave", PASSWORD, resource="disco")
    await client.send("<iq type='get' id='d1' to='a.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    info = await client.read_until(r"<iq[^>]*id='d1'.*?</iq>")
    for feature in ("urn:xmpp:carbons:2", "urn:xmpp:blocking", "msgoffline", "urn:xmpp:ping", "vcard-temp"):
        assert f"var='{feature}'" in info
    await client.send("<iq type='get' id='d2'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    account = await client.read_until(r"<iq[^>]*id='d2'.*?</iq>")
    assert "urn:xmpp:mam:2" in account and "category='account'" in account
    await client.send("<iq type='get' id='v1' to='b.test'><query xmlns='jabber:iq:version'/></iq>")
    assert "<name>peerage</name>" in await client.read_until(r"<iq[^>]*id='v1'.*?</iq>")
    await client.send("<iq type='get' id='u1' to='b.test'><unknown xmlns='urn:example:nothing'/></iq>")
    assert "<service-unavailable" in await client.read_until(r"<iq[^>]*id='u1'.*?</iq>")


async def test_authentication_failures_are_throttled(xmpp_server: PeerageServer, raw: list[RawClient]) -> None:
    # [limits] auth_failures_per_account = 5 by default: then attempts are delayed, then refused.
    refused = False
    for _ in range(12):
        client = new(raw)
        await client.connect()
        await client.open_stream()
        await client.starttls()
        await client.open_stream()
        answer = await client.authenticate("alice", "not the password")
        await client.close()
        if "temporary-auth-failure" in answer:
            refused = True
            break
        assert "<not-authorized/>" in answer
    assert refused
    # Another account from the same address is still fine (below the per-IP refusal level).
    ok = new(raw, domain="b.test")
    assert await ok.login("bob", PASSWORD, resource="after-throttle")
    await asyncio.sleep(0)
