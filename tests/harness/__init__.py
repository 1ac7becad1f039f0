"""The multi-domain test harness: local DNS, peerage servers on loopback, a test CA, bounded waits.

Several independent peerage servers each serve their own domain on their own loopback address
(127.0.x.y), a local authoritative DNS server publishes their SRV, MX, NAPTR and A records, and real
third-party servers (Prosody, Kamailio, Postfix) join the same harness with a private resolv.conf.
"""

from tests.harness.ca import TestCA
from tests.harness.dns import LocalDNS
from tests.harness.peers import private_resolv_conf, require_binary
from tests.harness.server import PeerageServer, free_port
from tests.harness.waiting import async_wait_for, wait_for

__all__ = [
    "LocalDNS",
    "PeerageServer",
    "TestCA",
    "async_wait_for",
    "free_port",
    "private_resolv_conf",
    "require_binary",
    "wait_for",
]
