"""`peerage check`: configuration, certificates, DNS as published, ports, and TLS per protocol.

This module is in charge of looking at the installation from outside as a peer would, the way
`prosodyctl check` and `mox config dnscheck` do, and of printing one line per finding with a verdict
(ok, warning, problem) and, for every problem, the fix. DNS is compared record by record with what
`peerage dns` prints, through the configured resolver. The exit code is 1 when any problem was found;
warnings alone exit 0. Federation items: SMTP STARTTLS, our MTA-STS policy fetched over HTTPS
as senders fetch it (RFC 8461), our TLSA records against the certificates served (RFC 7671), and
SIP TLS on the published _sips._tcp targets (RFC 5922). `peerage check federation DOMAIN` (the XMPP package) goes further for XMPP.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from peerage.config import Config, ConfigError, parse_listen


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: int = 0
    warnings: int = 0

    def ok(self, text: str) -> None:
        self.lines.append(f"  ok       {text}")

    def warn(self, text: str, fix: str = "") -> None:
        self.warnings += 1
        self.lines.append(f"  warning  {text}" + (f"\n           fix: {fix}" if fix else ""))

    def problem(self, text: str, fix: str) -> None:
        self.problems += 1
        self.lines.append(f"  PROBLEM  {text}\n           fix: {fix}")

    def section(self, title: str) -> None:
        self.lines.append(f"\n{title}")


def check_certificates(config: Config, report: Report) -> None:
    from peerage.ops.certs import load_pair

    report.section("Certificates")
    for name, entry in config.domains.items():
        if entry.cert is None or entry.key is None:
            report.problem(f"{name}: no certificate", f"peerage domain add {name}, or set [acme] directory")
            continue
        try:
            info = load_pair(name, entry.cert, entry.key)
        except ConfigError as exc:
            report.problem(str(exc), "point [[domain]] cert/key at a matching PEM pair")
            continue
        covered = set(info.names)
        wildcard = f"*.{name}" in covered
        missing = [n for n in (name, f"autoconfig.{name}", f"mta-sts.{name}")
                   if n not in covered and not (wildcard and n != name)]
        if missing:
            report.problem(f"{name}: the certificate does not cover {', '.join(missing)}",
                           "issue one for these names ([acme] names) and run peerage reload")
        if info.days_left < 0:
            report.problem(f"{name}: the certificate expired on {info.not_after:%Y-%m-%d}",
                           "renew it (or set [acme] directory) and run peerage reload")
        elif info.days_left < 14:
            report.warn(f"{name}: the certificate expires in {info.days_left:.0f} days",
                        "renew it; with [acme] this happens by itself")
        if info.self_signed:
            report.warn(f"{name}: self-signed: browsers, mail clients and XMPP servers at the 'trusted' level "
                        "will not accept it", "set [acme] directory, or install a CA-issued certificate")
        elif not _chain_trusted(entry.cert, name):
            report.warn(f"{name}: the chain does not verify against the system's CAs (missing intermediate?)",
                        "put the full chain, leaf first, in the cert file")
        if not missing and info.days_left >= 14 and not info.self_signed:
            report.ok(f"{name}: certificate valid until {info.not_after:%Y-%m-%d}")


def _chain_trusted(cert_path: Any, name: str) -> bool:
    try:
        from cryptography import x509
        from cryptography.x509.verification import PolicyBuilder, Store

        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
        with open(bundle, "rb") as file:
            roots = x509.load_pem_x509_certificates(file.read())
        verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
        verifier.verify(chain[0], chain[1:])
        return True
    except Exception:
        return False


async def check_dns(config: Config, domain: str, report: Report) -> None:
    from peerage.cli import dns_sections

    report.section(f"DNS for {domain} (compared with `peerage dns {domain}`)")
    resolver = dns.asyncresolver.Resolver(configure=not config.dns.nameservers)
    if config.dns.nameservers:
        resolver.nameservers = list(config.dns.nameservers)
    resolver.port = config.dns.port
    resolver.lifetime = config.dns.timeout
    text = "\n".join(line for _, lines in dns_sections(config, domain) for line in lines)
    zone = dns.zone.from_text(text, origin=f"{domain}.", relativize=False, check_origin=False)
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            try:
                answer = await resolver.resolve(name, rdataset.rdtype, raise_on_no_answer=False)
                published = set(answer.rrset) if answer.rrset is not None else set()
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout):
                published = set()
            for rdata in rdataset:
                record = f"{name} {rdataset.ttl} IN {rtype} {rdata.to_text()}"
                if rdata in published:
                    report.ok(f"{name} {rtype}")
                elif published and rtype in ("TXT", "TLSA", "CNAME", "A", "AAAA"):
                    shown = ", ".join(r.to_text()[:60] for r in published)
                    report.problem(f"{name} {rtype} is published as {shown}", f"publish: {record}")
                else:
                    report.problem(f"{name} {rtype} is not published", f"publish: {record}")


async def _reachable(host: str, port: int, use_tls: bool, name: str) -> str | None:
    """None when a TCP (and TLS, with SNI `name`) connection succeeds; else why not."""
    ctx = None
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=name if ctx else None), 5)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        return str(exc) or type(exc).__name__
    writer.close()
    return None


async def check_ports(config: Config, report: Report) -> None:
    report.section("Ports (from this machine)")
    name = next(iter(config.domains), "localhost")
    tls_keys = {"c2s_direct_tls_listen", "s2s_direct_tls_listen", "tls_listen", "submissions_listen", "https_listen"}
    for section in ("xmpp", "sip", "smtp", "imap", "web", "metrics"):
        settings = getattr(config, section, None)
        if settings is None or not getattr(settings, "enabled", True):
            continue
        for key in (f for f in vars(settings) if f.endswith("listen") and isinstance(getattr(settings, f), list)):
            for spec in getattr(settings, key):
                host, port = parse_listen(spec)
                if host in ("0.0.0.0", ""):
                    host = "127.0.0.1"
                elif host == "::":
                    host = "::1"
                if section == "sip" and key == "udp_listen":
                    continue  # UDP has no connection to make
                why = await _reachable(host, port, key in tls_keys, name)
                if why is None:
                    report.ok(f"[{section}] {key} {spec} answers" + (" with TLS" if key in tls_keys else ""))
                else:
                    report.problem(f"[{section}] {key} {spec}: {why}",
                                   "start `peerage serve`, or open the port in the firewall")


async def check_smtp_starttls(config: Config, report: Report) -> None:
    if not config.smtp.enabled or not config.smtp.mx_listen:
        return
    report.section("Federation: SMTP (STARTTLS as other MTAs see it)")
    host, port = parse_listen(config.smtp.mx_listen[0])
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        await reader.readline()
        writer.write(b"EHLO check.invalid\r\n")
        lines = []
        while True:
            line = await asyncio.wait_for(reader.readline(), 5)
            lines.append(line)
            if not line or line[3:4] != b"-":
                break
        writer.write(b"QUIT\r\n")
        writer.close()
    except (TimeoutError, OSError) as exc:
        report.problem(f"SMTP on {host}:{port}: {exc}", "start `peerage serve`")
        return
    if any(b"STARTTLS" in line.upper() for line in lines):
        report.ok(f"SMTP on {host}:{port} offers STARTTLS (MTA-STS and DANE senders need it)")
    else:
        report.problem(f"SMTP on {host}:{port} does not offer STARTTLS", "configure a certificate for the domain")


def _resolver(config: Config) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not config.dns.nameservers)
    if config.dns.nameservers:
        resolver.nameservers = list(config.dns.nameservers)
    resolver.port = config.dns.port
    resolver.lifetime = config.dns.timeout
    return resolver


async def _lookup(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[Any]:
    try:
        answer = await resolver.resolve(name, rtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout):
        return []
    return list(answer.rrset) if answer.rrset is not None else []


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


def _verifying_context(config: Config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(config.tls.ca_file) if config.tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _loose_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _https_get(address: str, port: int, host: str, path: str, ctx: ssl.SSLContext) -> tuple[int, str]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port, ssl=ctx, server_hostname=host), 5)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(128 * 1024), 5)
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            response += chunk
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body.decode("utf-8", "replace")


async def check_mta_sts(config: Config, domain: str, report: Report) -> None:
    """RFC 8461: fetch our own policy over HTTPS as a sender would and compare it with the record."""
    from peerage.mail.auth.mtasts import PolicyError, parse_policy, parse_txt
    from peerage.mail.dnsrecords import mta_sts_policy

    if not config.smtp.enabled:
        return
    report.section(f"Federation: MTA-STS for {domain} (RFC 8461, as sending MTAs fetch it)")
    resolver = _resolver(config)
    texts = [b"".join(r.strings).decode("utf-8", "replace") for r in await _lookup(resolver, f"_mta-sts.{domain}", "TXT")]
    ids = [i for t in texts if (i := parse_txt(t)) is not None]
    if len(ids) != 1:
        report.problem(f"_mta-sts.{domain} TXT: {'no' if not ids else 'more than one'} v=STSv1 record, so senders "
                       "ignore the policy", f"publish the _mta-sts record of `peerage dns {domain}`")
        return
    host = f"mta-sts.{domain}"
    addresses = [r.to_text() for r in await _lookup(resolver, host, "A")] + \
        [r.to_text() for r in await _lookup(resolver, host, "AAAA")]
    if not addresses:
        report.problem(f"{host} has no address, so the policy cannot be fetched",
                       f"publish the {host} record of `peerage dns {domain}`")
        return
    port = parse_listen(config.web.https_listen[0])[1] if config.web.enabled and config.web.https_listen else 443
    url = f"https://{host}/.well-known/mta-sts.txt"
    try:
        status, body = await _https_get(addresses[0], port, host, "/.well-known/mta-sts.txt", _verifying_context(config))
    except ssl.SSLCertVerificationError as exc:
        report.problem(f"{url}: the certificate does not verify ({exc.verify_message}); senders treat this as no "
                       "policy", f"serve a CA-issued certificate covering {host} ([acme] names)")
        try:
            status, body = await _https_get(addresses[0], port, host, "/.well-known/mta-sts.txt", _loose_context())
        except (TimeoutError, OSError, ssl.SSLError):
            return
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        report.problem(f"{url} ({addresses[0]}:{port}): {exc or type(exc).__name__}",
                       "enable [web] and make https_listen reachable on port 443")
        return
    if status != 200:
        report.problem(f"{url} answered HTTP {status} (only 200 counts, redirects are not followed)",
                       "serve the policy with [web] enabled on that host")
        return
    try:
        policy = parse_policy(body, ids[0])
    except PolicyError as exc:
        report.problem(f"{url}: invalid policy: {exc}", "serve the policy `peerage dns` shows")
        return
    expected = parse_policy("\n".join(mta_sts_policy(domain, config)))
    mx_hosts = [r.exchange.to_text().rstrip(".") for r in await _lookup(resolver, domain, "MX")]
    uncovered = [m for m in mx_hosts if not policy.matches(m)]
    if policy.mode != expected.mode:
        report.problem(f"{url}: mode {policy.mode}, but peerage publishes mode {expected.mode}",
                       "serve the policy from this server's [web], or update it")
    elif set(policy.mx) != set(expected.mx):
        report.problem(f"{url}: mx {', '.join(policy.mx)}, expected {', '.join(expected.mx)}",
                       "serve the policy from this server's [web], or update it")
    elif uncovered:
        report.problem(f"{url}: the published MX {', '.join(uncovered)} is not in the policy; senders in "
                       "enforce mode will not deliver there", "make the MX records and [smtp] hostname agree")
    else:
        report.ok(f"{url}: mode {policy.mode}, mx {', '.join(policy.mx)}, id {ids[0]}")


async def _served_certificate(host: str, port: int, kind: str, name: str) -> bytes:
    """The DER leaf certificate served on host:port; `kind` is smtp, xmpp-client, xmpp-server or tls."""
    ctx = _loose_context()
    if kind == "tls":
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx, server_hostname=name), 5)
    else:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        if kind == "smtp":
            await asyncio.wait_for(reader.readline(), 5)
            writer.write(b"EHLO check.invalid\r\n")
            while (line := await asyncio.wait_for(reader.readline(), 5)) and line[3:4] == b"-":
                pass
            writer.write(b"STARTTLS\r\n")
            reply = await asyncio.wait_for(reader.readline(), 5)
            if not reply.startswith(b"220"):
                writer.close()
                raise OSError(f"STARTTLS refused: {reply.decode(errors='replace').strip()}")
        else:
            ns = "jabber:client" if kind == "xmpp-client" else "jabber:server"
            writer.write(f"<?xml version='1.0'?><stream:stream to='{name}' xmlns='{ns}' "
                         "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
            data = b""
            while b"</stream:features>" not in data:
                chunk = await asyncio.wait_for(reader.read(4096), 5)
                if not chunk:
                    raise OSError("stream closed before features")
                data += chunk
            writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            data = b""
            while b"<proceed" not in data:
                chunk = await asyncio.wait_for(reader.read(4096), 5)
                if not chunk or b"<failure" in chunk:
                    raise OSError("STARTTLS refused")
                data += chunk
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=name), 5)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    finally:
        writer.close()
    if not der:
        raise OSError("no certificate")
    return bytes(der)


def tlsa_matches(der: bytes, usage: int, selector: int, mtype: int, data: bytes) -> bool | None:
    """Whether a DANE-EE/DANE-TA-less TLSA record matches the leaf (RFC 6698 §2.1, RFC 7671 §5.1);
    None for usages that need the chain or a PKIX validation (0, 1, 2), which this check leaves alone."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if usage != 3:
        return None
    cert = x509.load_der_x509_certificate(der)
    content = der if selector == 0 else cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        content = hashlib.sha256(content).digest()
    elif mtype == 2:
        content = hashlib.sha512(content).digest()
    return content == data


async def check_dane(config: Config, domain: str, report: Report) -> None:
    """RFC 7671/7672/7673: our published TLSA records against the certificate each port serves."""
    target = config.server.public_hostname or domain
    plans: list[tuple[int, str, str, str]] = []  # published port, kind, listen, label
    if config.smtp.enabled and config.smtp.mx_listen:
        plans.append((25, "smtp", config.smtp.mx_listen[0], "SMTP"))
    if config.xmpp.enabled:
        for listens, kind, label in ((config.xmpp.c2s_listen, "xmpp-client", "XMPP c2s"),
                                     (config.xmpp.s2s_listen, "xmpp-server", "XMPP s2s")):
            if listens:
                plans.append((parse_listen(listens[0])[1], kind, listens[0], label))
    if not plans:
        return
    report.section(f"Federation: DANE for {domain} (published TLSA vs the certificate served, RFC 7671)")
    resolver = _resolver(config)
    for port, kind, listen, label in plans:
        owner = f"_{port}._tcp.{target}"
        records = await _lookup(resolver, owner, "TLSA")
        if not records:
            report.warn(f"{label}: no TLSA at {owner}; DANE senders and servers use opportunistic TLS",
                        f"publish the {owner} TLSA record of `peerage dns {domain}` (needs DNSSEC)")
            continue
        host, bind_port = parse_listen(listen)
        try:
            der = await _served_certificate(_local(host), bind_port, kind, domain)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            report.problem(f"{label} on {listen}: could not get the certificate: {exc or type(exc).__name__}",
                           "start `peerage serve` and configure a certificate")
            continue
        results = [tlsa_matches(der, r.usage, r.selector, r.mtype, r.cert) for r in records]
        if any(results):
            report.ok(f"{label}: {owner} TLSA matches the certificate served on {listen}")
        elif all(r is None for r in results):
            report.warn(f"{label}: {owner} has only PKIX/DANE-TA TLSA records, not checked here",
                        "publish a 3 1 1 record as well (RFC 7672 §3.1)")
        else:
            import hashlib

            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            report.problem(f"{label}: no TLSA record at {owner} matches the certificate served on {listen}; "
                           "DANE peers will refuse to connect",
                           f"publish: {owner}. 3600 IN TLSA 3 1 1 {hashlib.sha256(spki).hexdigest()} "
                           "(and keep the old one until caches expire)")


def _cert_names(der: bytes) -> list[str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    # RFC 5922 §7.1: a sip: URI in the SAN names the SIP domain too.
    names += [u.lower()[4:] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
              if u.lower().startswith("sip:")]
    return names


def _covers(names: list[str], domain: str) -> bool:
    domain = domain.lower()
    return domain in names or any(n.startswith("*.") and domain.partition(".")[2] == n[2:] for n in names)


async def check_sip_tls(config: Config, domain: str, report: Report) -> None:
    """RFC 5922/3263: connect to the published _sips._tcp targets with TLS 1.2 or later and check the
    certificate's names cover the SIP domain."""
    sip = getattr(config, "sip", None)
    if sip is None or not sip.enabled or not sip.tls_listen:
        return
    report.section(f"Federation: SIP TLS for {domain} (the _sips._tcp targets, as peers see them)")
    resolver = _resolver(config)
    srvs = sorted(await _lookup(resolver, f"_sips._tcp.{domain}", "SRV"), key=lambda r: (r.priority, -r.weight))
    if not srvs:
        report.problem(f"_sips._tcp.{domain} SRV is not published, so SIP peers will not find TLS",
                       f"publish the _sips._tcp record of `peerage dns {domain}`")
        return
    for srv in srvs:
        target = srv.target.to_text().rstrip(".")
        where = f"{target}:{srv.port}"
        addresses = [r.to_text() for r in await _lookup(resolver, target, "A")] + \
            [r.to_text() for r in await _lookup(resolver, target, "AAAA")]
        if not addresses:
            report.problem(f"SIP TLS {where}: {target} has no address", f"publish an A/AAAA record for {target}")
            continue
        ctx = _loose_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                addresses[0], srv.port, ssl=ctx, server_hostname=domain), 5)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            report.problem(f"SIP TLS {where} ({addresses[0]}): TLS 1.2+ handshake failed: {exc or type(exc).__name__}",
                           "start `peerage serve` with [sip] tls_listen and a certificate, open the port")
            continue
        sslobj = writer.get_extra_info("ssl_object")
        version = sslobj.version() if sslobj is not None else "?"
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        writer.close()
        names = _cert_names(der) if der else []
        if not _covers(names, domain):
            report.problem(f"SIP TLS {where}: {version}, but the certificate names ({', '.join(names) or 'none'}) "
                           f"do not cover {domain} (RFC 5922 §7.2)",
                           f"serve a certificate for {domain} on [sip] tls_listen")
        else:
            report.ok(f"SIP TLS {where}: {version}, certificate covers {domain}")


async def _sieve_capabilities(reader: asyncio.StreamReader) -> list[bytes]:
    """Capability lines up to the OK that ends them (RFC 5804 §1.7)."""
    lines: list[bytes] = []
    while len(lines) < 64:
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line or line.upper().startswith((b"OK", b"NO", b"BYE")):
            if not line.upper().startswith(b"OK"):
                raise OSError(f"the server answered {line.decode('utf-8', 'replace').strip() or 'nothing'}")
            return lines
        lines.append(line.strip())
    raise OSError("too many capability lines")


async def check_managesieve(config: Config, report: Report) -> None:
    """ManageSieve (RFC 5804) as Thunderbird's and Roundcube's Sieve clients see it: the capability
    greeting, STARTTLS (required before login), and SASL mechanisms offered once TLS is up (§2.2)."""
    sieve = getattr(config, "sieve", None)
    if sieve is None or not sieve.enabled or not sieve.listen:
        return
    report.section("ManageSieve (RFC 5804, port 4190)")
    name = next(iter(config.domains), "localhost")
    for spec in sieve.listen:
        host, port = parse_listen(spec)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            try:
                greeting = await _sieve_capabilities(reader)
                if not any(line.upper() == b'"STARTTLS"' for line in greeting):
                    report.problem(f"ManageSieve on {spec} does not offer STARTTLS",
                                   "configure a certificate for the domain (logins need TLS)")
                    continue
                writer.write(b"STARTTLS\r\n")
                answer = await asyncio.wait_for(reader.readline(), 5)
                if not answer.upper().startswith(b"OK"):
                    report.problem(f"ManageSieve on {spec} refused STARTTLS: {answer.decode('utf-8', 'replace').strip()}",
                                   "check the certificate and `[sieve]` in the configuration")
                    continue
                await asyncio.wait_for(writer.start_tls(_loose_context(), server_hostname=name), 5)
                after = await _sieve_capabilities(reader)
                writer.write(b"LOGOUT\r\n")
            finally:
                writer.close()
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            report.problem(f"ManageSieve on {spec}: {exc or type(exc).__name__}",
                           "start `peerage serve`, or open the port in the firewall")
            continue
        sasl = next((line for line in after if line.upper().startswith(b'"SASL"')), b"")
        mechanisms = sasl.split(b" ", 1)[1].strip(b'"') if b" " in sasl else b""
        if mechanisms:
            report.ok(f"ManageSieve on {spec} answers, STARTTLS works, SASL after TLS: {mechanisms.decode()}")
        else:
            report.problem(f"ManageSieve on {spec} offers no SASL mechanism after STARTTLS",
                           "check `[auth]` mechanisms; clients cannot log in")


async def run(config: Config) -> Report:
    report = Report()
    report.section("Configuration")
    report.ok(f"{config.path} loads; domains: {', '.join(config.domains)}")
    check_certificates(config, report)
    for domain in config.domains:
        await check_dns(config, domain, report)
    await check_ports(config, report)
    await check_smtp_starttls(config, report)
    await check_managesieve(config, report)
    for domain in config.domains:
        await check_mta_sts(config, domain, report)
        await check_dane(config, domain, report)
        await check_sip_tls(config, domain, report)
    if config.xmpp.enabled:
        report.section("Federation: XMPP")
        report.lines.append("  run `peerage check federation DOMAIN` to negotiate s2s with another server step by step")
    verdict = ("everything checked is fine" if not report.problems and not report.warnings else
               f"{report.problems} problems, {report.warnings} warnings")
    report.lines.append(f"\nverdict: {verdict}")
    return report
