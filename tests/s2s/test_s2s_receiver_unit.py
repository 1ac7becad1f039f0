"""The receiving side's s2s negotiation (``peerage.xmpp.s2s_stream.Receiver``), in process: the
peer's header and elements in, actions out, at the XEP-0238 levels, with a fake server behind it
(its policy, hosted domains, keys and certificate checks). The wire tests (Prosody, ejabberd,
peerage, the XEP-0238 table) run the same machine through ``peerage.xmpp.s2s.InboundStream``."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from peerage.xmpp import dialback
from peerage.xmpp import s2s_stream as st
from peerage.xmpp.dialback import DialbackError
from peerage.xmpp.federation import CertificateKind, DomainPolicy, Level, ServerProfile
from peerage.xmpp.stream import SASL_NS, STREAM_NS, TLS_NS, Element
from peerage.xmpp.x509 import CertificateCheck

LOCAL, REMOTE = "a.test", "b.test"
HEADER = {"version": "1.0", "from": REMOTE, "to": LOCAL}


@dataclass
class Server:
    """The fake server: one hosted domain, one level for every peer, certificates by name."""

    required: Level = Level.ENCRYPTED
    certificate: CertificateKind = CertificateKind.CA_ISSUED
    denied: frozenset[str] = frozenset()
    is_throttled: bool = False
    default_domain: str = LOCAL
    hosted_domains: list[str] = field(default_factory=lambda: [LOCAL])
    tls_available: bool = True
    bidi_enabled: bool = True

    def is_hosted(self, domain: str) -> bool:
        return domain in self.hosted_domains

    def profile(self, remote: str, local: str) -> ServerProfile:
        return ServerProfile(self.required, self.certificate)

    def domain_policy(self, remote: str) -> DomainPolicy:
        allowed = remote not in self.denied
        return DomainPolicy(self.required, False, allowed, "" if allowed else f"{remote} is denied")

    def check_certificate(self, der: bytes | None, domain: str) -> CertificateCheck:
        # b"ca:<name>" is a CA-issued certificate naming <name>; anything else is self-signed.
        if not der:
            return CertificateCheck(False)
        if der.startswith(b"ca:"):
            named = der[3:].decode()
            return CertificateCheck(True, True, "chains to a trusted CA",
                                    f"DNS-ID {named}" if named == domain else None)
        return CertificateCheck(True, False, "self-signed", self_signed=True)

    def key_is_ours(self, originator: str, receiver: str, stream_id: str, key: str) -> bool:
        return key == f"key:{originator}:{receiver}:{stream_id}"

    def throttled(self) -> bool:
        return self.is_throttled


def receiver(server: Server | None = None, **kwargs: object) -> st.Receiver:
    ids = iter(f"id-{n}" for n in range(1, 100))
    return st.Receiver(server or Server(), new_stream_id=lambda: next(ids), **kwargs)  # type: ignore[arg-type]


def sent(actions: list[st.ReceiverAction]) -> str:
    return "".join(a.data.decode() for a in actions if isinstance(a, st.Send | st.SendHeader))


def of(kind: type, actions: list[st.ReceiverAction]) -> list:
    return [a for a in actions if isinstance(a, kind)]


def db_result(key: str = "the-key", from_: str = REMOTE, to: str = LOCAL) -> Element:
    return Element("result", dialback.DIALBACK_NS, {"from": from_, "to": to}, [key])


def stanza(from_: str = f"romeo@{REMOTE}", to: str = f"juliet@{LOCAL}") -> Element:
    return Element("message", "", {"from": from_, "to": to})


def test_verified_clear_stream_dialback_then_stanzas() -> None:
    machine = receiver(Server(required=Level.VERIFIED, certificate=CertificateKind.SELF_SIGNED))
    out = sent(machine.opened(HEADER))
    # Our header answers theirs (id, from our domain, to theirs); the features offer optional TLS,
    # dialback and bidi.
    assert "id='id-1'" in out and f"from='{LOCAL}'" in out and f"to='{REMOTE}'" in out
    assert f"<starttls xmlns='{TLS_NS}'/>" in out and "urn:xmpp:features:dialback" in out
    assert "urn:xmpp:features:bidi" in out and "EXTERNAL" not in out
    # A stanza before any authentication is delivered only as far as the service's address check:
    # no domain is authorised yet.
    assert of(st.Deliver, machine.element(stanza())) and machine.remote_domains() == set()
    assert machine.element(db_result()) == [st.Verify(REMOTE, LOCAL, "id-1", "the-key")]
    actions = machine.key_verified(REMOTE, LOCAL, True)
    assert "<db:result" in sent(actions) and "type='valid'" in sent(actions)
    assert of(st.PairOpened, actions) == [st.PairOpened(
        REMOTE, LOCAL, Level.VERIFIED, "dialback",
        "clear stream, dialback key confirmed by the authoritative server of b.test")]
    assert machine.authenticated and machine.authorised(REMOTE, LOCAL)
    assert not machine.authorised(REMOTE, "other.test") and machine.remote_domains() == {REMOTE}
    # The end of an authenticated stream leaves no "never authenticated" record.
    assert machine.closed_by_peer() == [st.Close(True)] and machine.closed


def test_starttls_then_sasl_external_restarts_and_attaches_bidi() -> None:
    machine = receiver(Server(required=Level.ENCRYPTED))
    out = sent(machine.opened(HEADER))
    assert "<required/></starttls>" in out  # encrypted level: nothing before TLS
    assert machine.element(Element("bidi", st.BIDI_NS)) == []
    assert machine.element(Element("starttls", TLS_NS)) == [
        st.Send(f"<proceed xmlns='{TLS_NS}'/>".encode()), st.StartTlsServer()]
    assert machine.tls_established(f"ca:{REMOTE}".encode()) == [] and machine.expects_header
    out = sent(machine.opened(HEADER))
    assert "id='id-2'" in out and "<mechanism>EXTERNAL</mechanism>" in out and "starttls" not in out
    assert "bidi" not in out  # already asked for
    authzid = base64.b64encode(REMOTE.encode()).decode()
    actions = machine.element(Element("auth", SASL_NS, {"mechanism": "EXTERNAL"}, [authzid]))
    assert actions[:2] == [st.Send(f"<success xmlns='{SASL_NS}'/>".encode()), st.Restart()]
    opened = of(st.PairOpened, actions)[0]
    assert (opened.level, opened.authentication, opened.bidi) == (Level.TRUSTED, "sasl-external", True)
    # No bidi stanza before the restarted stream: our stanzas ride on it once the new header is out.
    assert not of(st.AttachBidi, actions)
    actions = machine.opened(HEADER)
    assert sent(actions).endswith("<stream:features/>")  # nothing more to negotiate
    assert of(st.AttachBidi, actions) == [st.AttachBidi(LOCAL, REMOTE)]
    assert machine.authorised(REMOTE, LOCAL) and machine.authorised(REMOTE, "any.test")


def test_sasl_external_refusals() -> None:
    def after_tls(certificate: bytes, server: Server | None = None) -> st.Receiver:
        machine = receiver(server)
        machine.opened(HEADER)
        machine.element(Element("starttls", TLS_NS))
        machine.tls_established(certificate)
        return machine

    # A self-signed certificate: EXTERNAL is not offered; asking anyway is refused and recorded.
    machine = after_tls(b"self-signed")
    assert "EXTERNAL" not in sent(machine.opened(HEADER))
    actions = machine.element(Element("auth", SASL_NS, {"mechanism": "EXTERNAL"}, ["="]))
    assert "<not-authorized/>" in sent(actions) and of(st.AuthFailure, actions) == [st.AuthFailure("EXTERNAL")]
    assert "SASL EXTERNAL refused: self-signed" in of(st.PairFailed, actions)[0].reason
    assert not machine.authenticated
    # An authorization identity that is not the stream's 'from'.
    machine = after_tls(f"ca:{REMOTE}".encode())
    machine.opened(HEADER)
    other = base64.b64encode(b"evil.test").decode()
    assert "<not-authorized/>" in sent(machine.element(Element("auth", SASL_NS, {"mechanism": "EXTERNAL"}, [other])))
    # Bad base64, another mechanism, and a throttled address.
    machine = after_tls(f"ca:{REMOTE}".encode())
    machine.opened(HEADER)
    assert "<incorrect-encoding/>" in sent(machine.element(Element("auth", SASL_NS, {"mechanism": "EXTERNAL"}, ["!!"])))
    assert "<invalid-mechanism/>" in sent(machine.element(Element("auth", SASL_NS, {"mechanism": "PLAIN"})))
    machine = after_tls(f"ca:{REMOTE}".encode(), Server(is_throttled=True))
    machine.opened(HEADER)
    authzid = base64.b64encode(REMOTE.encode()).decode()
    assert "<not-authorized/>" in sent(machine.element(Element("auth", SASL_NS, {"mechanism": "EXTERNAL"}, [authzid])))
    assert not machine.authenticated


def test_trusted_level_refuses_a_self_signed_certificate_after_our_header() -> None:
    machine = receiver(Server(required=Level.TRUSTED), direct_tls=b"self-signed")
    actions = machine.opened(HEADER)
    assert isinstance(actions[0], st.SendHeader)  # a stream error needs our header first
    assert "a CA-issued certificate" in of(st.PairFailed, actions)[0].reason
    assert actions[-1] == st.Fail("policy-violation", "a certificate from a trusted CA is required")
    assert machine.closed and machine.element(stanza()) == []


def test_dialback_refusals_and_an_invalid_key() -> None:
    # The encrypted level: dialback on a clear stream is refused (TLS first).
    machine = receiver(Server(required=Level.ENCRYPTED))
    machine.opened(HEADER)
    actions = machine.element(db_result())
    assert "type='error'" in sent(actions) and "policy-violation" in sent(actions)
    assert of(st.PairFailed, actions)[0].reason == "our policy for this domain requires TLS before dialback"
    # A domain we do not host, a pair already pending, a denied domain, a throttled address.
    machine = receiver(Server(required=Level.VERIFIED))
    machine.opened(HEADER)
    assert "item-not-found" in sent(machine.element(db_result(to="elsewhere.test")))
    assert of(st.Verify, machine.element(db_result()))
    assert "policy-violation" in sent(machine.element(db_result()))
    denied = receiver(Server(required=Level.VERIFIED, denied=frozenset({REMOTE})))
    denied.opened(HEADER)
    assert of(st.PairFailed, denied.element(db_result()))[0].reason == "b.test is denied"
    throttled = receiver(Server(required=Level.VERIFIED, is_throttled=True))
    throttled.opened(HEADER)
    actions = throttled.element(db_result())
    assert not of(st.Verify, actions) and "policy-violation" in sent(actions)
    assert of(st.PairFailed, actions)[0].verification
    # The authoritative server says the key is wrong: invalid, throttle, record, close (XEP-0220 2.1.4).
    actions = machine.key_verified(REMOTE, LOCAL, False)
    assert of(st.AuthFailure, actions) == [st.AuthFailure("dialback")] and "type='invalid'" in sent(actions)
    assert "wrong dialback key" in of(st.PairFailed, actions)[0].reason
    assert actions[-1] == st.Close(True) and machine.closed
    # No answer from it: an error, and the stream stays open for another try.
    again = receiver(Server(required=Level.VERIFIED))
    again.opened(HEADER)
    again.element(db_result())
    actions = again.key_verified(REMOTE, LOCAL, DialbackError.REMOTE_SERVER_TIMEOUT)
    assert "remote-server-timeout" in sent(actions) and not again.closed and not again.authenticated


def test_db_verify_answers_for_our_own_keys_and_marks_the_stream_verification_only() -> None:
    machine = receiver(Server(required=Level.VERIFIED))
    machine.opened({"version": "1.0"})  # a verification stream may name nobody
    ours = Element("verify", dialback.DIALBACK_NS, {"from": REMOTE, "to": LOCAL, "id": "their-id"},
                   [f"key:{REMOTE}:{LOCAL}:their-id"])
    assert "type='valid'" in sent(machine.element(ours))
    forged = Element("verify", dialback.DIALBACK_NS, {"from": REMOTE, "to": LOCAL, "id": "their-id"}, ["nope"])
    assert "type='invalid'" in sent(machine.element(forged))
    assert machine.verification_only
    assert machine.closed_by_peer() == [st.Close(True)]  # no "never authenticated" record


def test_the_end_of_a_stream_that_authenticated_nothing_is_recorded_once() -> None:
    machine = receiver()
    machine.opened(HEADER)
    actions = machine.expired(30)
    assert of(st.PairFailed, actions) == [st.PairFailed(
        REMOTE, LOCAL, "no authentication before the stream ended: not authenticated within 30 s "
        "(negotiation_timeout)")]
    assert actions[-1] == st.Fail("connection-timeout", "authentication did not complete within 30 seconds")
    assert machine.lost("reset") == [] and machine.closed
    # The deadline does nothing to an authenticated stream.
    done = receiver(Server(required=Level.VERIFIED))
    done.opened(HEADER)
    done.element(db_result())
    done.key_verified(REMOTE, LOCAL, True)
    assert done.expired(30) == []


def test_bad_headers_and_elements_get_stream_errors_after_our_header() -> None:
    unknown = receiver()
    actions = unknown.opened({**HEADER, "to": "elsewhere.test"})
    assert isinstance(actions[0], st.SendHeader) and actions[-1] == st.Fail("host-unknown", "elsewhere.test is not served here")
    early = receiver()
    actions = early.element(stanza())
    assert isinstance(actions[0], st.SendHeader) and actions[-1] == st.Fail("not-well-formed", "expected a stream header")
    namespace = receiver()
    assert namespace.opened(HEADER, "jabber:client")[-1].condition == "invalid-namespace"  # type: ignore[union-attr]
    odd = receiver()
    odd.opened(HEADER)
    actions = odd.element(Element("nonsense", "urn:example"))
    assert not of(st.SendHeader, actions) and actions[-1] == st.Fail("unsupported-stanza-type", "unexpected <nonsense/>")
    assert of(st.PairFailed, actions)  # the peer named itself and never authenticated
    twice = receiver()
    twice.opened(HEADER)
    assert twice.opened(HEADER)[-1] == st.Fail("not-well-formed", "unexpected stream header")


def test_a_peer_stream_error_closes_without_an_error_of_ours() -> None:
    machine = receiver()
    machine.opened(HEADER)
    error = Element("error", STREAM_NS)
    error.add("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams")
    error.add("text", "urn:ietf:params:xml:ns:xmpp-streams", text="self signed certificate")
    actions = machine.element(error)
    reason = "<policy-violation/> the peer sent a stream error: self signed certificate"
    assert of(st.PairFailed, actions)[0].reason == f"no authentication before the stream ended: {reason}"
    assert actions[-1] == st.Close(True, f"closed by {reason}") and not of(st.Fail, actions)


def test_permissive_receiver_takes_stanzas_from_a_domain_that_never_verified() -> None:
    machine = receiver(Server(required=Level.PERMISSIVE, certificate=CertificateKind.NONE))
    out = sent(machine.opened(HEADER))
    assert "starttls" not in out  # nothing to show in TLS
    message = stanza()
    actions = machine.element(message)
    assert actions == [st.PairOpened(REMOTE, LOCAL, Level.PERMISSIVE, "none",
                                     "permissive: stanzas accepted without any verification"),
                       st.Deliver(message)]
    assert of(st.PairOpened, machine.element(stanza())) == []  # recorded once
    assert not of(st.PairOpened, machine.element(stanza(to="x@elsewhere.test")))


def test_a_pre_1_0_peer_gets_a_header_without_version_and_no_features() -> None:
    machine = receiver(Server(required=Level.VERIFIED))
    actions = machine.opened({"from": REMOTE, "to": LOCAL})
    assert len(actions) == 1 and "version='1.0'" not in sent(actions).removeprefix("<?xml version='1.0'?>")
    assert of(st.Verify, machine.element(db_result()))
