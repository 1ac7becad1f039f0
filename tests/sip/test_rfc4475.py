"""RFC 4475 torture messages, bit-exact, sent to a running peerage: one test per message.

The messages are read from ``../shared/testdata/rfc4475/`` beside the repository (never copied).
Valid requests must be parsed and answered as a proxy/registrar does (forwarded to the registered
user ``user@example.com`` when they are for it); invalid ones are answered 400 (505, 416, 420 where
RFC 4475 names those) with ``received`` on the top Via (RFC 3261 §18.2.1), or dropped when nothing
can be answered (malformed responses).  Each test also checks how the message parsed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.sip.digest import client_authorization
from peerage.sip.message import (
    SipMessage,
    SipParseError,
    make_response,
    parse_datagram,
    parse_name_addr,
    parse_uri,
)
from tests.harness import PeerageServer
from tests.sip.ua import UdpUA

SERVER_IP = "127.0.3.130"
SERVER = (SERVER_IP, 5060)
CLIENT_IP = "127.0.3.131"
CALLEE_IP = "127.0.3.132"
PASSWORD = "torture password"


def _testdata() -> Path:
    """``../shared/testdata/rfc4475`` from the repository root (or from the main checkout when this
    is a git worktree, whose ``.git`` file names it)."""
    root = Path(__file__).resolve().parents[2]
    roots = [root]
    git = root / ".git"
    if git.is_file():
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        roots.append(gitdir.parents[2])  # <main>/.git/worktrees/<name>
    for base in roots:
        candidate = base.parent / "shared" / "testdata" / "rfc4475"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("../shared/testdata/rfc4475 not found beside the repository")


DATA = _testdata()


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


# name -> (transport the message is sent on, expected outcome)
#   ("status", {codes}): the final answer
#   ("drop", None): nothing comes back (a response not for us, or an unparseable one)
#   ("forward", status): reaches the registered callee, which answers status; relayed back
#   ("register", contact): challenged, then registered with that contact once credentials are added
EXPECTED: dict[str, tuple[str, tuple[str, object]]] = {
    # 3.1.1 valid messages
    "wsinv": ("UDP", ("status", {403})),  # in-dialog, Route names another proxy: not relayed
    "intmeth": ("TCP", ("status", {404})),  # unknown method to an unknown user of ours
    "esc01": ("UDP", ("status", {403})),  # example.net to example.net: not ours to relay
    "escnull": ("UDP", ("status", {401})),
    "esc02": ("TCP", ("status", {407})),  # an unknown method, not a REGISTER: a local caller's request
    "lwsdisp": ("UDP", ("forward", 200)),
    "longreq": ("TCP", ("forward", 486)),
    "dblreq": ("UDP", ("status", {401})),  # only the first message of the datagram counts
    "semiuri": ("UDP", ("status", {404})),
    "transports": ("UDP", ("forward", 200)),
    "mpart01": ("UDP", ("status", {403})),  # preloaded Route to another host
    "unreason": ("UDP", ("drop", None)),  # a response matching nothing of ours
    "noreason": ("UDP", ("drop", None)),
    # 3.1.2 invalid messages
    "badinv01": ("UDP", ("status", {400})),
    "clerr": ("UDP", ("status", {400})),
    "ncl": ("UDP", ("status", {400})),
    "scalar02": ("TCP", ("status", {400})),
    "scalarlg": ("UDP", ("drop", None)),
    "quotbal": ("UDP", ("status", {400})),
    "ltgtruri": ("UDP", ("status", {400})),
    "lwsruri": ("UDP", ("status", {400})),
    "lwsstart": ("UDP", ("status", {400})),
    "trws": ("TCP", ("status", {400})),
    "escruri": ("UDP", ("status", {400})),
    "baddate": ("UDP", ("forward", 486)),  # acceptable: the Date is not ours to use
    "regbadct": ("UDP", ("status", {400})),
    "badaspec": ("UDP", ("status", {400})),
    "baddn": ("UDP", ("status", {400})),
    "badvers": ("UDP", ("status", {505})),
    "mismatch01": ("UDP", ("status", {400})),
    "mismatch02": ("UDP", ("status", {400})),
    "bigcode": ("UDP", ("drop", None)),
    # 3.2 transaction layer
    "badbranch": ("UDP", ("forward", 200)),
    # 3.3 application layer
    "insuf": ("UDP", ("status", {400})),
    "unkscm": ("TCP", ("status", {416})),
    "novelsc": ("TCP", ("status", {416})),
    "unksm2": ("UDP", ("status", {400})),
    "bext01": ("UDP", ("status", {420})),
    "invut": ("UDP", ("forward", 415)),
    "regaut01": ("TCP", ("status", {401})),
    "multi01": ("UDP", ("status", {400})),
    "mcl01": ("UDP", ("status", {400})),
    "bcast": ("UDP", ("drop", None)),
    "zeromf": ("UDP", ("status", {483})),
    "cparam01": ("UDP", ("register", "<sip:+19725552222@gw1.example.net>")),
    "cparam02": ("UDP", ("register", "<sip:+19725552222@gw1.example.net;unknownparam>")),
    "regescrt": ("UDP", ("register", "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")),
    "sdp01": ("UDP", ("forward", 406)),
    # 3.4 backward compatibility
    "inv2543": ("UDP", ("status", {404})),
}


def test_every_message_has_a_case() -> None:
    files = {path.stem for path in DATA.glob("*.dat")}
    assert files == set(EXPECTED)
    assert len(files) == 49


# --- what each message parses to (the parser on its own) -------------------------------------


def _parsed(name: str) -> SipMessage:
    return parse_datagram(load(name))


def _parse_error(name: str) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_datagram(load(name))
    return info.value


def check_wsinv() -> None:
    message = _parsed("wsinv")
    assert message.get("max-forwards") == "0068"
    assert message.cseq == (9, "INVITE")
    assert len(message.get_all("via")) == 3
    assert message.top_via().host == "192.0.2.2"
    assert message.to_tag() == "1918181833n"
    assert parse_name_addr(message.get("from") or "").display == 'J Rosenberg \\"'
    contact = parse_name_addr(message.get("contact") or "")
    assert contact.display == 'Quoted string ""' and contact.params["q"] == "0.33"


def check_intmeth() -> None:
    message = _parsed("intmeth")
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(message.uri or "")
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"


def check_esc01() -> None:
    message = _parsed("esc01")
    uri = parse_uri(message.uri or "")
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert parse_uri(parse_name_addr(message.get("to") or "").uri).user == "user"


def check_escnull() -> None:
    message = _parsed("escnull")
    assert parse_uri(parse_name_addr(message.get("to") or "").uri).user == "null-\x00-null"
    assert len(message.get_all("contact")) == 2


def check_esc02() -> None:
    message = _parsed("esc02")
    assert message.method == "RE%47IST%45R"
    assert len(message.get_all("contact")) == 2  # "C%6Fntact" is another header


def check_semiuri() -> None:
    uri = parse_uri(_parsed("semiuri").uri or "")
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})


def check_transports() -> None:
    transports = [v.split()[0] for v in _parsed("transports").get_all("via")]
    assert transports == ["SIP/2.0/UDP", "SIP/2.0/SCTP", "SIP/2.0/TLS", "SIP/2.0/UNKNOWN", "SIP/2.0/TCP"]


def check_mpart01() -> None:
    message = _parsed("mpart01")
    assert len(message.body) == 553 and message.body.endswith(b"--7a9cbec02ceef655--\r\n")


def check_unreason() -> None:
    message = _parsed("unreason")
    assert message.status == 200 and message.reason.startswith("= 2**3 * 5**2 ")


def check_noreason() -> None:
    message = _parsed("noreason")
    assert (message.status, message.reason) == (100, "")


def check_longreq() -> None:
    message = _parsed("longreq")
    assert len(message.get_all("via")) == 34 and len(message.body) == 150


def check_dblreq() -> None:
    message = _parsed("dblreq")
    assert message.method == "REGISTER" and message.body == b""


def check_inv2543() -> None:
    message = _parsed("inv2543")
    assert message.top_via().branch is None and message.from_tag() is None


def check_mcl01() -> None:
    assert "Content-Length" in _parse_error("mcl01").reason


def check_multi01() -> None:
    assert "more than one" in _parse_error("multi01").reason


def check_escruri() -> None:
    assert parse_uri(_parsed("escruri").uri or "").headers == "Route=%3Csip:example.com%3E"


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}
INVALID = {name for name, (_, (kind, codes)) in EXPECTED.items()
           if kind == "status" and codes == {400} and name not in ("unksm2", "escruri")}


# --- the running server --------------------------------------------------------------------------


class Callee:
    """``user@example.com`` registered from a UDP socket; answers what the proxy forwards."""

    def __init__(self) -> None:
        self.ua = UdpUA(CALLEE_IP, SERVER, "user", "example.com", PASSWORD)
        response = self.ua.request_with_auth("REGISTER", "sip:example.com")
        assert response is not None and response.status == 200, response

    def expect(self, method: str, status: int, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.ua.receive(deadline - time.monotonic())
            if message is None:
                break
            if message.method == method:
                response = make_response(message, status, to_tag="callee")
                self.ua.send_raw(response.serialize(), SERVER)
                return message
        raise AssertionError(f"the callee got no {method}")


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PeerageServer, Callee]]:
    server = PeerageServer(
        tmp_path_factory.mktemp("rfc4475"), ["example.com"], SERVER_IP, services=("sip",),
        # no resolver to reach: nothing here may leave the loopback
        config={"dns": {"nameservers": ["127.0.3.250"], "port": 5353, "timeout": 0.5},
                # The torture messages claim example.com users in From: the sender is trusted as a
                # gateway would be, so each is judged on its own merits rather than challenged (407).
                "sip": {"digest_algorithms": ["MD5"], "trusted_sources": [CLIENT_IP]}})
    for user in ("user", "watson", "j.user"):
        server.add_user(f"{user}@example.com", PASSWORD)
    server.start()
    callee = Callee()
    yield server, callee
    callee.ua.close()
    server.kill()


def _marker(data: bytes) -> bytes:
    """Bytes that identify answers to this message: its Call-ID, else its top Via branch."""
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i"):
            return value.strip()
    for line in head.split(b"\r\n"):
        if b"branch=" in line:
            return line.split(b"branch=", 1)[1].split(b";")[0].split(b",")[0].strip()
    raise AssertionError("no marker")


class Sender:
    """Sends one message over UDP (from the Via's port, so answers come back to it) or TCP."""

    def __init__(self, transport: str, data: bytes) -> None:
        self.transport = transport
        self.marker = _marker(data)
        self.buffer = b""
        if transport == "UDP":
            message_port = 5060
            head = data.split(b"\r\n", 2)[1] if data.startswith(b"SIP/") else b""
            if b":5050;" in data.split(b"\r\n\r\n")[0] and not head:
                message_port = 5050  # quotbal's Via names port 5050 and no rport
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((CLIENT_IP, message_port))
        else:
            self.sock = socket.create_connection(SERVER, timeout=5, source_address=(CLIENT_IP, 0))

    def send(self, data: bytes) -> None:
        if self.transport == "UDP":
            self.sock.sendto(data, SERVER)
        else:
            self.sock.sendall(data)

    def responses(self, timeout: float) -> Iterator[bytes]:
        """Raw answers carrying this message's marker, until ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                if self.transport == "UDP":
                    data = self.sock.recv(65535)
                else:
                    data = self._next_stream_message()
                    if data is None:
                        chunk = self.sock.recv(65535)
                        if not chunk:
                            return
                        self.buffer += chunk
                        continue
            except (TimeoutError, ConnectionResetError):
                return
            if self.marker in data:
                yield data

    def _next_stream_message(self) -> bytes | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
        total = end + 4 + length
        if len(self.buffer) < total:
            return None
        data, self.buffer = self.buffer[:total], self.buffer[total:]
        return data

    def final(self, timeout: float = 5.0) -> tuple[int, bytes, list[int]]:
        """The final answer's status and bytes, and the provisional statuses before it."""
        provisional: list[int] = []
        for data in self.responses(timeout):
            status = int(data.split(b" ", 2)[1])
            if status >= 200:
                return status, data, provisional
            provisional.append(status)
        raise AssertionError(f"no final answer (provisional: {provisional})")

    def close(self) -> None:
        self.sock.close()


def _ack(request: bytes, response: bytes) -> bytes:
    """The hop-by-hop ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    original = parse_datagram(request)
    answer = parse_datagram(response)
    ack = SipMessage(method="ACK", uri=original.uri)
    ack.add("Via", original.first_value("via") or "")
    for name in ("from", "call-id"):
        ack.add(name, original.get(name) or "")
    ack.add("To", answer.get("to") or "")
    ack.add("CSeq", f"{original.cseq[0]} ACK")
    ack.add("Max-Forwards", "70")
    return ack.serialize()


def _top_via(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"via", b"v"):
            return value.decode("utf-8", "replace").split(",")[0]
    return ""


def _register_with_credentials(data: bytes, challenge: bytes, password: str, step: int,
                               expires: str | None = None) -> bytes:
    """The same REGISTER with a CSeq ``step`` higher and an Authorization answering ``challenge``
    (nonce-count ``step``), optionally with an Expires header."""
    message = parse_datagram(data)
    response = parse_datagram(challenge)
    to = parse_uri(parse_name_addr(message.get("to") or "").uri)
    header = response.get_all_raw("www-authenticate")[0]
    credentials = client_authorization(header, "REGISTER", message.uri or "", to.user or "", password,
                                       nc=step)
    head, body = data.split(b"\r\n\r\n", 1)
    number, method = message.cseq
    head = head.replace(f"CSeq: {number} {method}".encode(), f"CSeq: {number + step} {method}".encode())
    branch = message.top_via().branch or ""
    head = head.replace(f"branch={branch}".encode(), f"branch={branch}.{step}".encode())  # a new transaction
    head += b"\r\nAuthorization: " + credentials.encode()
    if expires is not None:
        head += b"\r\nExpires: " + expires.encode()
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rfc4475_message(example: tuple[PeerageServer, Callee], name: str) -> None:
    server, callee = example
    if name in CHECKS:
        CHECKS[name]()
    if name in INVALID:
        _parse_error(name)  # the parser itself refuses it
    transport, (kind, expected) = EXPECTED[name]
    data = load(name)
    sender = Sender(transport, data)
    try:
        sender.send(data)
        if kind == "drop":
            assert list(sender.responses(1.0)) == [], f"{name}: answered, expected silence"
        elif kind == "status":
            status, raw, provisional = sender.final()
            assert status in expected, f"{name}: got {raw[:300]!r}, expected {expected}"  # type: ignore[operator]
            if data.startswith(b"INVITE") and status != 400:
                assert provisional[:1] == [100], f"{name}: no 100 Trying before {status}"
            if transport == "UDP" and b"Via:" in raw:
                assert f"received={CLIENT_IP}" in _top_via(raw), f"{name}: no received in {raw[:300]!r}"
            if name == "regaut01":
                assert b"WWW-Authenticate: Digest " in raw
            if name == "bext01":
                assert b"Unsupported: noProxiesSupportThis, norDoAnyProxiesSupportThis" in raw
            if name == "esc02":
                assert b"WWW-Authenticate" not in raw  # not taken for a REGISTER
            if name == "dblreq":
                assert b"INVITE" not in raw
            if status >= 300 and data.startswith(b"INVITE") and transport == "UDP" and name not in INVALID:
                sender.send(_ack(data, raw))
        elif kind == "forward":
            original = parse_datagram(data)
            forwarded = callee.expect(original.method or "", int(expected))  # type: ignore[call-overload]
            assert forwarded.body == original.body
            assert forwarded.call_id == original.call_id
            hops = original.get("max-forwards")
            assert forwarded.get("max-forwards") == str(int(hops or "70") - 1)
            assert len(forwarded.get_all("via")) == len(original.get_all("via")) + 1
            if name == "baddate":
                assert forwarded.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"
            if name == "longreq":
                assert forwarded.get("to") == original.get("to")
            status, raw, provisional = sender.final()
            assert status == expected, raw[:300]
            if original.method == "INVITE":
                assert provisional[:1] == [100]
                if transport == "UDP":
                    sender.send(_ack(data, raw))
        elif kind == "register":
            status, challenge, _ = sender.final()
            assert status == 401, challenge[:300]
            sender.send(_register_with_credentials(data, challenge, PASSWORD, 1))
            status, raw, _ = sender.final()
            assert status == 200, raw[:400]
            answer = parse_datagram(raw)
            contacts = [value.rsplit(";expires=", 1)[0] for value in answer.get_all("contact")]
            assert expected in contacts, contacts
            # take the binding away again so it does not fork later calls
            sender.send(_register_with_credentials(data, challenge, PASSWORD, 2, expires="0"))
            status, raw, _ = sender.final()
            assert status == 200, raw[:300]
            assert expected.encode() not in raw
    finally:
        sender.close()
    assert server.running
