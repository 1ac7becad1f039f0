"""A minimal SIP user agent over UDP for tests: sends requests, answers digest challenges.

It exists for what SIPp cannot do (SHA-256 digest, RFC 8760; crafted malformed bytes); the call
scenarios themselves are driven by SIPp.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from peerage.sip.digest import client_authorization
from peerage.sip.message import SipMessage, SipParseError, parse_datagram

_counter = itertools.count(1)


class UdpUA:
    def __init__(self, address: str, server: tuple[str, int], user: str, domain: str,
                 password: str = "") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.address, self.port = self.sock.getsockname()
        self.server = server
        self.user = user
        self.domain = domain
        self.password = password
        self.call_id = f"{os.urandom(6).hex()}@{address}"
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def build(self, method: str, uri: str, to: str | None = None, extra: list[tuple[str, str]] | None = None,
              body: bytes = b"", call_id: str | None = None) -> SipMessage:
        self.cseq += 1
        branch = f"z9hG4bK-ua{next(_counter)}-{os.urandom(3).hex()}"
        headers = [
            ("Via", f"SIP/2.0/UDP {self.address}:{self.port};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.user}@{self.domain}>;tag={os.urandom(4).hex()}"),
            ("To", to or f"<sip:{self.user}@{self.domain}>"),
            ("Call-ID", call_id or self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
            *(extra or []),
        ]
        if not any(name.lower() in ("contact", "m") for name, _ in extra or []):
            headers.append(("Contact", f"<sip:{self.user}@{self.address}:{self.port}>"))
        return SipMessage.request(method, uri, headers, body)

    def send_raw(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(data, to or self.server)

    def receive(self, timeout: float = 5.0) -> SipMessage | None:
        """The next parseable message, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            try:
                return parse_datagram(data)
            except SipParseError:
                continue

    def final_response(self, request: SipMessage, timeout: float = 5.0) -> SipMessage | None:
        self.send_raw(request.serialize())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                return None
            if message.method is None and message.status >= 200 and message.cseq == request.cseq:
                return message
        return None

    def request_with_auth(self, method: str, uri: str, algorithm: str | None = None,
                          **kwargs: object) -> SipMessage | None:
        """Send, and answer one 401/407 with digest for ``algorithm`` (first offered if None)."""
        request = self.build(method, uri, **kwargs)  # type: ignore[arg-type]
        response = self.final_response(request)
        if response is None or response.status not in (401, 407):
            return response
        header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
        challenges = response.get_all_raw(header)
        chosen = next((c for c in challenges if algorithm is None or f"algorithm={algorithm}" in c), None)
        if chosen is None:
            return response
        credentials = client_authorization(chosen, method, uri, self.user, self.password)
        extra = list(kwargs.get("extra") or [])  # type: ignore[call-overload]
        extra.append(("Authorization" if response.status == 401 else "Proxy-Authorization", credentials))
        kwargs = dict(kwargs, extra=extra)
        retry = self.build(method, uri, **kwargs)  # type: ignore[arg-type]
        return self.final_response(retry)
