"""Unit tests of the sans-I/O pieces: SASL steps, stream-management counters, CSI queue, JIDs, routing."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from peerage.identity.credentials import scram_credential
from peerage.identity.sasl import NeedCredential, NeedPassword, offered_mechanisms
from peerage.identity.scram import scram_client_proof
from peerage.xmpp.c2s_stream import (
    SASL_NS,
    Authenticated,
    AuthFailed,
    C2SStream,
    Close,
    Lookup,
    Restart,
    Send,
)
from peerage.xmpp.features.csi import MAX_HELD_STANZAS, CsiQueue
from peerage.xmpp.features.sm import H_MODULO, StreamManagementState
from peerage.xmpp.jid import JidError, bare_of, split_jid
from peerage.xmpp.router import Router
from peerage.xmpp.stream import Element, StreamOpened, XmlStreamParser

PASSWORD = "pencil"
SALT = b"0123456789abcdef"


def auth(mechanism: str, payload: bytes) -> Element:
    return Element("auth", SASL_NS, {"mechanism": mechanism}, [base64.b64encode(payload).decode()])


def response(payload: bytes) -> Element:
    return Element("response", SASL_NS, children=[base64.b64encode(payload).decode()])


def sasl_stream(bindings: dict[str, bytes] | None = None) -> C2SStream:
    """A client stream on TLS, its header read: SASL comes next (the XML framing of identity.sasl)."""
    stream = C2SStream(tls=True, tls_available=True, hosted=lambda d: d == "d", features=lambda: [],
                       default_domain="d")
    stream.opened(StreamOpened({"to": "d", "version": "1.0"}, "jabber:client"), bindings or {})
    return stream


def sent_element(actions: list[Any]) -> Element:
    """The one first-level element the actions send, parsed back."""
    data = b"".join(action.data for action in actions if isinstance(action, Send))
    parser = XmlStreamParser(1 << 20)
    events = parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                         + data)
    elements = [event for event in events if isinstance(event, Element)]
    assert len(elements) == 1, data
    return elements[0]


def failure_condition(actions: list[Any]) -> str | None:
    """The condition of the SASL <failure/> the actions send (None if they send none)."""
    if not any(isinstance(action, AuthFailed) for action in actions):
        return None
    element = sent_element([a for a in actions if isinstance(a, Send)][:1])
    assert element.name == "failure" and element.xmlns == SASL_NS
    return next(element.elements()).name


def run_scram(stream: C2SStream, mechanism: str, password: str, gs2: str = "n,,",
              cb_data: bytes = b"") -> list[Any]:
    hash_name = "SHA-256" if "256" in mechanism else "SHA-1"
    nonce = base64.b64encode(os.urandom(12)).decode()
    first_bare = f"n=user,r={nonce}"
    out = stream.element(auth(mechanism, (gs2 + first_bare).encode()))
    if not isinstance(out[0], Lookup):
        return out
    step = out[0].step
    assert isinstance(step, NeedCredential) and step.username == "user" and step.hash_name == hash_name
    assert out[0].account == "user@d"
    challenge = sent_element(stream.sasl_result(scram_credential(hash_name, PASSWORD, SALT, 4096)))
    assert challenge.name == "challenge"
    server_first = base64.b64decode(challenge.text).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    without_proof = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    proof, server_signature = scram_client_proof(hash_name, password, base64.b64decode(fields["s"]),
                                                 int(fields["i"]), auth_message)
    final = stream.element(response(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
    if isinstance(final[0], Authenticated):
        success = sent_element(final)
        assert success.name == "success"
        assert base64.b64decode(success.text) == b"v=" + base64.b64encode(server_signature)
    return final


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_success_and_wrong_password(mechanism: str) -> None:
    ok = run_scram(sasl_stream(), mechanism, PASSWORD)
    assert isinstance(ok[0], Authenticated) and ok[0].account == "user@d" and isinstance(ok[-1], Restart)
    bad = run_scram(sasl_stream(), mechanism, "wrong")
    assert failure_condition(bad) == "not-authorized"


def test_scram_plus_checks_binding_data() -> None:
    bindings = {"tls-exporter": b"E" * 32}
    stream = sasl_stream(bindings)
    features = stream.opened(StreamOpened({"to": "d", "version": "1.0"}, "jabber:client"), bindings)
    assert b"<mechanism>SCRAM-SHA-256-PLUS</mechanism>" in b"".join(a.data for a in features if isinstance(a, Send))
    assert b"urn:xmpp:sasl-cb:0" in b"".join(a.data for a in features if isinstance(a, Send))  # XEP-0440
    ok = run_scram(sasl_stream(bindings), "SCRAM-SHA-256-PLUS", PASSWORD, "p=tls-exporter,,", b"E" * 32)
    assert isinstance(ok[0], Authenticated)
    bad = run_scram(sasl_stream(bindings), "SCRAM-SHA-256-PLUS", PASSWORD, "p=tls-exporter,,", b"X" * 32)
    assert failure_condition(bad) is not None
    downgrade = run_scram(sasl_stream(bindings), "SCRAM-SHA-256", PASSWORD, "y,,")
    assert failure_condition(downgrade) is not None


def test_plain_only_over_tls_and_not_offered_without() -> None:
    assert "PLAIN" not in offered_mechanisms(secure=False, channel_bindings={})
    stream = sasl_stream()
    out = stream.element(auth("PLAIN", b"\0user\0pw"))
    assert isinstance(out[0], Lookup) and isinstance(out[0].step, NeedPassword) and out[0].step.password == "pw"
    assert failure_condition(stream.sasl_result(False)) == "not-authorized"


@pytest.mark.parametrize("payload,condition", [
    (b"user\0pw", "malformed-request"),
    (b"other\0user\0pw", "invalid-authzid"),
])
def test_plain_malformed(payload: bytes, condition: str) -> None:
    assert failure_condition(sasl_stream().element(auth("PLAIN", payload))) == condition


def test_bad_base64_unknown_mechanism_and_external() -> None:
    stream = sasl_stream()
    out = stream.element(Element("auth", SASL_NS, {"mechanism": "PLAIN"}, ["***"]))
    assert failure_condition(out) == "incorrect-encoding"
    assert failure_condition(stream.element(auth("DIGEST-MD5", b""))) == "invalid-mechanism"
    # The third failure on one stream closes it (RFC 6120 section 6.4.5 lets the server give up).
    out = stream.element(auth("EXTERNAL", b""))
    assert failure_condition(out) == "invalid-mechanism" and isinstance(out[-1], Close)


def test_abort_is_not_counted_as_a_failed_attempt() -> None:
    stream = sasl_stream()
    stream.element(auth("SCRAM-SHA-256", b"n,,n=user,r=abc"))
    out = stream.element(Element("abort", SASL_NS))
    assert [a.counts for a in out if isinstance(a, AuthFailed)] == [False]
    assert failure_condition(out) == "aborted"


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


def test_presence_avatar_hash_is_one_shared_element_per_hash() -> None:
    """XEP-0153 section 3.1: each available presence carries <x><photo>hash</photo></x>; the element
    is shared between presences with the same hash (every idle session keeps its last presence)."""
    from types import SimpleNamespace

    from peerage.xmpp.events import Events
    from peerage.xmpp.features.avatar import VCARD_UPDATE_NS, AvatarConversion
    from peerage.xmpp.stanzas import StanzaEvent
    from peerage.xmpp.stream import serialize

    feature = AvatarConversion(SimpleNamespace(events=Events()))  # type: ignore[arg-type]
    feature.hashes.update({"u@a.test": "", "v@a.test": "ab12"})
    sent = []
    for bare in ("u@a.test", "u@a.test", "v@a.test"):
        stanza = Element("presence", "", {"from": f"{bare}/r"})
        event = StanzaEvent(stanza, SimpleNamespace(bare_jid=bare), bare, "a.test", "", None, {})
        assert feature._presence(event) is None
        sent.append(stanza)
    first, second, third = (stanza.find("x", VCARD_UPDATE_NS) for stanza in sent)
    assert first is not None and first is second and third is not first
    assert serialize(sent[0]) == ("<presence from='u@a.test/r'><x xmlns='vcard-temp:x:update'><photo></photo>"
                                  "</x></presence>")
    assert third is not None and third.find_text("photo", VCARD_UPDATE_NS) == "ab12"
