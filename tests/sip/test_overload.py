"""Overload end to end (RFC 3261 §21.5.4): a real proxy that falls behind sheds new INVITEs with 503 and
Retry-After instead of answering them late, answers every INVITE it read, and takes calls normally
again once it has caught up.

The backlog is made, not hoped for: the server process is stopped (SIGSTOP) while a burst of INVITEs
queues in its UDP socket, then continued; on waking, its loop is late and its socket full, which is
what a proxy past its capacity sees.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from peerage.sip.message import SipMessage
from tests.harness import PeerageServer, wait_for
from tests.sip.ua import UdpUA

SERVER_IP = "127.0.3.160"
DOMAIN = "o.test"
PASSWORD = "overload-password"
# INVITEs in the burst: well inside the kernel's default socket buffer (about 200 KB), so none is lost
# before the server reads it, and several batches (transport.UDP_READ_BATCH = 64) of work.
BURST = 200
# How long the server is kept stopped while the burst queues: far past overload_delay below.
STOPPED_SECONDS = 1.5


@pytest.fixture(scope="module")
def o_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerageServer]:
    server = PeerageServer(tmp_path_factory.mktemp("o_test"), [DOMAIN], SERVER_IP, services=("sip",),
                           config={"dns": {"nameservers": ["127.0.3.250"], "port": 5353, "timeout": 0.5},
                                   "sip": {"tcp_listen": [], "tls_listen": [], "overload_delay": 0.05,
                                           "flood_requests_per_second": 100_000}})
    server.add_user(f"bob@{DOMAIN}", PASSWORD)
    server.start()
    yield server
    server.kill()


def _invite(caller: UdpUA, number: int) -> SipMessage:
    # From another domain, to a hosted user with no phone registered: 480 when carried through.
    return caller.build("INVITE", f"sip:bob@{DOMAIN}", to=f"<sip:bob@{DOMAIN}>",
                        call_id=f"burst-{number}-{os.urandom(3).hex()}@visitor.test")


def test_a_backlog_is_shed_with_503_and_retry_after(o_test: PeerageServer) -> None:
    assert o_test.process is not None
    caller = UdpUA("127.0.3.161", (SERVER_IP, 5060), "alice", "visitor.test")
    try:
        # Carried through while the proxy keeps up.
        first = _invite(caller, 0)
        assert caller.final_response(first) is not None

        invites = [_invite(caller, n) for n in range(1, BURST + 1)]
        os.kill(o_test.process.pid, signal.SIGSTOP)
        try:
            for invite in invites:
                caller.send_raw(invite.serialize())
            time.sleep(STOPPED_SECONDS)
        finally:
            os.kill(o_test.process.pid, signal.SIGCONT)

        wanted = {invite.call_id for invite in invites}
        finals: dict[str, SipMessage] = {}
        deadline = time.monotonic() + 20
        while wanted - finals.keys() and time.monotonic() < deadline:
            message = caller.receive(deadline - time.monotonic())
            if message is not None and message.method is None and message.status >= 200 \
                    and message.call_id in wanted:
                finals.setdefault(message.call_id, message)
        # Every INVITE read was answered (none left to the caller's retransmissions) ...
        assert finals.keys() == wanted, f"{len(wanted - finals.keys())} of {BURST} INVITEs unanswered"
        shed = [m for m in finals.values() if m.status == 503]
        carried = [m for m in finals.values() if m.status == 480]
        # ... the backlog was shed, each refusal saying when to come back (RFC 3261 §21.5.4) ...
        print(f"shed {len(shed)}, carried {len(carried)} of {BURST}")
        assert shed, sorted({m.status for m in finals.values()})
        assert all((m.get("retry-after") or "").isdigit() for m in shed)
        assert len(shed) + len(carried) == BURST, sorted({m.status for m in finals.values()})

        # ... and once it has caught up, calls are carried through again.
        def carried_through() -> bool:
            answer = caller.final_response(_invite(caller, BURST + 1), timeout=2)
            return answer is not None and answer.status == 480

        wait_for(carried_through, timeout=15, message="calls carried again after the backlog")
    finally:
        caller.close()
