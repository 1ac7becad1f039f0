"""RFC 3261 §17 transaction state machines driven by a fake clock (no sleeping)."""

from __future__ import annotations

import itertools

from peerage.sip.message import SipMessage, make_response, parse_datagram
from peerage.sip.transaction import T1, T2, T4, Destination, TransactionLayer

UDP = Destination("UDP", ("127.0.3.9", 5060))
TCP = Destination("TCP", ("127.0.3.9", 5060), connection=object())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> SipMessage:
    return parse_datagram(
        (f"{method} sip:bob@b.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.3.1:5060;branch={branch}\r\n"
         f"Max-Forwards: 70\r\nFrom: <sip:a@a.test>;tag=1\r\nTo: <sip:bob@b.test>\r\n"
         f"Call-ID: c1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode())


def setup() -> tuple[TransactionLayer, Clock, list[tuple[bytes, Destination]]]:
    clock = Clock()
    sent: list[tuple[bytes, Destination]] = []
    layer = TransactionLayer(lambda data, dest: sent.append((data, dest)), clock)
    return layer, clock, sent


def advance(layer: TransactionLayer, clock: Clock, seconds: float) -> None:
    end = clock.now + seconds
    while True:
        deadline = layer.next_deadline()
        if deadline is None or deadline > end:
            break
        clock.now = deadline
        layer.tick()
    clock.now = end


def test_invite_client_timer_a_doubles_then_timer_b_times_out() -> None:
    layer, clock, sent = setup()
    tx = layer.new_client(request(), UDP)
    timeouts: list[object] = []
    tx.on_timeout = timeouts.append
    tx.start()
    times = [clock.now]
    while clock.now < 1000 + 64 * T1 + 1:
        before = len(sent)
        advance(layer, clock, 0.25)
        if len(sent) > before:
            times.append(clock.now)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0]  # Timer A: T1, 2T1, 4T1...
    assert timeouts == [tx] and tx.state == "terminated"
    assert layer.count == 0


def test_invite_client_over_tcp_never_retransmits() -> None:
    layer, clock, sent = setup()
    tx = layer.new_client(request(), TCP)
    tx.start()
    advance(layer, clock, 10)
    assert len(sent) == 1


def test_invite_client_non_2xx_acks_and_absorbs_retransmissions() -> None:
    layer, clock, sent = setup()
    got: list[int] = []
    tx = layer.new_client(request(), UDP)
    tx.on_response = lambda _tx, r: got.append(r.status)
    tx.start()
    invite = tx.request
    layer.receive_response(make_response(invite, 180, to_tag="t"))
    busy = make_response(invite, 486, to_tag="t")
    layer.receive_response(busy)
    layer.receive_response(busy)  # retransmission: ACK again, not delivered
    assert got == [180, 486]
    acks = [parse_datagram(d) for d, _ in sent if d.startswith(b"ACK")]
    assert len(acks) == 2 and acks[0].cseq == (1, "ACK") and acks[0].to_tag() == "t"
    assert tx.state == "completed"
    advance(layer, clock, 32.5)  # Timer D
    assert tx.state == "terminated"


def test_invite_client_2xx_terminates() -> None:
    layer, _, _ = setup()
    tx = layer.new_client(request(), UDP)
    tx.start()
    layer.receive_response(make_response(tx.request, 200, to_tag="t"))
    assert tx.state == "terminated" and layer.count == 0


def test_non_invite_client_timer_e_caps_at_t2_and_timer_k() -> None:
    layer, clock, sent = setup()
    tx = layer.new_client(request("OPTIONS"), UDP)
    tx.start()
    advance(layer, clock, 20)
    times = [i for i in range(len(sent))]
    assert len(times) >= 7  # 0, .5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5
    layer.receive_response(make_response(tx.request, 200))
    assert tx.state == "completed"
    advance(layer, clock, T4 + 0.1)  # Timer K
    assert tx.state == "terminated"


def test_non_invite_client_timeout_timer_f() -> None:
    layer, clock, _ = setup()
    tx = layer.new_client(request("MESSAGE"), UDP)
    timeouts: list[object] = []
    tx.on_timeout = timeouts.append
    tx.start()
    advance(layer, clock, 64 * T1 - 0.1)
    assert not timeouts
    advance(layer, clock, 0.2)
    assert timeouts == [tx]


def test_invite_server_retransmits_final_until_ack() -> None:
    layer, clock, sent = setup()
    invite = request()
    tx, new = layer.receive_request(invite, UDP)
    assert new and tx is not None
    tx.respond_status(100)
    again, new_again = layer.receive_request(invite, UDP)  # retransmitted INVITE
    assert again is tx and not new_again
    assert sent[-1][0].startswith(b"SIP/2.0 100")
    tx.respond_status(486, to_tag="x")
    count = len(sent)
    advance(layer, clock, T1 + 0.01)  # Timer G
    assert len(sent) == count + 1
    ack = parse_datagram(invite.serialize().replace(b"INVITE", b"ACK"))
    matched, _ = layer.receive_request(ack, UDP)
    assert matched is tx and tx.state == "confirmed"
    count = len(sent)
    advance(layer, clock, T2 * 2)
    assert len(sent) == count  # no more retransmissions after ACK
    assert tx.state == "terminated"  # Timer I


def test_invite_server_timer_h_gives_up_without_ack() -> None:
    layer, clock, _ = setup()
    tx, _ = layer.receive_request(request(), UDP)
    assert tx is not None
    tx.respond_status(404)
    advance(layer, clock, 64 * T1 + 0.1)
    assert tx.state == "terminated" and layer.count == 0


def test_non_invite_server_timer_j_and_absorb() -> None:
    layer, clock, sent = setup()
    options = request("OPTIONS")
    tx, _ = layer.receive_request(options, UDP)
    assert tx is not None
    tx.respond_status(200)
    layer.receive_request(options, UDP)
    assert len(sent) == 2 and sent[0][0] == sent[1][0]
    advance(layer, clock, 64 * T1 + 0.1)
    assert tx.state == "terminated"


def test_server_tcp_timers_zero_and_ack_for_2xx_goes_to_tu() -> None:
    layer, _clock, _ = setup()
    tx, _ = layer.receive_request(request(), TCP)
    assert tx is not None
    tx.respond_status(200, to_tag="x")
    assert tx.state == "terminated"
    ack = parse_datagram(request().serialize().replace(b"INVITE", b"ACK"))
    assert layer.receive_request(ack, TCP) == (None, True)


def test_cancel_finds_invite() -> None:
    layer, _, _ = setup()
    tx, _ = layer.receive_request(request(), UDP)
    cancel = parse_datagram(request().serialize().replace(b"INVITE", b"CANCEL"))
    assert layer.find_invite_for_cancel(cancel) is tx


def test_rport_response_goes_to_source() -> None:
    data = request().serialize().replace(b"branch=z9hG4bKabc", b"rport;branch=z9hG4bKabc")
    source = Destination("UDP", ("127.0.3.50", 40000))
    assert TransactionLayer.response_destination(parse_datagram(data), source) == source
    assert TransactionLayer.response_destination(request(), source).address == ("127.0.3.50", 5060)
