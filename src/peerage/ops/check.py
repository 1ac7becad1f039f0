"""`peerage check`: configuration, certificates, DNS as published, ports, and TLS per protocol.

This module is in charge of looking at the installation from outside as a peer would, the way
`prosodyctl check` and `mox config dnscheck` do, and of printing one line per finding with a verdict
(ok, warning, problem) and, for every problem, the fix. DNS is compared record by record with what
`peerage dns` prints, through the configured resolver. The exit code is 1 when any problem was found;
warnings alone exit 0. `peerage check federation DOMAIN` (the XMPP package) goes further for XMPP.
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


async def run(config: Config) -> Report:
    report = Report()
    report.section("Configuration")
    report.ok(f"{config.path} loads; domains: {', '.join(config.domains)}")
    check_certificates(config, report)
    for domain in config.domains:
        await check_dns(config, domain, report)
    await check_ports(config, report)
    await check_smtp_starttls(config, report)
    if config.xmpp.enabled:
        report.section("Federation: XMPP")
        report.lines.append("  run `peerage check federation DOMAIN` to negotiate s2s with another server step by step")
    verdict = ("everything checked is fine" if not report.problems and not report.warnings else
               f"{report.problems} problems, {report.warnings} warnings")
    report.lines.append(f"\nverdict: {verdict}")
    return report
