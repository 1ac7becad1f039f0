"""SIP peering between domains found through DNS: two peerage domains, and Kamailio as a third.

a.test and b.test are peerage servers; k.test is Kamailio 5.6 with its own configuration and a
private resolv.conf.  All three find each other through NAPTR and SRV records served by LocalDNS.
No domain has an account for another: calls are accepted because they are addressed to a local user
(peering policy (a)); the caller's own proxy challenges it (b).
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LocalDNS, PeerageServer, TestCA, private_resolv_conf, require_binary, wait_for
from tests.sip.sipp import failure_report, finish, message_log, run_sipp, start_sipp
from tests.sip.ua import UdpUA

DNS_IP = "127.0.3.53"
A_IP, B_IP, DEAD_IP, K_IP = "127.0.3.101", "127.0.3.102", "127.0.3.103", "127.0.3.120"
C_IP, D_IP = "127.0.3.104", "127.0.3.105"  # SIPS only: c.test has a trusted certificate, d.test not
PASSWORD = "peering password"


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    server = LocalDNS(DNS_IP, 53)
    # a.test: UDP only
    server.add_naptr("a.test", 10, 10, "s", "SIP+D2U", "", "_sip._udp.a.test")
    server.add_srv("_sip._udp.a.test", 10, 0, 5060, "sip.a.test")
    server.add_a("sip.a.test", A_IP)
    # b.test: TCP, first target down (nothing listens on DEAD_IP), second one up
    server.add_naptr("b.test", 10, 10, "s", "SIP+D2T", "", "_sip._tcp.b.test")
    server.add_srv("_sip._tcp.b.test", 10, 0, 5060, "dead.b.test")
    server.add_srv("_sip._tcp.b.test", 20, 0, 5060, "sip.b.test")
    server.add_a("dead.b.test", DEAD_IP)
    server.add_a("sip.b.test", B_IP)
    # c.test and d.test: SIPS over TLS only
    for domain, address in (("c.test", C_IP), ("d.test", D_IP)):
        server.add_naptr(domain, 10, 10, "s", "SIPS+D2T", "", f"_sips._tcp.{domain}")
        server.add_srv(f"_sips._tcp.{domain}", 10, 0, 5061, f"sip.{domain}")
        server.add_a(f"sip.{domain}", address)
    # k.test: Kamailio over UDP
    server.add_naptr("k.test", 10, 10, "s", "SIP+D2U", "", "_sip._udp.k.test")
    server.add_srv("_sip._udp.k.test", 10, 0, 5060, "sip.k.test")
    server.add_a("sip.k.test", K_IP)
    server.start()
    yield server
    server.stop()


def _peerage(workdir: Path, domain: str, address: str, dns: LocalDNS,
             **kwargs: Any) -> PeerageServer:
    server = PeerageServer(workdir, [domain], address, dns=dns, services=("sip",),
                           config={"sip": {"digest_algorithms": ["MD5", "SHA-256"]}}, **kwargs)
    for user in ("alice", "bob", "carol"):
        server.add_user(f"{user}@{domain}", PASSWORD)
    return server


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory, dns: LocalDNS) -> Iterator[dict[str, PeerageServer]]:
    require_binary("sipp")
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    servers = {
        "a.test": _peerage(tmp_path_factory.mktemp("peer_a"), "a.test", A_IP, dns, ca_file=ca.cert_path),
        "b.test": _peerage(tmp_path_factory.mktemp("peer_b"), "b.test", B_IP, dns),
        "c.test": _peerage(tmp_path_factory.mktemp("peer_c"), "c.test", C_IP, dns,
                           certs={"c.test": ca.issue("c.test")}),
        "d.test": _peerage(tmp_path_factory.mktemp("peer_d"), "d.test", D_IP, dns),  # self-signed
    }
    try:
        for server in servers.values():
            # 90 s, not the harness's 30: four start one after another, and on a loaded machine (load
            # 26) one took over 30 s to log that it was ready
            server.start(timeout=90)
        yield servers
    finally:
        for server in servers.values():
            server.kill()


def _register(workdir: Path, user: str, domain: str, ip: str, port: int, server: str,
              scenario: str = "register.xml") -> None:
    extra = ["-au", user, "-ap", PASSWORD] if scenario == "register.xml" else []
    result = run_sipp(workdir, scenario, local_ip=ip, port=port, server=server, service=user,
                      keys={"domain": domain}, extra=extra)
    assert result.returncode == 0, failure_report(workdir, result)


def test_a_calls_b_through_naptr_srv_with_failover(domains: dict[str, PeerageServer], tmp_path: Path) -> None:
    _register(tmp_path, "bob", "b.test", "127.0.3.111", 5090, f"{B_IP}:5060")
    uas = start_sipp(tmp_path, "uas_call.xml", local_ip="127.0.3.111", port=5090, server=None,
                     extra=["-d", "0"])
    uac = run_sipp(tmp_path, "uac_call_auth.xml", local_ip="127.0.3.110", port=5091, server=f"{A_IP}:5060",
                   service="bob", keys={"domain": "b.test", "caller": "alice", "caller_domain": "a.test"},
                   extra=["-au", "alice", "-ap", PASSWORD])
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)
    trace = message_log(tmp_path, "uas_call.xml", uas.pid)
    invite = next(b for b in trace.split("-----") if "\nINVITE sip:" in b)
    # the call went a.test (UDP in, TCP out) -> b.test (the second SRV target) -> bob
    assert f"SIP/2.0/TCP {A_IP}:5060" in invite and f"SIP/2.0/UDP {B_IP}:5060" in invite
    bye = next(b for b in trace.split("-----") if "\nBYE sip:" in b)
    assert f"SIP/2.0/TCP {A_IP}:5060" in bye  # in-dialog requests follow both Record-Routes


def test_foreign_caller_needs_no_account(domains: dict[str, PeerageServer], tmp_path: Path) -> None:
    _register(tmp_path, "carol", "b.test", "127.0.3.112", 5092, f"{B_IP}:5060")
    uas = start_sipp(tmp_path, "uas_message.xml", local_ip="127.0.3.112", port=5092, server=None)
    # a caller from a domain b.test has never heard of, sending straight to b.test's proxy
    uac = run_sipp(tmp_path, "uac_message.xml", local_ip="127.0.3.113", port=5093, server=f"{B_IP}:5060",
                   service="carol", keys={"domain": "b.test", "caller": "stranger", "caller_domain": "c.test"})
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)


def test_sips_peering_verifies_the_domain_certificate(domains: dict[str, PeerageServer], tmp_path: Path) -> None:
    _register(tmp_path, "carol", "c.test", "127.0.3.116", 5098, f"{C_IP}:5060")
    uas = start_sipp(tmp_path, "uas_message.xml", local_ip="127.0.3.116", port=5098, server=None)
    uac = run_sipp(tmp_path, "uac_message_auth.xml", local_ip="127.0.3.117", port=5099, server=f"{A_IP}:5060",
                   service="carol", keys={"domain": "c.test", "caller": "alice", "caller_domain": "a.test"},
                   extra=["-au", "alice", "-ap", PASSWORD])
    assert uac.returncode == 0, failure_report(tmp_path, uac)
    code = finish(uas)
    assert code[0] == 0, failure_report(tmp_path, code)
    trace = message_log(tmp_path, "uas_message.xml", uas.pid)
    assert f"SIP/2.0/TLS {A_IP}:5061" in trace  # a.test -> c.test went over TLS
    # d.test presents a certificate nobody vouches for: a.test refuses to send it anything
    ua = UdpUA("127.0.3.118", (A_IP, 5060), "alice", "a.test", PASSWORD)
    try:
        refused = ua.request_with_auth("MESSAGE", "sip:dave@d.test", to="<sip:dave@d.test>",
                                       body=b"secret", extra=[("Content-Type", "text/plain")])
        assert refused is not None and refused.status >= 400 and refused.status != 407
    finally:
        ua.close()
    wait_for(lambda: "d.test" in domains["a.test"].log_text()
             and "certificate verify failed" in domains["a.test"].log_text(),
             timeout=10, message="a.test's log of the refused certificate")


# --- Kamailio -----------------------------------------------------------------------------------


def _kamailio_modules() -> str:
    found = glob.glob("/usr/lib/*/kamailio/modules/tm.so") + glob.glob("/usr/lib/kamailio/modules/tm.so")
    if not found:
        pytest.skip("kamailio modules not found") if not os.environ.get("CI") else pytest.fail("no kamailio modules")
    return os.path.dirname(found[0])


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory, dns: LocalDNS) -> Iterator[str]:
    binary = require_binary("kamailio", "/usr/sbin/kamailio")
    workdir = tmp_path_factory.mktemp("kamailio")
    rundir = workdir / "run"
    rundir.mkdir()
    config = (Path(__file__).parent / "kamailio" / "kamailio.cfg").read_text()
    config = config.replace("LISTEN_IP", K_IP).replace("MPATH", _kamailio_modules() + "/")
    config = config.replace("RUNDIR", str(rundir))
    (workdir / "kamailio.cfg").write_text(config)
    command = [binary, "-f", str(workdir / "kamailio.cfg"), "-DD", "-E", "-Y", str(rundir),
               "-P", str(rundir / "kamailio.pid"), "-m", "64", "-M", "8", "-w", str(workdir)]
    log = open(workdir / "kamailio.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(private_resolv_conf(command, DNS_IP, workdir), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError((workdir / "kamailio.log").read_text()[-3000:])
        with socket.socket() as probe:
            probe.settimeout(0.2)
            return probe.connect_ex((K_IP, 5060)) == 0

    try:
        wait_for(ready, timeout=15, message="kamailio listening")
        yield str(workdir)
    finally:
        try:
            os.killpg(process.pid, 15)
            process.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, 9)
            process.wait(5)
        log.close()


def test_calls_and_messages_with_kamailio(domains: dict[str, PeerageServer], kamailio: str,
                                          tmp_path: Path) -> None:
    a_proxy, k_proxy = f"{A_IP}:5060", f"{K_IP}:5060"
    _register(tmp_path, "kate", "k.test", "127.0.3.121", 5094, k_proxy, scenario="register_open.xml")
    _register(tmp_path, "alice", "a.test", "127.0.3.114", 5095, a_proxy)

    # peerage user -> Kamailio user: call, then MESSAGE
    for uas_scenario, uac_scenario in (("uas_call.xml", "uac_call_auth.xml"),
                                       ("uas_message.xml", "uac_message_auth.xml")):
        uas = start_sipp(tmp_path, uas_scenario, local_ip="127.0.3.121", port=5094, server=None,
                         extra=["-d", "0"])
        uac = run_sipp(tmp_path, uac_scenario, local_ip="127.0.3.115", port=5096, server=a_proxy,
                       service="kate", keys={"domain": "k.test", "caller": "alice", "caller_domain": "a.test"},
                       extra=["-au", "alice", "-ap", PASSWORD])
        assert uac.returncode == 0, failure_report(tmp_path, uac)
        code = finish(uas)
        assert code[0] == 0, failure_report(tmp_path, code)
        if uas_scenario == "uas_call.xml":
            trace = message_log(tmp_path, uas_scenario, uas.pid)
            bye = next(b for b in trace.split("-----") if "\nBYE sip:" in b)
            assert f"{A_IP}:5060" in bye and f"{K_IP}" in bye  # BYE crossed both proxies

    # Kamailio user -> peerage user: call, then MESSAGE (no authentication towards a.test)
    for uas_scenario, uac_scenario in (("uas_call.xml", "uac_call.xml"),
                                       ("uas_message.xml", "uac_message.xml")):
        uas = start_sipp(tmp_path, uas_scenario, local_ip="127.0.3.114", port=5095, server=None,
                         extra=["-d", "0"])
        uac = run_sipp(tmp_path, uac_scenario, local_ip="127.0.3.122", port=5097, server=k_proxy,
                       service="alice", keys={"domain": "a.test", "caller": "kate", "caller_domain": "k.test"})
        assert uac.returncode == 0, failure_report(tmp_path, uac)
        code = finish(uas)
        assert code[0] == 0, failure_report(tmp_path, code)
