"""Property tests: the sans-I/O cores never crash on hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peerage.xmpp import dialback
from peerage.xmpp.federation import CertificateKind, Level, ServerProfile, predict_level
from peerage.xmpp.stream import Element
from peerage.xmpp.x509 import Identities, _der_string, match_domain

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-*_", max_size=30)


@given(st.binary(max_size=64), st.sampled_from([0x0C, 0x16]))
def test_der_strings_never_crash(data: bytes, tag: int) -> None:
    result = _der_string(data, tag)
    assert result is None or isinstance(result, str)


@given(st.lists(names, max_size=4), st.lists(names, max_size=4), st.lists(names, max_size=4), names)
def test_name_matching_never_crashes_and_needs_a_listed_name(dns, srv, xmpp, domain) -> None:
    matched = match_domain(Identities(tuple(dns), tuple(srv), tuple(xmpp)), domain)
    if matched is not None:
        assert any(part in matched for part in (*dns, *srv, *xmpp))


@given(st.sampled_from(["result", "verify", "other"]),
       st.dictionaries(st.sampled_from(["from", "to", "id", "type"]), names, max_size=4),
       st.text(max_size=80))
@settings(max_examples=300)
def test_dialback_parse_accepts_or_refuses_cleanly(name: str, attrs: dict[str, str], text: str) -> None:
    element = Element(name, dialback.DIALBACK_NS, attrs, [text])
    try:
        message = dialback.parse(element)
    except dialback.DialbackParseError:
        return
    assert message.from_ and message.to


@given(st.sampled_from(list(Level)[1:]), st.sampled_from(list(CertificateKind)), st.booleans(),
       st.sampled_from(list(Level)[1:]), st.sampled_from(list(CertificateKind)), st.booleans())
def test_prediction_never_exceeds_what_both_sides_can_do(l1, c1, g1, l2, c2, g2) -> None:
    initiator, receiver = ServerProfile(l1, c1, g1), ServerProfile(l2, c2, g2)
    prediction = predict_level(initiator, receiver)
    if prediction.level is not Level.UNSUCCESSFUL:
        # Whatever is reached satisfies both policies.
        assert prediction.level >= initiator.required or initiator.required is Level.PERMISSIVE
        assert prediction.level >= receiver.required or receiver.required is Level.PERMISSIVE
    if prediction.level is Level.TRUSTED:
        assert c1 is CertificateKind.CA_ISSUED and c2 is CertificateKind.CA_ISSUED
    if g1 or g2:
        assert prediction.level in (Level.VERIFIED, Level.UNSUCCESSFUL)
