"""A SIP user agent on one TCP connection to one node, for the cluster tests.

It registers with RFC 5626 outbound (a Contact nobody can dial, as a phone behind NAT or a browser
has), so only the node holding its connection can reach it: a call taken by another node must be
forwarded there. SIPp plays the other side of each call.
"""

from __future__ import annotations

import os
import socket
import time

from peerage.sip.digest import client_authorization
from peerage.sip.message import SipMessage, StreamParser, make_response


class FlowUA:
    def __init__(self, local_ip: str, server_ip: str, user: str, domain: str, password: str) -> None:
        self.sock = socket.create_connection((server_ip, 5060), timeout=5, source_address=(local_ip, 0))
        self.address, self.port = self.sock.getsockname()
        self.user, self.domain, self.password = user, domain, password
        self.parser = StreamParser()
        self.queue: list[SipMessage] = []
        self.instance = f"urn:uuid:{os.urandom(4).hex()}-0000-4000-8000-{os.urandom(6).hex()}"
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def _register_request(self, authorization: str | None = None) -> SipMessage:
        self.cseq += 1
        headers = [
            ("Via", f"SIP/2.0/TCP {self.address}:{self.port};branch=z9hG4bK-c{os.urandom(4).hex()}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.user}@{self.domain}>;tag=c{self.cseq}"),
            ("To", f"<sip:{self.user}@{self.domain}>"),
            ("Call-ID", f"reg-{self.instance}"),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Supported", "outbound, path"),
            ("Contact", f'<sip:{self.user}@{os.urandom(4).hex()}.invalid;transport=tcp;ob>'
                        f';reg-id=1;+sip.instance="<{self.instance}>"'),
        ]
        if authorization:
            headers.append(("Authorization", authorization))
        return SipMessage.request("REGISTER", f"sip:{self.domain}", headers)

    def send(self, message: SipMessage) -> None:
        self.sock.sendall(message.serialize())

    def receive(self, timeout: float = 10.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while not self.queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.user}: nothing received within {timeout} s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65535)
            assert data, f"{self.user}: connection closed"
            self.queue.extend(m for m in self.parser.feed(data) if isinstance(m, SipMessage))
        return self.queue.pop(0)

    def request(self, method: str, timeout: float = 10.0) -> SipMessage:
        """The next request (responses to our own requests are not expected here)."""
        message = self.receive(timeout)
        assert message.method == method, f"{self.user}: wanted {method}, got {message.serialize()[:400]!r}"
        return message

    def register(self) -> SipMessage:
        self.send(self._register_request())
        challenge = self.receive()
        assert challenge.status == 401, challenge
        header = challenge.get_all_raw("www-authenticate")[0]
        uri = f"sip:{self.domain}"
        self.send(self._register_request(client_authorization(header, "REGISTER", uri, self.user, self.password)))
        response = self.receive()
        assert response.status == 200, response.serialize()
        return response

    def answer_call(self) -> list[list[str]]:
        """Answer an INVITE with 200 (keeping its Record-Route), then take its ACK and BYE; the
        Via headers of each of the three requests, top first, show the path it took."""
        invite = self.request("INVITE")
        ok = make_response(invite, 200, to_tag="flow")
        for route in invite.get_all("record-route"):
            ok.add("Record-Route", route)
        ok.add("Contact", f"<sip:{self.user}@{os.urandom(4).hex()}.invalid;transport=tcp;ob>")
        ok.add("Content-Type", "application/sdp")
        ok.body = (f"v=0\r\no=- 1 1 IN IP4 {self.address}\r\ns=-\r\nc=IN IP4 {self.address}\r\nt=0 0\r\n"
                   f"m=audio 6000 RTP/AVP 0\r\n").encode()
        self.send(ok)
        paths = [invite.get_all("via")]
        ack = self.request("ACK")
        paths.append(ack.get_all("via"))
        bye = self.request("BYE")
        paths.append(bye.get_all("via"))
        self.send(make_response(bye, 200))
        return paths

    def answer_message(self) -> SipMessage:
        message = self.request("MESSAGE")
        self.send(make_response(message, 200, to_tag="flow"))
        return message
