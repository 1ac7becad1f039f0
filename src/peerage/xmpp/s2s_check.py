"""``peerage check federation DOMAIN``: a real negotiation with a remote domain, explained step by step.

This module is in charge of telling an operator, in plain language, what happens when this server
federates with DOMAIN: the DNS records found (XEP-0368 ``_xmpps-server``, ``_xmpp-server``, A/AAAA),
the TCP connection, the stream features, TLS (version, the certificate chain and the names in it,
never the Common Name), SASL EXTERNAL and dialback, then the level reached (U/V/E/T) and why. It
uses the same policy functions and certificate checks as the server, and the persisted dialback
secret, so a running server answers the remote's dialback verification and the check succeeds exactly
when federation would.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from peerage.xmpp import dialback
from peerage.xmpp.federation import (
    Level,
    TlsChoice,
    accepts_receiver_certificate,
    initiator_starttls,
    initiator_uses_sasl_external,
    level_reached,
    presents_certificate,
)
from peerage.xmpp.s2s import (
    DEFAULT_S2S_PORT,
    SASL_NS,
    TLS_NS,
    VERIFY_TIMEOUT,
    S2SService,
    StreamError,
    XmlConnection,
    open_xml_connection,
)
from peerage.xmpp.s2s_stream import header as _header
from peerage.xmpp.s2s_stream import is_1_0 as _is_1_0
from peerage.xmpp.s2s_stream import sasl_failure_text
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
    from peerage.identity.address import is_ip_literal
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

    # 2. TCP
    say("2. TCP")
    connection: XmlConnection | None = None
    direct_tls = False
    for name, port, is_direct in targets:
        addresses = [name] if is_ip_literal(name) else list(await host.dns.addresses(name))
        if not addresses:
            say(f"  FAIL  {name} has no A or AAAA record")
            continue
        for address in addresses:
            try:
                context = service.tls.client(local, presents_certificate(profile), True) if is_direct else None
                opened = await asyncio.wait_for(open_xml_connection(
                    address, port, config.xmpp.max_stanza_size, tls_context=context,
                    server_hostname=remote if context else None), CHECK_CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ssl.SSLError) as error:
                say(f"  FAIL  {address}:{port} ({name}): {error or type(error).__name__}")
                continue
            say(f"  ok    connected to {address}:{port} ({name})" + (" with Direct TLS" if is_direct else ""))
            connection = opened
            direct_tls = is_direct
            break
        if connection is not None:
            break
    if connection is None:
        say("FAIL  no server of the domain accepted a connection: check the records above, the "
            "remote firewall, and that its server listens on those ports")
        return Level.UNSUCCESSFUL

    reached = Progress()
    try:
        level = await _negotiate(service, connection, profile, local, remote, direct_tls, say, reached)
    except StreamError as error:
        say(f"FAIL  the remote server closed the stream with <{error.condition}/>: {error.text}")
        level = Level.UNSUCCESSFUL
    except (ConnectionError, OSError, ssl.SSLError) as error:
        say(f"FAIL  the connection broke: {error}")
        level = Level.UNSUCCESSFUL
    finally:
        connection.close(graceful=True)
    if level is Level.UNSUCCESSFUL:
        say(f"RESULT level U (unsuccessful): {reached.describe()}")
    return level


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
                     direct_tls: bool, say: Callable[[str], None], reached: Progress) -> Level:
    say("3. Stream and TLS")
    certificate = None
    if direct_tls:
        certificate = _report_tls(service, connection, remote, say, reached)
    while True:
        connection.write_header(_header(local, remote, None, profile.legacy))
        opened = await connection.header()
        stream_id = opened.attrs.get("id", "")
        if profile.legacy or not _is_1_0(opened.attrs):
            say("  info  pre-1.0 stream: no features, dialback only")
            features: dict[str, Any] = {}
            break
        features = _features_of(await connection.element())
        say("  ok    features offered: " + (", ".join(sorted(_feature_names(features))) or "none"))
        tls = features.get(TLS_NS)
        if connection.ssl_object is None and tls is not None:
            required = tls.find("required") is not None
            choice = initiator_starttls(profile, True, required)
            if choice is TlsChoice.NO:
                break
            connection.write(f"<starttls xmlns='{TLS_NS}'/>".encode())
            if (await connection.element()).name != "proceed":
                say("FAIL  the remote server refused STARTTLS")
                return Level.UNSUCCESSFUL
            await connection.starttls(service.tls.client(local, presents_certificate(profile)), remote)
            certificate = _report_tls(service, connection, remote, say, reached)
            if choice is TlsChoice.IF_AUTHENTICATED and not certificate.trusted:
                say("  info  TLS is optional for both sides and the certificate is not trusted: at the "
                    "verified level the server reconnects without TLS and uses dialback (level V)")
            continue
        break
    if connection.ssl_object is None:
        if profile.required >= Level.ENCRYPTED:
            say("FAIL  no TLS: our policy requires encryption with this domain")
            return Level.UNSUCCESSFUL
        say("  info  the stream is not encrypted")
    elif certificate is not None and not accepts_receiver_certificate(profile, certificate.trusted):
        say("FAIL  our policy for this domain is 'trusted' and the certificate is not: "
            + certificate.explain(remote))
        return Level.UNSUCCESSFUL

    say("4. SASL EXTERNAL (XEP-0178)")
    mechanisms = features.get(SASL_NS)
    external = mechanisms is not None and any(
        m.text.strip() == "EXTERNAL" for m in mechanisms.find_all("mechanism"))
    dialback_offered = dialback.DIALBACK_FEATURE_NS in features or not features
    if not external:
        say("  info  not offered: the remote server could not verify our certificate for "
            f"{local}, or its own is not CA-issued, or it does not support it")
    elif connection.ssl_object is not None and initiator_uses_sasl_external(profile, external, dialback_offered):
        authzid = base64.b64encode(local.encode()).decode()
        connection.write(f"<auth xmlns='{SASL_NS}' mechanism='EXTERNAL'>{authzid}</auth>".encode())
        answer = await connection.element()
        if answer.name == "success":
            say(f"  ok    authenticated as {local} by our certificate")
            say("RESULT level T (trusted): TLS, certificates verified both ways, SASL EXTERNAL")
            return Level.TRUSTED
        refusal = sasl_failure_text(answer)
        if not dialback_offered or profile.required >= Level.TRUSTED:
            say(f"  FAIL  refused: {refusal}")
            return Level.UNSUCCESSFUL
        say(f"  warn  refused: {refusal}; the remote server offers dialback too, so we fall back to "
            "it on this stream (as Prosody and ejabberd do)")
    else:
        say("  info  offered, but at the verified level we use dialback when both are offered")

    say("5. Dialback (XEP-0220)")
    if profile.required >= Level.TRUSTED:
        say("FAIL  our policy requires SASL EXTERNAL for this domain; dialback is not enough")
        return Level.UNSUCCESSFUL
    if not dialback_offered:
        say("FAIL  the remote server does not offer dialback")
        return Level.UNSUCCESSFUL
    key = service.secret.key(remote, local, stream_id)
    connection.send(dialback.result_request(local, remote, key))
    say(f"  info  sent our key; {remote} now connects back to {local} to verify it (our server must "
        "be running and reachable for that)")
    while True:
        element = await connection.element(VERIFY_TIMEOUT * 2)
        if element.xmlns == dialback.DIALBACK_NS and element.name == "result":
            message = dialback.parse(element)
            break
    if message.type == "valid":
        level = level_reached(connection.ssl_object is not None, "dialback")
        say(f"  ok    {remote} confirmed our identity")
        how = "TLS then dialback" if level is Level.ENCRYPTED else "dialback on a clear stream"
        say(f"RESULT level {level.letter} ({level.name.lower()}): {how}")
        return level
    if message.type == "error":
        say(f"FAIL  {remote} answered with a dialback error: {message.error} (remote-server-not-found "
            f"means it could not find our server in DNS; -timeout that it could not reach it)")
    else:
        say(f"FAIL  {remote} says our key is invalid: is `peerage serve` running for {local} with the "
            "same data folder (dialback secret) as this command?")
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

