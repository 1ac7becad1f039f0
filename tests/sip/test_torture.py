"""RFC 4475 categories sent to a running peerage: each is answered 400 (or 505/416/513) or dropped,
the server keeps serving, and a call in progress completes undisturbed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.sip.message import SipParseError, parse_datagram
from tests.harness import PeerageServer, require_binary
from tests.sip.sipp import failure_report, finish, run_sipp, start_sipp
from tests.sip.ua import UdpUA

SERVER_IP = "127.0.3.60"
SERVER = (SERVER_IP, 5060)
PASSWORD = "torture password"

HEAD = ("Via: SIP/2.0/UDP 127.0.3.61:5999;branch=z9hG4bK{n}\r\nMax-Forwards: 70\r\n"
        "From: <sip:t@x.test>;tag=1\r\nTo: <sip:bob@t.test>\r\nCall-ID: torture{n}\r\n")


def req(start: str, extra: str = "", cseq: str = "1 OPTIONS", body: bytes = b"", n: int = 0,
        length: str | None = None) -> bytes:
    length = str(len(body)) if length is None else length
    return (f"{start}\r\n{HEAD.format(n=n)}CSeq: {cseq}\r\n{extra}Content-Length: {length}\r\n\r\n"
            ).encode() + body


# (category, bytes, acceptable answers; None means "dropped")
CASES: list[tuple[str, bytes, set[int | None]]] = [
    ("invalid framing: body shorter than Content-Length",
     req("OPTIONS sip:t.test SIP/2.0", length="5000", body=b"abc", n=1), {400}),
    ("bad Content-Length: negative", req("OPTIONS sip:t.test SIP/2.0", length="-5", n=2), {400}),
    ("bad Content-Length: enormous", req("OPTIONS sip:t.test SIP/2.0", length="99999999999999999999", n=3), {400}),
    ("unknown scheme in Request-URI", req("OPTIONS soap.beep://t.test SIP/2.0", n=4), {416}),
    ("escaped characters: bad escape in Request-URI",
     req("OPTIONS sip:user%20name@t.test SIP/2.0", n=5), {200, 404}),
    ("Request-URI in angle brackets", req("OPTIONS <sip:t.test> SIP/2.0", n=6), {400}),
    ("unterminated quoted display name",
     req("OPTIONS sip:t.test SIP/2.0", extra='Contact: "Bob <sip:b@x>\r\n', n=7).replace(
         b"To: <sip:bob@t.test>", b'To: "Bob <sip:bob@t.test>'), {400}),
    ("CSeq method mismatch", req("OPTIONS sip:t.test SIP/2.0", cseq="1 INVITE", n=8), {400}),
    ("unsupported version", req("OPTIONS sip:t.test SIP/7.0", n=9), {505}),
    ("huge header", req("OPTIONS sip:t.test SIP/2.0", extra="X-Huge: " + "A" * 9000 + "\r\n", n=10),
     {400, 513}),
    ("too many headers",
     req("OPTIONS sip:t.test SIP/2.0", extra="".join(f"X-{i}: v\r\n" for i in range(300)), n=11), {513, 400}),
    ("oversized datagram", req("OPTIONS sip:t.test SIP/2.0", body=b"x" * 64000, n=12), {None, 513, 400}),
    ("garbage", b"\x00\x01\x02\xff" * 100, {None}),
    ("truncated", req("INVITE sip:bob@t.test SIP/2.0", cseq="1 INVITE", n=13)[:60], {None}),
    ("missing Call-ID", req("OPTIONS sip:t.test SIP/2.0", n=14).replace(b"Call-ID: torture14\r\n", b""), {400}),
    ("Max-Forwards out of range", req("OPTIONS sip:t.test SIP/2.0", n=15).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 300"), {400}),
]


@pytest.fixture(scope="module")
def t_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    require_binary("sipp")
    server = PeerageServer(tmp_path_factory.mktemp("t_test"), ["t.test"], SERVER_IP, services=("sip",),
                           config={"sip": {"digest_algorithms": ["MD5", "SHA-256"],
                                                   "max_message_size": 16384}})
    server.add_user("bob@t.test", PASSWORD)
    server.start()
    yield server
    server.kill()


def _answer(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    try:
        data, _ = sock.recvfrom(65535)
    except TimeoutError:
        return None
    try:
        return parse_datagram(data).status
    except SipParseError:
        # an answer to a request missing Call-ID cannot carry one either: read the status line
        first = data.split(b"\r\n", 1)[0].split(b" ")
        return int(first[1]) if first[0] == b"SIP/2.0" and first[1].isdigit() else -1


def _alive(sock: socket.socket, n: int) -> bool:
    sock.sendto(req("OPTIONS sip:t.test SIP/2.0", n=1000 + n), SERVER)
    return _answer(sock, 3.0) == 200


def test_torture_udp_while_a_call_is_in_progress(t_test: PeerageServer, tmp_path: Path) -> None:
    register = run_sipp(tmp_path, "register.xml", local_ip="127.0.3.62", port=5098, server=f"{SERVER_IP}:5060",
                        service="bob", keys={"domain": "t.test"}, extra=["-au", "bob", "-ap", PASSWORD])
    assert register.returncode == 0, failure_report(tmp_path, register)
    # the callee takes 3 s to answer: the whole torture run happens during the call
    uas = start_sipp(tmp_path, "uas_call.xml", local_ip="127.0.3.62", port=5098, server=None, extra=["-d", "3000"])
    uac = start_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.63", port=5099, server=f"{SERVER_IP}:5060",
                     service="bob", keys={"domain": "t.test", "caller": "eve", "caller_domain": "x.test"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.3.61", 5999))
    try:
        for index, (category, data, expected) in enumerate(CASES):
            sock.sendto(data, SERVER)
            status = _answer(sock, 0.5 if None in expected else 3.0)
            assert status in expected, f"{category}: got {status}, expected {expected}"
            assert _alive(sock, index), f"server stopped answering after: {category}"
    finally:
        sock.close()
    for process in (uac, uas):
        code = finish(process)
        assert code[0] == 0, failure_report(tmp_path, code)
    assert t_test.running


def test_torture_tcp_framing(t_test: PeerageServer) -> None:
    # bad framing on a stream: 400 where possible, then the connection is closed; no hang
    with socket.create_connection(SERVER, timeout=5) as conn:
        conn.sendall(b"\r\n\r\n")  # keep-alive ping
        assert conn.recv(2) == b"\r\n"
        conn.sendall(req("OPTIONS sip:t.test SIP/2.0", n=20).replace(b"Content-Length: 0\r\n", b""))
        data = conn.recv(65535)
        assert data.startswith(b"SIP/2.0 400")
        assert conn.recv(10) == b""  # closed
    with socket.create_connection(SERVER, timeout=5) as conn:
        conn.sendall(b"OPTIONS sip:t.test SIP/2.0\r\n" + b"X-Filler: yyyyyyyyyyyyyyyy\r\n" * 2000)
        conn.settimeout(5)
        try:
            tail = conn.recv(65535)
        except ConnectionResetError:
            tail = b""
        assert tail == b"" or tail.startswith(b"SIP/2.0 ")
    ua = UdpUA("127.0.3.64", SERVER, "eve", "x.test")
    try:
        response = ua.final_response(ua.build("OPTIONS", "sip:t.test"))
        assert response is not None and response.status == 200
    finally:
        ua.close()
