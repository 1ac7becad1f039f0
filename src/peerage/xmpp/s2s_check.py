"""``peerage check federation DOMAIN``: a real negotiation with a remote domain, explained step by step.

This module is in charge of telling an operator, in plain language, what happens when this server
federates with DOMAIN: the DNS records found (XEP-0368 ``_xmpps-server``, ``_xmpp-server``, A/AAAA),
the TCP connection, the stream features, TLS (version, the certificate chain and the names in it,
never the Common Name), SASL EXTERNAL and dialback, then the level reached (U/V/E/T) and why. It
runs the server's own initiating machine (``peerage.xmpp.s2s_stream.Initiator``: the same steps,
policy functions and certificate checks, including the reconnection without TLS of rule 1) and
narrates its steps, with the persisted dialback secret, so a running server answers the remote's
dialback verification and the check succeeds exactly when federation would.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from peerage.xmpp import dialback, s2s_stream
from peerage.xmpp.federation import (
    Level,
    level_reached,
    presents_certificate,
)
from peerage.xmpp.s2s import (
    DEFAULT_S2S_PORT,
    VERIFY_TIMEOUT,
    S2SService,
    StreamError,
    XmlConnection,
    open_xml_connection,
)
from peerage.xmpp.s2s_stream import sasl_failure_text
from peerage.xmpp.stream import SASL_NS, TLS_NS
from peerage.xmpp.x509 import check_certificate

#: Seconds for one TCP connect during a check (the same bound the server uses).
CHECK_CONNECT_TIMEOUT = 10.0


class _NoRouter:
    def is_hosted(self, domain: str) -> bool:
        return False

    def set_remote_sender(self, sender: object) -> None:
        return None

    def certificate_domain(self, domain: str) -> str:
        return domain


async def check_federation(config: Any, remote: str, local: str | None, say: Callable[[str], None]
                           ) -> Level:
    from peerage.net.dns import DnsTimeout, Resolver
    from peerage.net.tls import TLSContexts

    remote = remote.lower().rstrip(".")
    host = SimpleNamespace(config=config, dns=Resolver(config.dns), tls=TLSContexts(config),
                           publish_status=lambda key, value: None)
    service = S2SService(host, _NoRouter())
    local = (local or service.default_domain).lower()
    if local not in config.domains:
        say(f"FAIL  {local} is not a domain of this server; use --from with one of: "
            + ", ".join(config.domains))
        return Level.UNSUCCESSFUL
    policy = service.policy.for_domain(remote)
    profile = service.policy.profile(remote, service.certificate_kind(local))
    say(f"Checking federation from {local} to {remote}.")
    say(f"  our policy for {remote}: {profile.required.name.lower()}"
        + (" (legacy pre-1.0 dialback only)" if profile.legacy else "")
        + f"; our certificate for {local} is {service.certificate_kind(local).value}")
    if not policy.allowed:
        say(f"FAIL  {policy.why_refused}: this server will not federate with it.")
        return Level.UNSUCCESSFUL

    # 1. DNS
    say("1. DNS")
    try:
        direct = [] if profile.legacy else await host.dns.srv(f"_xmpps-server._tcp.{remote}")
        plain = await host.dns.srv(f"_xmpp-server._tcp.{remote}")
    except DnsTimeout as error:
        say(f"FAIL  no answer from the DNS servers ({error}); check [dns] nameservers")
        return Level.UNSUCCESSFUL
    for record in direct:
        say(f"  ok    _xmpps-server._tcp.{remote} -> {record.host}:{record.port} (Direct TLS, XEP-0368)")
    for record in plain:
        say(f"  ok    _xmpp-server._tcp.{remote} -> {record.host}:{record.port}")
    targets = [(r.host, r.port, True) for r in direct] + [(r.host, r.port, False) for r in plain]
    if not targets:
        say(f"  info  no SRV records; falling back to {remote}:{DEFAULT_S2S_PORT} (RFC 6120 section 3.2.2)")
        targets = [(remote, DEFAULT_S2S_PORT, False)]

    reached = Progress()
    skip_tls = False
    while True:
        connection, direct_tls = await _connect(service, host, targets, profile, local, remote, say,
                                                again=skip_tls)
        if connection is None:
            say("FAIL  no server of the domain accepted a connection: check the records above, the "
                "remote firewall, and that its server listens on those ports")
            return Level.UNSUCCESSFUL
        try:
            level = await _negotiate(service, connection, profile, local, remote, direct_tls, say, reached,
                                     skip_tls)
        except StreamError as error:
            say(f"FAIL  the remote server closed the stream with <{error.condition}/>: {error.text}")
            level = Level.UNSUCCESSFUL
        except (ConnectionError, OSError, ssl.SSLError) as error:
            say(f"FAIL  the connection broke: {error}")
            level = Level.UNSUCCESSFUL
        finally:
            connection.close(graceful=True)
        if level is None and not skip_tls:
            skip_tls = True  # rule 1: the server reconnects without TLS; so does the check
            reached = Progress()
            continue
        break
    if level is None or level is Level.UNSUCCESSFUL:
        say(f"RESULT level U (unsuccessful): {reached.describe()}")
        return Level.UNSUCCESSFUL
    return level


async def _connect(service: S2SService, host: Any, targets: list[tuple[str, int, bool]], profile: Any,
                   local: str, remote: str, say: Callable[[str], None], again: bool
                   ) -> tuple[XmlConnection | None, bool]:
    """The first target that accepts a TCP connection (Direct TLS included), as the server tries them."""
    from peerage.identity.address import is_ip_literal

    say("2. TCP" + (" (again, without STARTTLS)" if again else ""))
    for name, port, is_direct in targets:
        addresses = [name] if is_ip_literal(name) else list(await host.dns.addresses(name))
        if not addresses:
            say(f"  FAIL  {name} has no A or AAAA record")
            continue
        for address in addresses:
            try:
                context = service.tls.client(local, presents_certificate(profile), True) if is_direct else None
                opened = await asyncio.wait_for(open_xml_connection(
                    address, port, service.max_stanza, tls_context=context,
                    server_hostname=remote if context else None), CHECK_CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ssl.SSLError) as error:
                say(f"  FAIL  {address}:{port} ({name}): {error or type(error).__name__}")
                continue
            say(f"  ok    connected to {address}:{port} ({name})" + (" with Direct TLS" if is_direct else ""))
            return opened, is_direct
    return None, False


class Progress:
    """How far a failed negotiation got, so the RESULT line says what worked before what did not."""

    def __init__(self) -> None:
        self.tls = ""
        self.certificate = ""

    def describe(self) -> str:
        if not self.tls:
            return "connected, but no level was reached before the failure above"
        text = f"the stream was encrypted ({self.tls}"
        if self.certificate:
            text += f"; their certificate: {self.certificate}"
        return text + "), but authentication failed as explained above, so no stanza can flow"


async def _negotiate(service: S2SService, connection: XmlConnection, profile: Any, local: str, remote: str,
                     direct_tls: bool, say: Callable[[str], None], reached: Progress, skip_tls: bool
                     ) -> Level | None:
    """Run the server's own initiating machine (``s2s_stream.Initiator``) on ``connection``, saying
    what each step did. None: TLS bought nothing, the server would reconnect without it (rule 1)."""
    st = s2s_stream
    machine = st.Initiator(profile, local, remote, present_certificate=presents_certificate(profile),
                           skip_tls=skip_tls,
                           dialback_key=lambda stream_id: service.secret.key(remote, local, stream_id))
    say("3. Stream and TLS")
    direct = _report_tls(service, connection, remote, say, reached) if direct_tls else None
    actions = machine.start(direct)
    while True:
        for action in actions:
            if isinstance(action, st.Send):
                connection.write(action.data)
            elif isinstance(action, st.SendHeader):
                connection.write_header(action.data)
            elif isinstance(action, st.Restart):
                connection.restart()
            elif isinstance(action, st.StartTls):
                await connection.starttls(service.tls.client(local, action.present_certificate), remote)
        result = machine.result
        if result is not None:
            return _explain_result(machine, result, local, remote, say)
        before = machine.state
        if machine.expects is st.Expect.HEADER:
            attrs = (await connection.header()).attrs
            actions = machine.opened(attrs)
            if before is st.State.HEADER and machine.state is st.State.DIALBACK:
                say("  info  pre-1.0 stream: no features, dialback only")
                _explain_dialback_start(machine, local, remote, say)
            continue
        if machine.expects is st.Expect.TLS:
            check = _report_tls(service, connection, remote, say, reached)
            actions = machine.tls_established(check)
            continue
        element = await (connection.element(VERIFY_TIMEOUT * 2) if machine.awaits_dialback
                         else connection.element())
        if before is st.State.FEATURES:
            features = _features_of(element)
            say("  ok    features offered: " + (", ".join(sorted(_feature_names(features))) or "none"))
        actions = machine.element(element)
        after = machine.state
        if before is st.State.FEATURES and after in (st.State.SASL, st.State.DIALBACK):
            say("  info  the stream is not encrypted" if not machine.encrypted else
                "  ok    the stream is encrypted")
            say("4. SASL EXTERNAL (XEP-0178)")
            if after is st.State.SASL:
                say("  info  offered; authenticating with our certificate")
            else:
                external = SASL_NS in features and any(
                    m.text.strip() == "EXTERNAL" for m in features[SASL_NS].find_all("mechanism"))
                if not external:
                    say("  info  not offered: the remote server could not verify our certificate for "
                        f"{local}, or its own is not CA-issued, or it does not support it")
                else:
                    say("  info  offered, but at the verified level we use dialback when both are offered")
                _explain_dialback_start(machine, local, remote, say)
        elif before is st.State.SASL and after is st.State.RESTART_HEADER:
            say(f"  ok    authenticated as {local} by our certificate")
        elif before is st.State.SASL and after is st.State.DIALBACK:
            say(f"  warn  refused: {sasl_failure_text(element)}; the remote server offers dialback too, so "
                "we fall back to it on this stream (as Prosody and ejabberd do)")
            _explain_dialback_start(machine, local, remote, say)
        elif before is st.State.SASL and isinstance(machine.result, st.Failed):
            say(f"  FAIL  refused: {sasl_failure_text(element)}")


def _explain_dialback_start(machine: s2s_stream.Initiator, local: str, remote: str,
                            say: Callable[[str], None]) -> None:
    say("5. Dialback (XEP-0220)")
    say(f"  info  sent our key; {remote} now connects back to {local} to verify it (our server must "
        "be running and reachable for that)")


def _explain_result(machine: s2s_stream.Initiator, result: s2s_stream.Result, local: str, remote: str,
                    say: Callable[[str], None]) -> Level | None:
    st = s2s_stream
    if isinstance(result, st.FallBackToClear):
        say("  info  TLS is optional for both sides and the certificate is not trusted: at the "
            "verified level the server reconnects without TLS and uses dialback (level V)")
        return None
    if isinstance(result, st.Authenticated):
        level = level_reached(result.encrypted, result.method)
        if result.method == "sasl-external":
            say("RESULT level T (trusted): TLS, certificates verified both ways, SASL EXTERNAL")
            return level
        say(f"  ok    {remote} confirmed our identity")
        how = "TLS then dialback" if level is Level.ENCRYPTED else "dialback on a clear stream"
        say(f"RESULT level {level.letter} ({level.name.lower()}): {how}")
        return level
    reason = result.reason if isinstance(result, st.Failed) else repr(result)
    if reason.startswith("dialback error from the receiver"):
        say(f"FAIL  {remote} answered with a {reason.removeprefix('dialback error from the receiver: ')} "
            "dialback error (remote-server-not-found means it could not find our server in DNS; "
            "-timeout that it could not reach it)")
    elif reason == "the receiver could not verify our dialback key":
        say(f"FAIL  {remote} says our key is invalid: is `peerage serve` running for {local} with the "
            "same data folder (dialback secret) as this command?")
    elif not reason.startswith("the receiver refused SASL EXTERNAL"):  # said above
        say(f"FAIL  {reason}")
    return Level.UNSUCCESSFUL


def _features_of(element: Any) -> dict[str, Any]:
    return {child.xmlns: child for child in element.elements()}


def _feature_names(features: dict[str, Any]) -> list[str]:
    names = {TLS_NS: "STARTTLS", SASL_NS: "SASL", dialback.DIALBACK_FEATURE_NS: "dialback",
             "urn:xmpp:features:bidi": "bidi (XEP-0288)"}
    result = []
    for namespace, element in features.items():
        name = names.get(namespace, namespace)
        if namespace == TLS_NS and element.find("required") is not None:
            name += " (required)"
        if namespace == SASL_NS:
            name += " " + "/".join(m.text.strip() for m in element.find_all("mechanism"))
        result.append(name)
    return result


def _report_tls(service: S2SService, connection: XmlConnection, remote: str,
                say: Callable[[str], None], reached: Progress) -> Any:
    sslobj = connection.ssl_object
    cipher = sslobj.cipher() if sslobj is not None else None
    say(f"  ok    TLS {connection.tls_version}" + (f", {cipher[0]}" if cipher else ""))
    reached.tls = connection.tls_version
    check = check_certificate(connection.peer_certificate(), remote, service.trust)
    reached.certificate = check.explain(remote)
    if not check.present:
        say("  FAIL  no certificate")
        return check
    say(f"  info  certificate subject {check.subject}, issuer {check.issuer}, valid until {check.not_after}")
    say(f"  info  names in it: {check.identities.describe()}")
    say(("  ok    " if check.chain_ok else "  warn  ") + "chain: " + check.chain_reason
        + ("" if check.chain_ok else " (fine for the encrypted level, not for trusted)"))
    if check.matched:
        say(f"  ok    it is valid for {remote}: {check.matched}")
    else:
        say(f"  warn  it is NOT valid for {remote}; the Common Name is never used (RFC 9525). Add "
            f"{remote} as a DNS name (or an SRV-ID _xmpp-server.{remote}) to the certificate")
    return check


def run_check(config: Any, remote: str, local: str | None) -> int:
    level = asyncio.run(check_federation(config, remote, local, print))
    return 0 if level > Level.UNSUCCESSFUL else 1

