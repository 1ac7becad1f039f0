"""The client stream state machine, sans-I/O: parser events in, actions out, no sockets."""

from __future__ import annotations

import base64

from peerage.identity.sasl import NeedPassword
from peerage.xmpp.c2s_stream import (
    SASL_NS,
    Authenticated,
    Bind,
    C2SStream,
    Close,
    Lookup,
    Manage,
    Restart,
    Send,
    StartTls,
    State,
)
from peerage.xmpp.stream import Element, StreamOpened

DOMAIN = "a.test"


def machine(tls: bool = False) -> C2SStream:
    return C2SStream(tls=tls, tls_available=True, hosted=lambda d: d == DOMAIN, features=lambda: [],
                     default_domain=DOMAIN)


def header(version: str | None = "1.0", to: str = DOMAIN, ns: str = "jabber:client") -> StreamOpened:
    attrs = {"to": to}
    if version is not None:
        attrs["version"] = version
    return StreamOpened(attrs, ns)


def sent(actions: list[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def test_the_negotiation_goes_tls_then_sasl_then_bind() -> None:
    stream = machine()
    out = stream.opened(header())
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>" in sent(out)
    assert stream.state is State.TLS
    out = stream.element(Element("starttls", "urn:ietf:params:xml:ns:xmpp-tls"))
    assert isinstance(out[-1], StartTls) and stream.state is State.AUTH
    out = stream.opened(header())
    assert b"<mechanism>PLAIN</mechanism>" in sent(out)
    auth = Element("auth", SASL_NS, {"mechanism": "PLAIN"})
    auth.children.append(base64.b64encode(b"\0alice\0secret").decode())
    out = stream.element(auth)
    assert isinstance(out[0], Lookup) and isinstance(out[0].step, NeedPassword)
    assert out[0].account == f"alice@{DOMAIN}"
    out = stream.sasl_result(True)
    assert isinstance(out[0], Authenticated) and isinstance(out[-1], Restart)
    assert stream.state is State.BIND
    out = stream.opened(header())
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in sent(out)
    iq = Element("iq", "", {"type": "set", "id": "b"})
    iq.add("bind", "urn:ietf:params:xml:ns:xmpp-bind").add("resource", text="laptop")
    out = stream.element(iq)
    assert isinstance(out[0], Bind) and out[0].resource == "laptop"
    out = stream.bound(iq, f"alice@{DOMAIN}/laptop")
    assert stream.state is State.BOUND and b"alice@a.test/laptop" in sent(out)
    assert isinstance(stream.element(Element("r", "urn:xmpp:sm:3"))[0], Manage)


def test_anything_before_tls_is_refused_with_a_stream_error() -> None:
    stream = machine()
    stream.opened(header())
    out = stream.element(Element("iq", "", {"type": "get", "id": "1"}))
    assert b"<not-authorized" in sent(out) and isinstance(out[-1], Close)
    assert stream.state is State.CLOSED
    assert stream.element(Element("iq", "", {})) == []


def test_a_header_without_version_is_answered_without_version() -> None:
    # RFC 6120 section 4.7.5: the reply SHOULD NOT include the version.
    stream = machine()
    out = stream.opened(header(version=None))
    data = sent(out)
    opening = data.split(b"?>", 1)[1].split(b">", 1)[0]
    assert opening.startswith(b"<stream:stream") and b" version=" not in opening
    assert b"unsupported-version" in data


def test_a_versioned_header_is_answered_with_version() -> None:
    data = sent(machine().opened(header()))
    assert b" version='1.0' " in data.split(b"?>", 1)[1].split(b">", 1)[0]


def test_an_unknown_domain_gets_host_unknown_after_a_header() -> None:
    out = machine().opened(header(to="elsewhere.test"))
    data = sent(out)
    assert data.index(b"<stream:stream") < data.index(b"host-unknown")
    assert isinstance(out[-1], Close)


def test_three_failures_close_the_stream() -> None:
    stream = machine(tls=True)
    stream.opened(header())
    for _attempt in range(3):
        auth = Element("auth", SASL_NS, {"mechanism": "PLAIN"})
        auth.children.append(base64.b64encode(b"\0alice\0wrong").decode())
        stream.element(auth)
        out = stream.sasl_result(False)
        assert b"<not-authorized" in sent(out)
    assert isinstance(out[-1], Close) and stream.state is State.CLOSED
