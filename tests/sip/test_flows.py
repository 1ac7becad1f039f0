"""Flows: calls reach user agents on the connection or NAT binding they registered from.

* baresip registered over TLS (a Contact naming a port nobody can dial back): a call reaches it
  and the caller's BYE reaches it too, on its own TLS connection (RFC 5626 §5.3-style flow token
  in our Record-Route).
* A UA behind a simulated NAT (SIPp bound to one loopback address, its Via and Contact naming
  another) receives calls, ACK and BYE at the address it sends from, and gets keep-alives.
* RFC 5626 outbound and RFC 5627 GRUU over TCP: the registration is bound to its connection, a
  call to either GRUU arrives on it, and once the connection is gone the flow has failed.
* RFC 5626 outbound over UDP with baresip: its STUN keep-alives keep the flow past the Flow-Timer;
  it calls a SIPp callee and hangs up mid-call (its BYE reaches the callee); killed, its flow is
  found dead within the Flow-Timer and its registration dropped, so a call to it gets 480 at once.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerage.sip.digest import client_authorization
from peerage.sip.message import SipMessage, StreamParser, make_response, parse_name_addr, split_params
from tests.harness import PeerageServer, require_binary, wait_for
from tests.sip.sipp import failure_report, finish, message_log, run_sipp, start_sipp
from tests.sip.ua import UdpUA

SERVER_IP = "127.0.3.140"
SERVER = f"{SERVER_IP}:5060"
DOMAIN = "f.test"
PASSWORD = "flow-password"  # no space: baresip account lines split on them
# Short, so the test sees a flow outlive it on keep-alives and then die (the registrar adds 3 s slack).
UDP_FLOW_TIMER = 4


@pytest.fixture(scope="module")
def f_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    require_binary("sipp")
    server = PeerageServer(tmp_path_factory.mktemp("f_test"), [DOMAIN], SERVER_IP, services=("sip",),
                           config={"dns": {"nameservers": ["127.0.3.250"], "port": 5353, "timeout": 0.5},
                                   # CRLF pings here (the SIPp callees would take OPTIONS for calls);
                                   # the OPTIONS pings have a server of their own (nat_pings below)
                                   "sip": {"digest_algorithms": ["MD5"], "nat_ping_interval": 1,
                                           "nat_ping_method": "crlf", "udp_flow_timer": UDP_FLOW_TIMER}})
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace"):
        server.add_user(f"{user}@{DOMAIN}", PASSWORD)
    server.start()
    yield server
    server.kill()


def caller_keys() -> dict[str, str]:
    # A caller from another domain: a hosted-domain From would be challenged (407) first.
    return {"domain": DOMAIN, "caller": "alice", "caller_domain": "visitor.test"}


# --- baresip over TLS ------------------------------------------------------------------------------

BARESIP_IP = "127.0.3.151"


def _baresip_config(directory: Path, ca: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    modules = "/usr/lib/baresip/modules"
    (directory / "config").write_text(
        "poll_method\t\tepoll\n"
        f"sip_listen\t\t{BARESIP_IP}:5070\n"
        f"sip_cafile\t\t{ca}\n"
        "audio_player\t\taufile,/dev/null\n"
        "audio_source\t\tausine,440\n"
        "ausrc_srate\t\t48000\n"  # ausine makes 48 kHz stereo only; baresip resamples
        "ausrc_channels\t\t2\n"
        "audio_alert\t\taufile,/dev/null\n"
        f"module_path\t\t{modules}\n"
        "module\t\t\tg711.so\n"
        "module\t\t\tausine.so\n"
        "module\t\t\taufile.so\n"
        "module_app\t\taccount.so\n"
        "module_app\t\tmenu.so\n"
        f"dns_server\t\t127.0.3.250:5353\n"
        f"net_interface\t\t{BARESIP_IP}\n")
    (directory / "accounts").write_text(
        f"<sip:bob@{DOMAIN};transport=tls>;auth_pass={PASSWORD};"
        f"outbound=\"sip:{SERVER_IP}:5061;transport=tls\";answermode=auto;regint=600\n")
    (directory / "contacts").write_text("")


@pytest.fixture
def baresip(f_test: PeerageServer, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    binary = require_binary("baresip")
    config = tmp_path / "baresip"
    _baresip_config(config, f_test.workdir / f"{DOMAIN}.crt")
    log = tmp_path / "baresip.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "-f", str(config), "-s", "-v", "-t", "40"], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (b"200 OK" in log.read_bytes() and b"REGISTER" in log.read_bytes())
                 or process.poll() is not None, timeout=15, message="baresip registered")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield process, log
    finally:
        process.kill()
        process.wait()


def test_call_and_hang_up_with_baresip_over_tls(f_test: PeerageServer, baresip: tuple[subprocess.Popen[bytes], Path],
                                                 tmp_path: Path) -> None:
    _process, log = baresip
    uac = run_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.152", port=5090, server=SERVER,
                   service="bob", keys=caller_keys())
    text = log.read_text(errors="replace")
    assert uac.returncode == 0, failure_report(tmp_path, uac) + text[-4000:]
    # the BYE went down baresip's own TLS connection and baresip answered it
    assert "BYE sip:" in text, text[-4000:]


# --- a UA behind NAT on UDP ---------------------------------------------------------------------------

NAT_BOUND = "127.0.3.141"  # where SIPp really is
NAT_CLAIMED = "127.0.3.142"  # what its Via and Contact say (nothing listens there)


def test_ua_behind_nat_receives_calls(f_test: PeerageServer, tmp_path: Path) -> None:
    register = run_sipp(tmp_path, "register_nat.xml", local_ip=NAT_BOUND, port=5080, server=SERVER,
                        service="carol", keys={"domain": DOMAIN, "advertised": NAT_CLAIMED},
                        extra=["-au", "carol", "-ap", PASSWORD])
    assert register.returncode == 0, failure_report(tmp_path, register)
    uas = start_sipp(tmp_path, "uas_nat.xml", local_ip=NAT_BOUND, port=5080, server=None,
                     keys={"advertised": NAT_CLAIMED}, extra=["-d", "0"])
    uac = run_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.143", port=5081, server=SERVER,
                   service="carol", keys=caller_keys())
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)


def test_nat_binding_gets_keep_alives(f_test: PeerageServer) -> None:
    ua = UdpUA("127.0.3.144", (SERVER_IP, 5060), "dave", DOMAIN, PASSWORD)
    try:
        claimed = f"127.0.3.145:{ua.port}"
        request = ua.build("REGISTER", f"sip:{DOMAIN}", extra=[("Contact", f"<sip:dave@{claimed}>")])
        request.set("Via", request.first_value("via").replace(f"{ua.address}:{ua.port}", claimed))  # type: ignore[union-attr]
        response = ua.final_response(request)
        assert response is not None and response.status == 401
        challenge = response.get_all_raw("www-authenticate")[0]
        retry = ua.build("REGISTER", f"sip:{DOMAIN}", extra=[
            ("Contact", f"<sip:dave@{claimed}>"),
            ("Authorization", client_authorization(challenge, "REGISTER", f"sip:{DOMAIN}", "dave", PASSWORD))])
        retry.set("Via", retry.first_value("via").replace(f"{ua.address}:{ua.port}", claimed))  # type: ignore[union-attr]
        response = ua.final_response(retry)
        assert response is not None and response.status == 200
        # nat_ping_interval = 1: a CRLF keep-alive arrives at the address the UA sends from
        ua.sock.settimeout(3)
        data, source = ua.sock.recvfrom(100)
        assert data == b"\r\n\r\n" and source == (SERVER_IP, 5060)
    finally:
        ua.close()


# --- dead NAT'd contacts without outbound: OPTIONS keep-alives (Kamailio nathelper's sipping) --------

PING_SERVER_IP = "127.0.3.170"
PING_BOUND = "127.0.3.171"  # where SIPp really is
PING_CLAIMED = "127.0.3.172"  # what its Via and Contact say
NAT_PING_TIMEOUT = 3  # seconds a NAT'd contact may stay silent before its binding goes


@pytest.fixture(scope="module")
def nat_pings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    require_binary("sipp")
    server = PeerageServer(tmp_path_factory.mktemp("nat_pings"), [DOMAIN], PING_SERVER_IP, services=("sip",),
                           config={"dns": {"nameservers": ["127.0.3.250"], "port": 5353, "timeout": 0.5},
                                   "sip": {"digest_algorithms": ["MD5"], "nat_ping_interval": 1,
                                           "nat_ping_method": "options", "nat_ping_timeout": NAT_PING_TIMEOUT,
                                           "tcp_listen": [], "tls_listen": []}})
    server.add_user(f"henry@{DOMAIN}", PASSWORD)
    server.start()
    yield server
    server.kill()


def test_a_natted_contact_that_stops_answering_options_is_dropped(nat_pings: PeerageServer, tmp_path: Path) -> None:
    # SIPp registers as behind NAT, then stays 6 s (twice NAT_PING_TIMEOUT) answering the keep-alive
    # OPTIONS sent to the address it registered from (-aa), and exits: the answers kept the binding.
    offset = len(nat_pings.log_text())
    register = run_sipp(tmp_path, "register_nat_answering.xml", local_ip=PING_BOUND, port=5080,
                        server=f"{PING_SERVER_IP}:5060", service="henry",
                        keys={"domain": DOMAIN, "advertised": PING_CLAIMED},
                        extra=["-au", "henry", "-ap", PASSWORD, "-aa"])
    assert register.returncode == 0, failure_report(tmp_path, register)
    trace = message_log(tmp_path, "register_nat_answering.xml", register_pid(tmp_path))
    assert trace.count("OPTIONS sip:henry@127.0.3.172:5080 SIP/2.0") >= 3, trace[-2000:]
    assert "answered no keep-alive" not in nat_pings.log_text(offset)
    assert _registered(nat_pings, "henry")
    # Now nobody answers at that address: the binding goes once NAT_PING_TIMEOUT has passed.
    wait_for(lambda: "sip: UDP contact 127.0.3.171:5080 of sip:henry@f.test (behind NAT) answered no"
             in nat_pings.log_text(offset), timeout=20, message="the silent contact to be dropped")
    assert not _registered(nat_pings, "henry")
    # and a call to it is not sent into the void, but refused at once
    caller = UdpUA("127.0.3.173", (PING_SERVER_IP, 5060), "alice", "visitor.test")
    try:
        response = caller.final_response(caller.build("INVITE", f"sip:henry@{DOMAIN}", to=f"<sip:henry@{DOMAIN}>"))
        assert response is not None and response.status in (404, 480), response
    finally:
        caller.close()


def register_pid(workdir: Path) -> int:
    """The pid in the name of SIPp's message trace (it names its files after its process)."""
    names = sorted(workdir.glob("register_nat_answering_*_messages.log"))
    assert names, list(workdir.iterdir())
    return int(names[-1].name.split("_")[-2])


def _registered(server: PeerageServer, user: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{server.data_dir / 'peerage.db'}")
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM sip_registrations WHERE aor = :a"),
                                     {"a": f"sip:{user}@{DOMAIN}"}).scalar())
    finally:
        engine.dispose()


# --- RFC 5626 outbound and RFC 5627 GRUU over TCP ---------------------------------------------------


class TcpUA:
    """A user agent on one TCP (or TLS) connection: registers (with outbound and GRUU unless
    ``contact`` is given), answers INVITEs."""

    def __init__(self, address: str, user: str, tls: ssl.SSLContext | None = None,
                 contact: str | None = None) -> None:
        raw = socket.create_connection((SERVER_IP, 5061 if tls else 5060), timeout=5, source_address=(address, 0))
        self.sock = tls.wrap_socket(raw, server_hostname=DOMAIN) if tls else raw
        self.address, self.port = self.sock.getsockname()
        self.transport = "TLS" if tls else "TCP"
        self.contact = contact
        self.user = user
        self.parser = StreamParser()
        self.queue: list[SipMessage] = []
        self.instance = f"urn:uuid:{os.urandom(4).hex()}-0000-4000-8000-{os.urandom(6).hex()}"
        self.cseq = 0

    def request(self, authorization: str | None = None) -> SipMessage:
        self.cseq += 1
        headers = [
            ("Via", f"SIP/2.0/{self.transport} {self.address}:{self.port};branch=z9hG4bK-t{os.urandom(4).hex()}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.user}@{DOMAIN}>;tag=t{self.cseq}"),
            ("To", f"<sip:{self.user}@{DOMAIN}>"),
            ("Call-ID", f"reg-{self.instance}"),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Supported", "outbound, gruu, path"),
            # RFC 5626 §4.2: a Contact nobody can dial, as a browser's or a phone's behind NAT
            ("Contact", self.contact or f'<sip:{self.user}@{os.urandom(4).hex()}.invalid;transport=tcp;ob>'
                        f';reg-id=1;+sip.instance="<{self.instance}>"'),
        ]
        if authorization:
            headers.append(("Authorization", authorization))
        return SipMessage.request("REGISTER", f"sip:{DOMAIN}", headers)

    def send(self, message: SipMessage) -> None:
        self.sock.sendall(message.serialize())

    def receive(self, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while not self.queue:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65535)
            assert data, "connection closed"
            self.queue.extend(m for m in self.parser.feed(data) if isinstance(m, SipMessage))
        return self.queue.pop(0)

    def register(self) -> SipMessage:
        self.send(self.request())
        challenge = self.receive()
        assert challenge.status == 401, challenge
        header = challenge.get_all_raw("www-authenticate")[0]
        self.send(self.request(client_authorization(header, "REGISTER", f"sip:{DOMAIN}", self.user, PASSWORD)))
        response = self.receive()
        assert response.status == 200, response
        return response


def _server_side_open(address: str, port: int) -> bool:
    """Whether the server still holds its end of the TCP connection from ``address:port``."""
    listed = subprocess.run(["ss", "-tnH", "state", "established", "state", "close-wait"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
    return any(line.split()[-1] == f"{address}:{port}" and line.split()[-2].startswith(f"{SERVER_IP}:")
               for line in listed.splitlines() if line.strip())


def _final(ua: UdpUA, call_id: str) -> int:
    """The final status answering ``call_id`` (retransmissions of earlier calls skipped), within 20 s:
    a loaded CI machine, and still short of Timer B (32 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = ua.receive(deadline - time.monotonic())
        if message is not None and message.method is None and message.call_id == call_id \
                and message.status >= 200:
            return message.status
    raise AssertionError(f"no final response for {call_id}")


def test_outbound_gruu_and_flow_failure(f_test: PeerageServer) -> None:
    ua = TcpUA("127.0.3.146", "erin")
    caller = UdpUA("127.0.3.147", (SERVER_IP, 5060), "alice", "visitor.test", PASSWORD)
    try:
        response = ua.register()
        assert "outbound" in [v.strip() for v in response.get_all("require")]
        assert response.get("flow-timer") == "120"  # RFC 5626 §4.4.1
        contact = parse_name_addr(response.get("contact") or "")
        assert contact.params["reg-id"] == "1"
        pub_gruu = contact.params["pub-gruu"] or ""
        temp_gruu = contact.params["temp-gruu"] or ""
        assert pub_gruu == f"sip:erin@{DOMAIN};gr={ua.instance}"
        assert temp_gruu.startswith("sip:tgruu.") and "erin" not in temp_gruu and temp_gruu.endswith(";gr")
        assert split_params(temp_gruu.partition(";")[2]) == {"gr": None}

        for target in (temp_gruu, pub_gruu, f"sip:erin@{DOMAIN}"):
            # alice is from another domain: anyone may call a local user without an account
            invite = caller.build("INVITE", target, to=f"<{target}>", call_id=f"{os.urandom(4).hex()}@c")
            caller.send_raw(invite.serialize())
            arrived = ua.receive()
            while arrived.method == "ACK":  # the proxy's ACK for the previous call's 486
                arrived = ua.receive()
            assert arrived.method == "INVITE" and arrived.call_id == invite.call_id
            assert (arrived.uri or "").endswith(".invalid;transport=tcp;ob")  # the registered contact
            ua.send(make_response(arrived, 486, to_tag="busy"))
            assert _final(caller, invite.call_id) == 486

        ua.sock.close()  # the flow fails
        # ...once the server has seen it: its end of the connection is gone (not ESTABLISHED or
        # CLOSE-WAIT any more), or the INVITE would be written into the dying flow instead.
        wait_for(lambda: not _server_side_open(ua.address, ua.port), 30, "the server closing the flow")
        invite = caller.build("INVITE", pub_gruu, to=f"<{pub_gruu}>", call_id=f"{os.urandom(4).hex()}@c")
        caller.send_raw(invite.serialize())
        assert _final(caller, invite.call_id) == 430  # RFC 5626 §5.3: Flow Failed
    finally:
        caller.close()
        ua.sock.close()


def test_stun_keep_alive_on_the_sip_port(f_test: PeerageServer) -> None:
    """RFC 5626 §8: a UDP flow's keep-alive is a STUN Binding request to the SIP port; the answer
    names the address the request came from (XOR-MAPPED-ADDRESS, RFC 5389 §15.2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.3.148", 0))
        transaction = os.urandom(12)
        sock.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + transaction, (SERVER_IP, 5060))
        sock.settimeout(3)
        data = sock.recv(200)
        assert data[:2] == b"\x01\x01" and data[8:20] == transaction
        assert data[20:22] == b"\x00\x20"  # XOR-MAPPED-ADDRESS
        port = int.from_bytes(data[26:28], "big") ^ 0x2112
        address = bytes(b ^ m for b, m in zip(data[28:32], b"\x21\x12\xa4\x42", strict=True))
        assert (socket.inet_ntoa(address), port) == sock.getsockname()


def test_bye_reaches_a_tls_phone_whose_contact_cannot_be_dialled(f_test: PeerageServer, tmp_path: Path) -> None:
    """The reported bug: a phone registered over TLS names its listening port in its Contact but
    accepts no connections there; ACK and BYE must come down its own TLS connection, not a new
    one to the Contact (which timed out: 408)."""
    context = ssl.create_default_context(cafile=str(f_test.workdir / f"{DOMAIN}.crt"))
    context.check_hostname = False
    dead = "127.0.3.149:5999"  # nothing listens here
    phone = TcpUA("127.0.3.149", "bob", tls=context, contact=f"<sip:bob@{dead};transport=tls>")
    try:
        phone.register()
        uac = start_sipp(tmp_path, "uac_call.xml", local_ip="127.0.3.153", port=5092, server=SERVER,
                         service="bob", keys=caller_keys())
        invite = phone.receive(10)
        assert invite.method == "INVITE", invite
        ok = make_response(invite, 200, to_tag="phone")
        for route in invite.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", f"<sip:bob@{dead};transport=tls>")
        ok.add("Content-Type", "application/sdp")
        ok.body = b"v=0\r\no=- 1 1 IN IP4 127.0.3.149\r\ns=-\r\nc=IN IP4 127.0.3.149\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
        phone.send(ok)
        ack = phone.receive(10)
        assert ack.method == "ACK", ack
        bye = phone.receive(10)
        assert bye.method == "BYE", bye
        phone.send(make_response(bye, 200))
        code = finish(uac)
        assert code[0] == 0, failure_report(tmp_path, code)
    finally:
        phone.sock.close()


# --- RFC 5626 outbound over UDP: baresip's keep-alives, its BYE, its flow failing -------------------

OUTBOUND_IP = "127.0.3.155"  # baresip (grace)
CALLEE_IP = "127.0.3.156"  # SIPp (frank)
CONTROL_PORT = 4444


def _outbound_baresip(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(
        "poll_method\t\tepoll\n"
        f"sip_listen\t\t{OUTBOUND_IP}:5070\n"
        "audio_player\t\taufile,/dev/null\n"
        "audio_source\t\tausine,440\n"
        "ausrc_srate\t\t48000\n"
        "ausrc_channels\t\t2\n"
        "audio_alert\t\taufile,/dev/null\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module\t\t\tg711.so\n"
        "module\t\t\tausine.so\n"
        "module\t\t\taufile.so\n"
        "module_tmp\t\tuuid.so\n"  # the +sip.instance outbound needs (RFC 5626 §4.1)
        "module_app\t\taccount.so\n"
        "module_app\t\tmenu.so\n"
        "module_app\t\tctrl_tcp.so\n"
        f"ctrl_tcp_listen\t\t{OUTBOUND_IP}:{CONTROL_PORT}\n"
        "dns_server\t\t127.0.3.250:5353\n"
        f"net_interface\t\t{OUTBOUND_IP}\n")
    # sipnat=outbound: RFC 5626 (+sip.instance, reg-id, keep-alives at the registrar's Flow-Timer)
    (directory / "accounts").write_text(
        f"<sip:grace@{DOMAIN};transport=udp>;auth_pass={PASSWORD};"
        f"outbound=\"sip:{SERVER_IP}:5060;transport=udp\";sipnat=outbound;regint=600\n")
    (directory / "contacts").write_text("")


def _control(command: str, params: str = "") -> None:
    """One ctrl_tcp command (a netstring of JSON, baresip's modules/ctrl_tcp)."""
    body = json.dumps({"command": command, "params": params, "token": "t"}).encode()
    with socket.create_connection((OUTBOUND_IP, CONTROL_PORT), timeout=5) as sock:
        sock.sendall(str(len(body)).encode() + b":" + body + b",")
        sock.recv(4096)


def _bindings(user: str) -> list[str]:
    """The Contacts the registrar holds for ``user`` (a REGISTER without Contact only asks)."""
    ua = UdpUA("127.0.3.157", (SERVER_IP, 5060), user, DOMAIN, PASSWORD)
    try:
        request = ua.build("REGISTER", f"sip:{DOMAIN}", extra=[("Contact", "*")])
        request.headers = [h for h in request.headers if h[0] != "contact"]
        request.headers_changed()
        response = ua.final_response(request)
        assert response is not None and response.status == 401, response
        challenge = response.get_all_raw("www-authenticate")[0]
        query = ua.build("REGISTER", f"sip:{DOMAIN}", extra=[
            ("Contact", "*"), ("Authorization", client_authorization(challenge, "REGISTER", f"sip:{DOMAIN}", user,
                                                                     PASSWORD))])
        query.headers = [h for h in query.headers if h[0] != "contact"]
        query.headers_changed()
        answer = ua.final_response(query)
        assert answer is not None and answer.status == 200, answer
        # without the expires parameter, which counts down
        return [";".join(p for p in c.split(";") if not p.startswith("expires=")) for c in answer.get_all("contact")]
    finally:
        ua.close()


def test_outbound_udp_keep_alives_bye_and_flow_failure(f_test: PeerageServer, tmp_path: Path) -> None:
    binary = require_binary("baresip")
    config = tmp_path / "baresip"
    _outbound_baresip(config)
    log = tmp_path / "baresip.log"
    register = run_sipp(tmp_path, "register.xml", local_ip=CALLEE_IP, port=5094, server=SERVER, service="frank",
                        keys={"domain": DOMAIN}, extra=["-au", "frank", "-ap", PASSWORD])
    assert register.returncode == 0, failure_report(tmp_path, register)
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "-f", str(config), "-s", "-v"], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for(lambda: any("reg-id=" in c for c in _bindings("grace")) or process.poll() is not None,
                     timeout=15, message="baresip registered with outbound")
        except AssertionError as error:
            raise AssertionError(f"{error}: {_bindings('grace')}\n{log.read_text(errors='replace')[-3000:]}") from None
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        bound = [c for c in _bindings("grace") if "reg-id=" in c]
        assert len(bound) == 1 and "+sip.instance=" in bound[0], bound
        # Past the Flow-Timer and its slack (7 s), the flow lives on baresip's STUN keep-alives alone.
        time.sleep(UDP_FLOW_TIMER * 2 + 2)
        assert [c for c in _bindings("grace") if "reg-id=" in c] == bound
        assert "flow failed" not in f_test.log_text()

        # baresip calls frank (SIPp) and hangs up mid-call: the BYE goes through the proxy to SIPp.
        uas = start_sipp(tmp_path, "uas_call.xml", local_ip=CALLEE_IP, port=5094, server=None, extra=["-d", "0"])
        _control("dial", f"sip:frank@{DOMAIN}")
        wait_for(lambda: "Call established" in log.read_text(errors="replace"), timeout=15,
                 message="baresip's call established")
        _control("hangup")
        code = finish(uas)
        assert code[0] == 0, failure_report(tmp_path, code) + log.read_text(errors="replace")[-3000:]

        # The phone dies without a word: its keep-alives stop, and the flow is found dead.
        process.kill()
        process.wait(5)
        wait_for(lambda: not [c for c in _bindings("grace") if "reg-id=" in c], timeout=UDP_FLOW_TIMER * 2 + 10,
                 message="the dead flow's binding dropped")
        # The registrar drops the binding, then writes it away, then logs: wait for the line.
        wait_for(lambda: "flow failed" in f_test.log_text(), timeout=30, message="the flow failure logged")
        caller = UdpUA("127.0.3.158", (SERVER_IP, 5060), "alice", "visitor.test", PASSWORD)
        try:
            invite = caller.build("INVITE", f"sip:grace@{DOMAIN}", to=f"<sip:grace@{DOMAIN}>",
                                  call_id=f"{os.urandom(4).hex()}@c")
            started = time.monotonic()
            caller.send_raw(invite.serialize())
            assert _final(caller, invite.call_id) == 480  # nobody there, said at once (not Timer B's 408)
            assert time.monotonic() - started < 10  # Timer B would take 32 s
        finally:
            caller.close()
    finally:
        process.kill()
        process.wait(5)
