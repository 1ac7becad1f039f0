"""The initiating side's s2s negotiation (``peerage.xmpp.s2s_stream``), in process: elements in,
actions and a result out, at the XEP-0238 levels. The wire tests (Prosody, ejabberd, peerage) run
the same machine through ``peerage.xmpp.s2s``."""

from __future__ import annotations

from peerage.xmpp import dialback
from peerage.xmpp import s2s_stream as st
from peerage.xmpp.federation import CertificateKind, Level, ServerProfile
from peerage.xmpp.stream import SASL_NS, STREAM_NS, TLS_NS, Element
from peerage.xmpp.x509 import CertificateCheck

LOCAL, REMOTE = "a.test", "b.test"
TRUSTED = CertificateCheck(present=True, chain_ok=True, chain_reason="ok", matched="DNS-ID b.test")
SELF_SIGNED = CertificateCheck(present=True, chain_ok=False, chain_reason="self-signed", self_signed=True)
HEADER = {"id": "stream-1", "version": "1.0", "from": REMOTE}


def initiator(level: Level, **kwargs: object) -> st.Initiator:
    profile = ServerProfile(level, CertificateKind.CA_ISSUED)
    return st.Initiator(profile, LOCAL, REMOTE, present_certificate=True,
                        dialback_key=lambda stream_id: f"key-for-{stream_id}", **kwargs)  # type: ignore[arg-type]


def features(*, tls: bool = False, tls_required: bool = False, external: bool = False,
             dialback_offered: bool = True, bidi: bool = False) -> Element:
    element = Element("features", STREAM_NS)
    if tls:
        starttls = element.add("starttls", TLS_NS)
        if tls_required:
            starttls.add("required")
    if external:
        element.add("mechanisms", SASL_NS).add("mechanism", text="EXTERNAL")
    if dialback_offered:
        element.append(dialback.features_element())
    if bidi:
        element.add("bidi", st.BIDI_FEATURE_NS)
    return element


def sent(actions: list[st.Action]) -> str:
    return "".join(a.data.decode() for a in actions if isinstance(a, st.Send | st.SendHeader))


def result(valid: str, from_: str = REMOTE, to: str = LOCAL) -> Element:
    return Element("result", dialback.DIALBACK_NS, {"from": from_, "to": to, "type": valid})


def test_verified_level_tries_tls_and_falls_back_to_clear_when_it_authenticates_nothing() -> None:
    machine = initiator(Level.VERIFIED)
    assert isinstance(machine.start()[0], st.SendHeader)
    assert machine.opened(HEADER) == [] and machine.expects is st.Expect.ELEMENT
    assert "<starttls" in sent(machine.element(features(tls=True)))
    assert machine.element(Element("proceed", TLS_NS)) == [st.StartTls(True)]
    assert machine.expects is st.Expect.TLS
    assert machine.tls_established(SELF_SIGNED) == []
    assert isinstance(machine.result, st.FallBackToClear)
    # The next connection skips TLS and uses dialback on the clear stream (level V).
    again = initiator(Level.VERIFIED, skip_tls=True)
    again.start()
    again.opened(HEADER)
    out = sent(again.element(features(tls=True)))
    assert "<db:result" in out and "key-for-stream-1" in out and again.awaits_dialback
    # Answers for another pair are not ours; the valid one for ours ends the negotiation.
    assert again.element(result("valid", from_="c.test")) == [] and again.result is None
    again.element(result("valid"))
    assert again.result == st.Authenticated("dialback", "stream-1", False, False, None)


def test_encrypted_level_takes_tls_then_external_and_restarts() -> None:
    machine = initiator(Level.ENCRYPTED, bidi_enabled=True)
    machine.start()
    machine.opened(HEADER)
    machine.element(features(tls=True, tls_required=True))
    machine.element(Element("proceed", TLS_NS))
    header = machine.tls_established(TRUSTED)
    assert isinstance(header[0], st.SendHeader) and machine.expects is st.Expect.HEADER
    machine.opened({**HEADER, "id": "stream-2"})
    out = sent(machine.element(features(external=True, bidi=True)))
    assert "<bidi xmlns='urn:xmpp:bidi'/>" in out and "mechanism='EXTERNAL'>YS50ZXN0</auth>" in out
    actions = machine.element(Element("success", SASL_NS))
    assert isinstance(actions[0], st.Restart) and isinstance(actions[1], st.SendHeader)
    machine.opened({**HEADER, "id": "stream-3"})
    machine.element(Element("features", STREAM_NS))
    assert machine.result == st.Authenticated("sasl-external", "", True, True, TRUSTED)


def test_external_refused_falls_back_to_dialback_on_the_same_stream_below_trusted() -> None:
    machine = initiator(Level.ENCRYPTED)
    machine.start(direct_tls=SELF_SIGNED)  # Direct TLS (XEP-0368): encrypted from the start
    machine.opened(HEADER)
    machine.element(features(external=True))
    failure = Element("failure", SASL_NS)
    failure.add("not-authorized")
    failure.add("text", text="self signed certificate")
    assert "<db:result" in sent(machine.element(failure))
    machine.element(result("valid"))
    assert isinstance(machine.result, st.Authenticated)
    assert machine.result.method == "dialback" and machine.result.encrypted
    assert machine.result.note == "SASL EXTERNAL refused (not-authorized: self signed certificate), fell back to dialback"


def test_refusals_end_with_a_reason() -> None:
    trusted = initiator(Level.TRUSTED)
    trusted.start(direct_tls=SELF_SIGNED)
    assert isinstance(trusted.result, st.Failed) and "trusted certificate" in trusted.result.reason
    no_external = initiator(Level.TRUSTED)
    no_external.start(direct_tls=TRUSTED)
    no_external.opened(HEADER)
    no_external.element(features())
    assert isinstance(no_external.result, st.Failed) and "requires SASL EXTERNAL" in no_external.result.reason
    encrypted = initiator(Level.ENCRYPTED)
    encrypted.start()
    encrypted.opened(HEADER)
    encrypted.element(features())
    assert encrypted.result == st.Failed("our policy requires TLS and the receiver offers none")
    legacy = initiator(Level.ENCRYPTED)
    legacy.start()
    legacy.opened({"id": "old"})  # no version: pre-1.0, no TLS possible
    assert isinstance(legacy.result, st.Failed) and "pre-1.0" in legacy.result.reason
    refused = initiator(Level.VERIFIED)
    refused.start()
    refused.opened(HEADER)
    refused.element(features(tls=True, tls_required=True))
    refused.element(Element("failure", TLS_NS))
    assert refused.result == st.Failed("the peer refused STARTTLS")
    invalid = initiator(Level.VERIFIED)
    invalid.start()
    invalid.opened(HEADER)
    invalid.element(features())
    invalid.element(result("invalid"))
    assert invalid.result == st.Failed("the receiver could not verify our dialback key")


def test_a_verify_stream_takes_tls_only_when_required_and_matches_the_stream_id() -> None:
    machine = initiator(Level.VERIFIED, verify=("their-stream", "their-key"))
    machine.start()
    machine.opened(HEADER)
    assert "<starttls" in sent(machine.element(features(tls=True, tls_required=True)))
    machine.element(Element("proceed", TLS_NS))
    machine.tls_established(SELF_SIGNED)  # no certificate rule on a verification-only stream
    machine.opened(HEADER)
    out = sent(machine.element(features()))
    assert "<db:verify" in out and "id='their-stream'" in out and "their-key" in out
    other = Element("verify", dialback.DIALBACK_NS, {"from": REMOTE, "to": LOCAL, "id": "x", "type": "valid"})
    assert machine.element(other) == [] and machine.result is None
    answer = Element("verify", dialback.DIALBACK_NS, {"from": REMOTE, "to": LOCAL, "id": "their-stream",
                                                      "type": "invalid"})
    machine.element(answer)
    assert machine.result == st.Verified(False)
