"""A small TURN client (RFC 8656 Allocate over UDP with RFC 8489 long-term credentials), for the tests.

It sends an Allocate, answers the 401 challenge with the REALM and NONCE it names and a
MESSAGE-INTEGRITY keyed with MD5(username:realm:password) (RFC 8489 §9.2.2), and reports what the
server finally said: the relayed transport address on success, the error code otherwise. Enough to
prove that coturn accepts a credential peerage minted, and refuses an expired one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

MAGIC = 0x2112A442
ALLOCATE = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113
REFRESH = 0x0004
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_LIFETIME = 0x000D
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_RELAYED_ADDRESS = 0x0016
ATTR_REQUESTED_TRANSPORT = 0x0019
UDP = 17


@dataclass
class Answer:
    code: int  # 0 on success
    reason: str = ""
    relayed: tuple[str, int] | None = None
    realm: str = ""
    nonce: bytes = b""


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _message(method: int, tid: bytes, attrs: bytes, key: bytes | None) -> bytes:
    if key is None:
        return struct.pack("!HHI", method, len(attrs), MAGIC) + tid + attrs
    # MESSAGE-INTEGRITY covers the header with a length that already counts the attribute (§14.5).
    header = struct.pack("!HHI", method, len(attrs) + 24, MAGIC) + tid
    mac = hmac.new(key, header + attrs, hashlib.sha1).digest()
    return header + attrs + _attr(ATTR_MESSAGE_INTEGRITY, mac)


def _parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, length, magic = struct.unpack("!HHI", data[:8])
    assert magic == MAGIC, "not a STUN message"
    attrs: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= 20 + length:
        akind, alen = struct.unpack("!HH", data[offset:offset + 4])
        attrs.setdefault(akind, data[offset + 4:offset + 4 + alen])
        offset += 4 + alen + (-alen % 4)
    return kind, attrs


def _answer(kind: int, attrs: dict[int, bytes]) -> Answer:
    if kind == ALLOCATE_SUCCESS:
        raw = attrs[ATTR_XOR_RELAYED_ADDRESS]
        port = struct.unpack("!H", raw[2:4])[0] ^ (MAGIC >> 16)
        address = struct.unpack("!I", raw[4:8])[0] ^ MAGIC
        return Answer(0, relayed=(socket.inet_ntoa(struct.pack("!I", address)), port))
    error = attrs.get(ATTR_ERROR_CODE, b"\0\0\0\0")
    code = (error[2] & 7) * 100 + error[3]
    return Answer(code, error[4:].decode("utf-8", "replace"), realm=attrs.get(ATTR_REALM, b"").decode(),
                  nonce=attrs.get(ATTR_NONCE, b""))


def allocate(server: tuple[str, int], username: str, password: str, *, timeout: float = 5.0,
             source: str = "127.0.0.1") -> Answer:
    """Allocate a UDP relay on `server` with the long-term credential; the server's final answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        transport = _attr(ATTR_REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))

        def exchange(message: bytes) -> Answer:
            tid = message[8:20]
            sock.sendto(message, server)
            while True:
                data, _ = sock.recvfrom(4096)
                if data[8:20] == tid:
                    return _answer(*_parse(data))

        first = exchange(_message(ALLOCATE, os.urandom(12), transport, None))
        if first.code != 401:
            return first
        key = hashlib.md5(f"{username}:{first.realm}:{password}".encode()).digest()
        attrs = (transport + _attr(ATTR_USERNAME, username.encode()) + _attr(ATTR_REALM, first.realm.encode())
                 + _attr(ATTR_NONCE, first.nonce))
        answer = exchange(_message(ALLOCATE, os.urandom(12), attrs, key))
        if answer.code == 0:
            # Release the allocation (RFC 8656 §7: a Refresh with LIFETIME 0) so none is left behind.
            release = (_attr(ATTR_LIFETIME, struct.pack("!I", 0)) + _attr(ATTR_USERNAME, username.encode())
                       + _attr(ATTR_REALM, first.realm.encode()) + _attr(ATTR_NONCE, first.nonce))
            sock.sendto(_message(REFRESH, os.urandom(12), release, key), server)
        return answer
