"""One peerage domain (a.test on 127.0.3.1) driven by SIPp user agents and a Python UA.

Covers REGISTER with digest (MD5 by SIPp, SHA-256 by the Python UA because SIPp 3.6 only does
MD5), calls through the record-routing proxy, CANCEL, busy, 480, forking, the peering policy (407,
403), proxy checks (483, 420, OPTIONS, 482), the registrar (q, expiry, Path, persistence across a
restart) and flood banning.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.sip.message import SipMessage, StreamParser, parse_datagram
from tests.harness import PeerageServer, require_binary
from tests.sip.sipp import failure_report, finish, message_log, run_sipp, start_sipp
from tests.sip.ua import UdpUA

SERVER_IP = "127.0.3.1"
SERVER = f"{SERVER_IP}:5060"
PASSWORD = "correct horse"
USERS = ("alice", "bob", "cathy", "dan", "erin", "fred", "gina", "hank", "loopy")


@pytest.fixture(scope="module")
def a_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    require_binary("sipp")
    server = PeerageServer(
        tmp_path_factory.mktemp("a_test"), ["a.test"], SERVER_IP, services=("sip",),
        # SIPp answers only the first challenge and knows only MD5: offer MD5 first here.
        config={"sip": {"digest_algorithms": ["MD5", "SHA-256"], "min_expires": 30}})
    for user in USERS:
        server.add_user(f"{user}@a.test", PASSWORD)
    server.start()
    yield server
    server.kill()


def register(workdir: Path, user: str, ip: str, port: int, password: str = PASSWORD,
             scenario: str = "register.xml") -> None:
    result = run_sipp(workdir, scenario, local_ip=ip, port=port, server=SERVER, service=user,
                      keys={"domain": "a.test"}, extra=["-au", user, "-ap", password])
    assert result.returncode == 0, failure_report(workdir, result)


def caller_keys(service_domain: str = "a.test", caller: str = "alice",
                caller_domain: str = "visitor.test") -> dict[str, str]:
    """SIPp's keys for a call. The caller is from another domain by default: anyone may call a local
    user without an account, while a caller claiming a hosted domain must authenticate (407)."""
    return {"domain": service_domain, "caller": caller, "caller_domain": caller_domain}


def test_register_md5_with_sipp_and_wrong_password_refused(a_test: PeerageServer, tmp_path: Path) -> None:
    register(tmp_path, "bob", "127.0.3.11", 5070)
    refused = run_sipp(tmp_path, "register_refused.xml", local_ip="127.0.3.11", port=5079, server=SERVER,
                       service="bob", keys={"domain": "a.test"}, extra=["-au", "bob", "-ap", "wrong"])
    assert refused.returncode == 0, failure_report(tmp_path, refused)


def test_register_sha256_with_python_ua(a_test: PeerageServer) -> None:
    ua = UdpUA("127.0.3.12", (SERVER_IP, 5060), "hank", "a.test", PASSWORD)
    try:
        challenge = ua.final_response(ua.build("REGISTER", "sip:a.test"))
        assert challenge is not None and challenge.status == 401
        offered = challenge.get_all_raw("www-authenticate")
        assert any("algorithm=SHA-256" in c for c in offered) and any("algorithm=MD5" in c for c in offered)
        ok = ua.request_with_auth("REGISTER", "sip:a.test", "SHA-256", extra=[("Expires", "120")])
        assert ok is not None and ok.status == 200
        assert any(f"127.0.3.12:{ua.port}" in c for c in ok.get_all("contact"))
        ua.password = "wrong"
        refused = ua.request_with_auth("REGISTER", "sip:a.test", "SHA-256")
        assert refused is not None and refused.status == 401
    finally:
        ua.close()


def test_call_through_record_routing_proxy(a_test: PeerageServer, tmp_path: Path) -> None:
    register(tmp_path, "bob", "127.0.3.11", 5070)
    uas = start_sipp(tmp_path, "uas_call.xml", local_ip="127.0.3.11", port=5070, server=None,
                     extra=["-d", "0"])
    uac = run_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.10", port=5071, server=SERVER,
                   service="bob", keys=caller_keys())
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    assert finish(uas)[0] == 0, failure_report(tmp_path, finish(uas))
    trace = message_log(tmp_path, "uas_call.xml", uas.pid)
    # ACK and BYE reached the callee through the proxy (its Via on top), thanks to Record-Route
    for method in ("ACK", "BYE"):
        block = next(b for b in trace.split("-----") if f"\n{method} sip:" in b)
        assert f"Via: SIP/2.0/UDP {SERVER_IP}:5060" in block
    # our Record-Route, its user part naming the flows of the directly connected caller and callee
    assert re.search(r"Record-Route: <sip:[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*@127\.0\.3\.1:5060;lr;", trace)


def test_cancelled_call(a_test: PeerageServer, tmp_path: Path) -> None:
    register(tmp_path, "cathy", "127.0.3.13", 5072)
    uas = start_sipp(tmp_path, "uas_ring.xml", local_ip="127.0.3.13", port=5072, server=None)
    uac = run_sipp(tmp_path, "uac_cancel.xml", local_ip="127.0.3.10", port=5073, server=SERVER,
                   service="cathy", keys=caller_keys())
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)


def test_busy_callee(a_test: PeerageServer, tmp_path: Path) -> None:
    register(tmp_path, "dan", "127.0.3.14", 5074)
    uas = start_sipp(tmp_path, "uas_busy.xml", local_ip="127.0.3.14", port=5074, server=None)
    uac = run_sipp(tmp_path, "uac_expect_486.xml", local_ip="127.0.3.10", port=5075, server=SERVER,
                   service="dan", keys=caller_keys())
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)


def test_unregistered_callee_480_and_unknown_404(a_test: PeerageServer, tmp_path: Path) -> None:
    uac = run_sipp(tmp_path, "uac_expect_480.xml", local_ip="127.0.3.10", port=5076, server=SERVER,
                   service="erin", keys=caller_keys("a.test", "zed", "elsewhere.test"))
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    nobody = run_sipp(tmp_path, "uac_expect_404.xml", local_ip="127.0.3.10", port=5077, server=SERVER,
                      service="nobody", keys=caller_keys())
    assert nobody.returncode == 0, failure_report(tmp_path, nobody)


def test_fork_to_two_contacts(a_test: PeerageServer, tmp_path: Path) -> None:
    register(tmp_path, "fred", "127.0.3.15", 5078)
    register(tmp_path, "fred", "127.0.3.16", 5078)
    answering = start_sipp(tmp_path, "uas_call.xml", local_ip="127.0.3.15", port=5078, server=None,
                           extra=["-d", "400"])
    ringing = start_sipp(tmp_path, "uas_ring.xml", local_ip="127.0.3.16", port=5078, server=None)
    uac = run_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.10", port=5080, server=SERVER,
                   service="fred", keys=caller_keys())
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    for process in (answering, ringing):
        code = finish(process)
        assert code[0] == 0, failure_report(tmp_path, code)


def test_policy_local_to_foreign_needs_auth_and_foreign_to_foreign_refused(
        a_test: PeerageServer, tmp_path: Path) -> None:
    challenged = run_sipp(tmp_path, "uac_expect_407.xml", local_ip="127.0.3.10", port=5081, server=SERVER,
                          service="someone", keys=caller_keys("far.test", "alice", "a.test"))
    assert challenged.returncode == 0, failure_report(tmp_path, challenged)
    relay = run_sipp(tmp_path, "uac_expect_403.xml", local_ip="127.0.3.10", port=5082, server=SERVER,
                     service="someone", keys=caller_keys("far.test", "mallory", "evil.test"))
    assert relay.returncode == 0, failure_report(tmp_path, relay)


def test_proxy_checks(a_test: PeerageServer) -> None:
    ua = UdpUA("127.0.3.17", (SERVER_IP, 5060), "alice", "a.test", PASSWORD)
    try:
        options = ua.final_response(ua.build("OPTIONS", "sip:a.test"))
        assert options is not None and options.status == 200 and "INVITE" in (options.get("allow") or "")
        hops = ua.build("INVITE", "sip:bob@a.test")
        hops.set("Max-Forwards", "0")
        assert (ua.final_response(hops) or hops).status == 483
        require = ua.build("MESSAGE", "sip:bob@a.test", extra=[("Proxy-Require", "x-teleport")])
        response = ua.final_response(require)
        assert response is not None and response.status == 420
        assert response.get("unsupported") == "x-teleport"
        scheme = ua.build("OPTIONS", "sip:bob@a.test")
        scheme.uri = "tel:+15551234"
        assert (ua.final_response(scheme) or scheme).status == 416
        # a contact pointing back at the proxy makes the request come back unchanged: 482
        loopy = UdpUA("127.0.3.17", (SERVER_IP, 5060), "loopy", "a.test", PASSWORD)
        try:
            ok = loopy.request_with_auth("REGISTER", "sip:a.test", extra=[
                ("Contact", "<sip:loopy@127.0.3.1:5060>")])
            assert ok is not None and ok.status == 200
        finally:
            loopy.close()
        # From another domain, so no credentials are consumed on the way and the request that comes
        # back is the same one (a hosted-domain caller's would be challenged again on its spiral).
        visitor = UdpUA("127.0.3.17", (SERVER_IP, 5060), "alice", "visitor.test", PASSWORD)
        try:
            looped = visitor.final_response(visitor.build("MESSAGE", "sip:loopy@a.test"), timeout=8)
        finally:
            visitor.close()
        assert looped is not None and looped.status == 482
    finally:
        ua.close()


def test_registrar_contacts_q_expiry_path(a_test: PeerageServer) -> None:
    ua = UdpUA("127.0.3.18", (SERVER_IP, 5060), "gina", "a.test", PASSWORD)
    try:
        ok = ua.request_with_auth("REGISTER", "sip:a.test", "SHA-256", extra=[
            ("Contact", "<sip:gina@127.0.3.18:7001>;q=0.5, <sip:gina@127.0.3.18:7002>;q=0.9"),
            ("Expires", "300"), ("Supported", "path"), ("Path", "<sip:edge.a.test;lr>")])
        assert ok is not None and ok.status == 200, ok
        contacts = ok.get_all("contact")
        assert len(contacts) == 2 and any("q=0.5" in c for c in contacts)
        assert ok.get("path") == "<sip:edge.a.test;lr>"
        brief = ua.request_with_auth("REGISTER", "sip:a.test", extra=[
            ("Contact", "<sip:gina@127.0.3.18:7003>;expires=5")])
        assert brief is not None and brief.status == 423 and brief.get("min-expires") == "30"
        removed = ua.request_with_auth("REGISTER", "sip:a.test", extra=[
            ("Contact", "<sip:gina@127.0.3.18:7001>;expires=0")])
        assert removed is not None and removed.status == 200
        assert [c for c in removed.get_all("contact") if "7001" in c] == []
        cleared = ua.request_with_auth("REGISTER", "sip:a.test", extra=[("Contact", "*"), ("Expires", "0")])
        assert cleared is not None and cleared.status == 200 and cleared.get_all("contact") == []
        other = ua.request_with_auth("REGISTER", "sip:a.test", extra=[], to="<sip:bob@a.test>")
        assert other is not None and other.status == 403  # gina may not register bob
    finally:
        ua.close()


def test_registration_survives_restart(a_test: PeerageServer) -> None:
    callee = UdpUA("127.0.3.19", (SERVER_IP, 5060), "gina", "a.test", PASSWORD)
    caller = UdpUA("127.0.3.20", (SERVER_IP, 5060), "zed", "elsewhere.test")
    try:
        ok = callee.request_with_auth("REGISTER", "sip:a.test", "SHA-256", extra=[("Expires", "600")])
        assert ok is not None and ok.status == 200
        a_test.stop()
        a_test.start()
        message = caller.build("MESSAGE", "sip:gina@a.test", to="<sip:gina@a.test>", body=b"still there?",
                               extra=[("Content-Type", "text/plain")])
        caller.send_raw(message.serialize())
        received = callee.receive(timeout=5)
        assert received is not None and received.method == "MESSAGE" and received.body == b"still there?"
        from peerage.sip.message import make_response
        callee.send_raw(make_response(received, 200, to_tag="g1").serialize(), (SERVER_IP, 5060))
        answer = caller.receive(timeout=5)
        assert answer is not None and answer.status == 200
    finally:
        callee.close()
        caller.close()


def test_flood_ban(tmp_path: Path) -> None:
    server = PeerageServer(tmp_path, ["f.test"], "127.0.3.40", services=("sip",),
                           config={"sip": {"flood_requests_per_second": 5, "flood_ban_seconds": 60}})
    server.start()
    ua = UdpUA("127.0.3.41", ("127.0.3.40", 5060), "x", "f.test")
    try:
        answered = 0
        started = time.monotonic()
        for _ in range(60):  # bounded burst, far above 2 s x 5 requests/s
            if ua.final_response(ua.build("OPTIONS", "sip:f.test"), timeout=2.0) is None:
                break  # banned
            answered += 1
        elapsed = time.monotonic() - started
        # a burst of 2 s x 5/s, plus what the bucket refilled while we were sending
        assert 8 <= answered <= 10 + 5 * elapsed + 1, (answered, elapsed)
        # banned now, while another address is still served
        assert ua.final_response(ua.build("OPTIONS", "sip:f.test"), timeout=0.5) is None
        other = UdpUA("127.0.3.42", ("127.0.3.40", 5060), "y", "f.test")
        try:
            assert other.final_response(other.build("OPTIONS", "sip:f.test")) is not None
        finally:
            other.close()
    finally:
        ua.close()
        server.stop()


_ = parse_datagram  # re-exported for debugging sessions


def _stream_request(conn: socket.socket, request: SipMessage, timeout: float = 5.0) -> SipMessage | None:
    conn.sendall(request.serialize())
    parser = StreamParser()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = conn.recv(65535)
        except TimeoutError:
            return None
        if not data:
            return None
        for item in parser.feed(data):
            if isinstance(item, SipMessage) and item.status >= 200:
                return item
    return None


def _stream_message(ua: UdpUA, method: str, uri: str, transport: str, **kwargs: object) -> SipMessage:
    message = ua.build(method, uri, **kwargs)  # type: ignore[arg-type]
    top = message.first_value("via") or ""
    message.set("Via", top.replace("SIP/2.0/UDP", f"SIP/2.0/{transport}"))
    return message


def test_tcp_and_tls_transports_reuse_the_connection(a_test: PeerageServer) -> None:
    # OPTIONS over TLS (SIPS port 5061), TLS 1.2 or later only
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    helper = UdpUA("127.0.3.21", (SERVER_IP, 5060), "hank", "a.test", PASSWORD)
    try:
        with socket.create_connection((SERVER_IP, 5061), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            answer = _stream_request(tls, _stream_message(helper, "OPTIONS", "sip:a.test", "TLS"))
            assert answer is not None and answer.status == 200
        # a client registered over TCP receives its calls on the same connection (it may sit
        # behind NAT, where nobody could connect to it)
        with socket.create_connection((SERVER_IP, 5060), timeout=5) as conn:
            register = _stream_message(helper, "REGISTER", "sip:a.test", "TCP",
                                       extra=[("Contact", "<sip:hank@198.51.100.7:5999;transport=tcp>")])
            challenge = _stream_request(conn, register)
            assert challenge is not None and challenge.status == 401
            www = next(c for c in challenge.get_all_raw("www-authenticate") if "SHA-256" in c)
            from peerage.sip.digest import client_authorization
            authorized = _stream_message(helper, "REGISTER", "sip:a.test", "TCP", extra=[
                ("Contact", "<sip:hank@198.51.100.7:5999;transport=tcp>"),
                ("Authorization", client_authorization(www, "REGISTER", "sip:a.test", "hank", PASSWORD))])
            ok = _stream_request(conn, authorized)
            assert ok is not None and ok.status == 200
            caller = UdpUA("127.0.3.22", (SERVER_IP, 5060), "zed", "elsewhere.test")
            try:
                caller.send_raw(caller.build("MESSAGE", "sip:hank@a.test", to="<sip:hank@a.test>",
                                             body=b"over tcp").serialize())
                parser = StreamParser()
                conn.settimeout(5)
                received: list[SipMessage | str] = []
                while not any(isinstance(m, SipMessage) for m in received):
                    data = conn.recv(65535)
                    assert data, "connection closed"
                    received += parser.feed(data)
                message = next(m for m in received if isinstance(m, SipMessage))
                assert message.method == "MESSAGE" and message.body == b"over tcp"
                assert message.top_via().transport == "TCP"
            finally:
                caller.close()
    finally:
        helper.close()


def test_no_relay_through_forged_or_preloaded_routes(a_test: PeerageServer) -> None:
    ua = UdpUA("127.0.3.23", (SERVER_IP, 5060), "mallory", "evil.test")
    try:
        # naming us as outbound proxy does not bypass the policy: foreign -> foreign is 403
        outbound = ua.build("MESSAGE", "sip:victim@far.test", to="<sip:victim@far.test>",
                            extra=[("Route", f"<sip:{SERVER_IP};lr>")])
        assert (ua.final_response(outbound) or outbound).status == 403
        # an initial request may not steer us onwards
        preloaded = ua.build("MESSAGE", "sip:bob@a.test", to="<sip:bob@a.test>",
                             extra=[("Route", "<sip:victim.far.test;lr>")])
        assert (ua.final_response(preloaded) or preloaded).status == 403
        # an in-dialog request with a route mark we never issued
        forged = ua.build("BYE", "sip:victim@far.test", to="<sip:victim@far.test>;tag=x",
                          extra=[("Route", f"<sip:{SERVER_IP}:5060;lr;pr=0123456789abcdef>")])
        assert (ua.final_response(forged) or forged).status == 403
        # an in-dialog request that does not route through us at all
        stray = ua.build("BYE", "sip:victim@far.test", to="<sip:victim@far.test>;tag=x")
        assert (ua.final_response(stray) or stray).status == 403
    finally:
        ua.close()
