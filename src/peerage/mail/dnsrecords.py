"""DNS records a hosted domain publishes for mail, printed by `peerage dns DOMAIN`.

This module is in charge of the mail part of the zone: MX, SPF (RFC 7208), both DKIM keys (RFC 6376,
RFC 8463), DMARC (RFC 7489), MTA-STS (RFC 8461) with its policy file, TLS reporting (RFC 8460) and the
client service records of RFC 6186 and RFC 8314 for submission and IMAP.
"""

from __future__ import annotations

import hashlib
from typing import Any

from peerage.config import parse_listen
from peerage.mail.auth.dkim import DomainKeys, load_keys, shared_keys

# RFC 1035 §3.3.14: one character-string in a TXT record holds at most 255 octets.
MAX_TXT_STRING = 255
# RFC 8461 §3.2: max_age is in seconds; one week is the value RFC 8461's example and Mox use.
MTA_STS_MAX_AGE = 604800
TTL = 3600


def _txt(value: str) -> str:
    chunks = [value[i : i + MAX_TXT_STRING] for i in range(0, len(value), MAX_TXT_STRING)] or [""]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def _port(listens: list[str], default: int) -> int:
    for spec in listens:
        try:
            return parse_listen(spec)[1]
        except Exception:
            continue
    return default


def port_of(listens: list[str], default: int) -> int:
    """The port of the first listen address (what clients are told to use)."""
    return _port(listens, default)


def _cluster_keys(config: Any, domain: str) -> DomainKeys | None:
    """A cluster signs with the keys in its database (the first node's), not a node's files."""
    from peerage.cluster.blobs import with_keys

    return with_keys(config.database_url, lambda rows: shared_keys(rows, domain))


def mta_sts_policy(domain: str, config: Any) -> list[str]:
    """The RFC 8461 policy lines; the web service serves them at mta-sts.DOMAIN."""
    mail_host = config.smtp.hostname or config.server.public_hostname or domain
    return ["version: STSv1", "mode: enforce", f"mx: {mail_host}", f"max_age: {MTA_STS_MAX_AGE}"]


def records(domain: str, config: Any) -> list[str]:
    mail_host = config.smtp.hostname or config.server.public_hostname or domain
    policy_lines = mta_sts_policy(domain, config)
    # RFC 8461 §3.1: the id must change whenever the policy does; deriving it from the policy keeps it
    # stable between runs of `peerage dns`.
    policy_id = hashlib.sha256("\n".join(policy_lines).encode()).hexdigest()[:20]
    lines = [
        f"{domain}. {TTL} IN MX 10 {mail_host}.",
        f"{domain}. {TTL} IN TXT {_txt('v=spf1 mx -all')}",
    ]
    keys = _cluster_keys(config, domain) if config.cluster.enabled else load_keys(config.data_dir, domain)
    if keys is None:
        lines.append(f"; no DKIM keys for {domain} yet: run `peerage domain add {domain}` to create them")
    else:
        for name, value in keys.dns_records():
            lines.append(f"{name}. {TTL} IN TXT {_txt(value)}")
    lines += [
        f"_dmarc.{domain}. {TTL} IN TXT {_txt(f'v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:postmaster@{domain}')}",
        f"_mta-sts.{domain}. {TTL} IN TXT {_txt(f'v=STSv1; id={policy_id}')}",
        f"mta-sts.{domain}. {TTL} IN CNAME {mail_host}.",
        f"_smtp._tls.{domain}. {TTL} IN TXT {_txt(f'v=TLSRPTv1; rua=mailto:postmaster@{domain}')}",
        f"_submission._tcp.{domain}. {TTL} IN SRV 0 1 {_port(config.smtp.submission_listen, 587)} {mail_host}.",
        f"_submissions._tcp.{domain}. {TTL} IN SRV 0 1 {_port(config.smtp.submissions_listen, 465)} {mail_host}.",
        f"_imap._tcp.{domain}. {TTL} IN SRV 0 1 {_port(config.imap.listen, 143)} {mail_host}.",
        f"_imaps._tcp.{domain}. {TTL} IN SRV 0 1 {_port(config.imap.tls_listen, 993)} {mail_host}.",
        *([f"_sieve._tcp.{domain}. {TTL} IN SRV 0 1 {_port(config.sieve.listen, 4190)} {mail_host}."]
          if config.sieve.enabled and config.sieve.listen else []),  # ManageSieve, RFC 5804 §1.8
        f"_pop3._tcp.{domain}. {TTL} IN SRV 0 0 0 .",
        f"_pop3s._tcp.{domain}. {TTL} IN SRV 0 0 0 .",
        f"; Serve this MTA-STS policy at https://mta-sts.{domain}/.well-known/mta-sts.txt",
        "; with a certificate valid for that name (RFC 8461 §3.3):",
        *(f";   {line}" for line in policy_lines),
    ]
    return lines
