"""A network namespace joined to the host by one veth link, for a user agent that needs an interface
of its own: the test creates it, starts the UA inside it (``command``) and deletes it afterwards.

Why: baresip 1.0 takes the address it offers in SDP and in its ICE host candidates from a network
interface (its ``net_interface``, by default the one holding the default route), never from its SIP
listening address. Bound to a loopback address on the host it offers the host's LAN address, which the
loopback-only TURN relay of the tests refuses as a peer, so no media reaches it. Inside the namespace
its only interface is the veth end with the address the test chose.

The namespace must still reach the test's loopback addresses (the proxy, coturn) and be reached from
them: Linux drops packets to or from 127.0.0.0/8 on any device but ``lo`` as martians unless
``route_localnet`` is set on that device (net/ipv4/route.c), so it is set on both ends of the link, and
the namespace's own ``lo`` stays down so that 127.0.0.0/8 is not local there and goes out the veth by
the default route. Nothing else of the host changes; the host end disappears with the namespace.

Needs root (CAP_NET_ADMIN) and iproute2; ``reason_unavailable`` says when that is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from itertools import count

_serial = count()


def reason_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    return None


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _mac(link: str, namespace: str | None = None) -> str:
    prefix = ("ip", "netns", "exec", namespace) if namespace else ()
    result = subprocess.run((*prefix, "cat", f"/sys/class/net/{link}/address"), capture_output=True, text=True,
                            timeout=10, check=True)
    return result.stdout.strip()


class NetworkNamespace:
    """``address`` inside the namespace; ``host_address`` is its gateway, the host end of the link
    (a name for it in routes and the neighbour table: no interface holds it)."""

    def __init__(self, host_address: str, address: str) -> None:
        # Unique per process and instance, so runs in parallel never share a name; interface names
        # stay within the kernel's 15 characters (IFNAMSIZ - 1).
        tag = f"{os.getpid() % 100000}x{next(_serial)}"
        self.name = f"peerage-{tag}"
        self.host_link = f"pg{tag}h"
        self.link = f"pg{tag}n"
        self.host_address = host_address
        self.address = address
        self.started = False

    def start(self) -> NetworkNamespace:
        self.started = True
        inside = ("ip", "netns", "exec", self.name)
        try:
            _run("ip", "netns", "add", self.name)
            _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.link)
            _run("ip", "link", "set", self.link, "netns", self.name)
            # No address on the host end, IPv4 or IPv6: a browser on the host gathers ICE candidates on
            # every interface that has one, and one more relay candidate (over the veth) made
            # Chromium and baresip 1.0 settle on different candidate pairs, so DTLS never met. A
            # route and a fixed neighbour entry on each side stand in for the subnet and ARP.
            subprocess.run(("sysctl", "-qw", f"net.ipv6.conf.{self.host_link}.disable_ipv6=1"), capture_output=True,
                           timeout=10, check=False)  # absent when the kernel has no IPv6
            _run("sysctl", "-qw", f"net.ipv4.conf.{self.host_link}.route_localnet=1")
            _run("ip", "link", "set", self.host_link, "up")
            _run(*inside, "sysctl", "-qw", f"net.ipv4.conf.{self.link}.route_localnet=1")
            _run(*inside, "ip", "addr", "add", f"{self.address}/32", "dev", self.link)
            _run(*inside, "ip", "link", "set", self.link, "up")
            _run(*inside, "ip", "route", "add", self.host_address, "dev", self.link, "scope", "link")
            _run(*inside, "ip", "route", "add", "default", "via", self.host_address, "dev", self.link)
            _run("ip", "route", "add", f"{self.address}/32", "dev", self.host_link)
            _run(*inside, "ip", "neigh", "replace", self.host_address, "lladdr", _mac(self.host_link), "dev",
                 self.link, "nud", "permanent")
            _run("ip", "neigh", "replace", self.address, "lladdr", _mac(self.link, self.name), "dev",
                 self.host_link, "nud", "permanent")
        except BaseException:
            self.stop()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the process is the program)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def stop(self) -> None:
        """Delete the namespace and the link (idempotent). Processes inside must be stopped first: a
        namespace lives on, with its veth end, while anything runs in it."""
        if not self.started:
            return
        self.started = False
        for argv in (("ip", "netns", "del", self.name), ("ip", "link", "del", self.host_link)):
            subprocess.run(argv, capture_output=True, timeout=10, check=False)
