"""Unit tests of the sans-I/O pieces: SASL steps, stream-management counters, CSI queue, JIDs, routing."""

from __future__ import annotations

import base64
import os

import pytest

from peerage.identity.credentials import scram_credential
from peerage.identity.scram import scram_client_proof
from peerage.xmpp import sasl
from peerage.xmpp.features.csi import MAX_HELD_STANZAS, CsiQueue
from peerage.xmpp.features.sm import H_MODULO, StreamManagementState
from peerage.xmpp.jid import JidError, bare_of, split_jid
from peerage.xmpp.router import Router
from peerage.xmpp.stream import Element

PASSWORD = "pencil"
SALT = b"0123456789abcdef"


def auth(mechanism: str, payload: bytes) -> Element:
    return Element("auth", sasl.SASL_NS, {"mechanism": mechanism}, [base64.b64encode(payload).decode()])


def response(payload: bytes) -> Element:
    return Element("response", sasl.SASL_NS, children=[base64.b64encode(payload).decode()])


def run_scram(exchange: sasl.SaslExchange, mechanism: str, password: str, gs2: str = "n,,",
              cb_data: bytes = b"") -> sasl.Step:
    hash_name = "SHA-256" if "256" in mechanism else "SHA-1"
    nonce = base64.b64encode(os.urandom(12)).decode()
    first_bare = f"n=user,r={nonce}"
    step = exchange.auth(auth(mechanism, (gs2 + first_bare).encode()))
    if not isinstance(step, sasl.NeedCredential):
        return step
    assert step.username == "user" and step.hash_name == hash_name
    step = exchange.credential_found(scram_credential(hash_name, PASSWORD, SALT, 4096))
    assert isinstance(step, sasl.Send)
    server_first = base64.b64decode(step.element.text).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    without_proof = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    proof, server_signature = scram_client_proof(hash_name, password, base64.b64decode(fields["s"]),
                                                 int(fields["i"]), auth_message)
    final = exchange.response(response(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
    if isinstance(final, sasl.Succeeded):
        assert base64.b64decode(final.element.text) == b"v=" + base64.b64encode(server_signature)
    return final


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_success_and_wrong_password(mechanism: str) -> None:
    ok = run_scram(sasl.SaslExchange(tls=True, channel_bindings={}, domain="d"), mechanism, PASSWORD)
    assert isinstance(ok, sasl.Succeeded) and ok.username == "user"
    bad = run_scram(sasl.SaslExchange(tls=True, channel_bindings={}, domain="d"), mechanism, "wrong")
    assert isinstance(bad, sasl.Failed) and bad.condition == "not-authorized"


def test_scram_plus_checks_binding_data() -> None:
    bindings = {"tls-exporter": b"E" * 32}
    exchange = sasl.SaslExchange(tls=True, channel_bindings=bindings, domain="d")
    assert "SCRAM-SHA-256-PLUS" in exchange.offered
    ok = run_scram(exchange, "SCRAM-SHA-256-PLUS", PASSWORD, "p=tls-exporter,,", b"E" * 32)
    assert isinstance(ok, sasl.Succeeded)
    exchange = sasl.SaslExchange(tls=True, channel_bindings=bindings, domain="d")
    bad = run_scram(exchange, "SCRAM-SHA-256-PLUS", PASSWORD, "p=tls-exporter,,", b"X" * 32)
    assert isinstance(bad, sasl.Failed)
    exchange = sasl.SaslExchange(tls=True, channel_bindings=bindings, domain="d")
    downgrade = run_scram(exchange, "SCRAM-SHA-256", PASSWORD, "y,,")
    assert isinstance(downgrade, sasl.Failed)


def test_plain_only_over_tls_and_not_offered_without() -> None:
    assert "PLAIN" not in sasl.offered_mechanisms(tls=False, channel_bindings={})
    exchange = sasl.SaslExchange(tls=False, channel_bindings={}, domain="d")
    step = exchange.auth(auth("PLAIN", b"\0user\0pw"))
    assert isinstance(step, sasl.Failed) and step.condition == "invalid-mechanism"
    exchange = sasl.SaslExchange(tls=True, channel_bindings={}, domain="d")
    step = exchange.auth(auth("PLAIN", b"\0user\0pw"))
    assert isinstance(step, sasl.NeedPassword) and step.password == "pw"
    assert isinstance(exchange.password_checked(False), sasl.Failed)


@pytest.mark.parametrize("payload,condition", [
    (b"user\0pw", "malformed-request"),
    (b"other\0user\0pw", "invalid-authzid"),
])
def test_plain_malformed(payload: bytes, condition: str) -> None:
    exchange = sasl.SaslExchange(tls=True, channel_bindings={}, domain="d")
    step = exchange.auth(auth("PLAIN", payload))
    assert isinstance(step, sasl.Failed) and step.condition == condition


def test_bad_base64_and_unknown_mechanism() -> None:
    exchange = sasl.SaslExchange(tls=True, channel_bindings={}, domain="d")
    step = exchange.auth(Element("auth", sasl.SASL_NS, {"mechanism": "PLAIN"}, ["***"]))
    assert isinstance(step, sasl.Failed) and step.condition == "incorrect-encoding"
    step = exchange.auth(auth("DIGEST-MD5", b""))
    assert isinstance(step, sasl.Failed) and step.condition == "invalid-mechanism"


def test_sm_counters_wrap_and_reject_over_ack() -> None:
    state = StreamManagementState(resumable=True)
    assert state.resume_id
    for index in range(3):
        state.sent(f"<m{index}/>".encode(), None)
    assert state.ack(2) and len(state.unacked) == 1
    assert not state.ack(5)  # more than was ever sent
    state.handled = H_MODULO - 1
    state.count_handled()
    assert state.handled == 0
    state.acked = H_MODULO - 1
    state.sent(b"<x/>", None)
    assert state.ack(0) and len(state.unacked) == 1


def test_csi_keeps_latest_presence_per_sender_and_flushes_on_message() -> None:
    queue = CsiQueue()
    first = Element("presence", "", {"from": "a@b/c"})
    second = Element("presence", "", {"from": "a@b/c"}, [Element("show", "", children=["away"])])
    assert queue.hold(first) and queue.hold(second)
    assert queue.held == [second]
    assert not queue.hold(Element("message", "", {}, [Element("body", "", children=["hi"])]))
    assert queue.hold(Element("message", "", {}, [Element("composing", "http://jabber.org/protocol/chatstates")]))
    for index in range(MAX_HELD_STANZAS):
        queue.hold(Element("presence", "", {"from": f"u{index}@x"}))
    assert len(queue.held) <= MAX_HELD_STANZAS
    assert len(queue.release()) > 0 and queue.held == []


def test_jid_normalisation() -> None:
    assert split_jid("Alice@Example.ORG/Phone") == ("alice", "example.org", "Phone")
    assert bare_of("alice@example.org/x") == "alice@example.org"
    assert split_jid("example.org") == ("", "example.org", "")
    for bad in ("alice@", "a@b/", "@b", "a b@c"):
        with pytest.raises(JidError):
            split_jid(bad)


class FakeSession:
    def __init__(self, bare: str, resource: str) -> None:
        self.bare_jid, self.resource = bare, resource
        self.full_jid = f"{bare}/{resource}"
        self.available, self.priority, self.last_presence = True, 0, None
        self.sent: list[Element] = []

    def send(self, stanza: Element) -> None:
        self.sent.append(stanza)


async def test_router_hands_remote_domains_to_the_remote_sender() -> None:
    router = Router(["a.test"])
    local: list[Element] = []
    remote: list[tuple[Element, str]] = []
    router.set_local_handler(lambda stanza: local.append(stanza))  # type: ignore[func-returns-value]
    result = router.route(Element("message", "", {"from": "x@a.test/r", "to": "y@far.example"}))
    assert result is not None
    await result  # no remote sender: bounced back to the local sender
    assert local and local[0].attrs["type"] == "error" and local[0].attrs["to"] == "x@a.test/r"

    async def sender(stanza: Element, domain: str) -> None:
        remote.append((stanza, domain))

    router.set_remote_sender(sender)
    result = router.route(Element("message", "", {"from": "x@a.test/r", "to": "y@far.example"}))
    assert result is not None
    await result
    assert remote[0][1] == "far.example"
    assert await router.deliver_from_remote(Element("message", "", {"from": "y@far.example", "to": "x@a.test"}))
    assert not await router.deliver_from_remote(Element("message", "", {"from": "y@far.example", "to": "x@b.test"}))


def test_router_bind_replaces_same_full_jid() -> None:
    router = Router(["a.test"])
    first, second = FakeSession("u@a.test", "r"), FakeSession("u@a.test", "r")
    assert router.bind(first) is None  # type: ignore[arg-type]
    assert router.bind(second) is first  # type: ignore[arg-type]
    router.unbind(first)  # type: ignore[arg-type]
    assert router.session("u@a.test", "r") is second
    router.unbind(second)  # type: ignore[arg-type]
    assert router.resources("u@a.test") == {}
