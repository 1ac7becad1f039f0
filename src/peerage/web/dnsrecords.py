"""DNS records the web service needs, printed by `peerage dns DOMAIN`.

This module is in charge of the names browsers and clients look up for the HTTPS services: the
domain's own address records come from the Host section; here are the RFC 8620 §2.2 ``_jmap._tcp``
SRV record, and the names the discovery documents are served under (``autoconfig.DOMAIN`` for
Thunderbird, ``mta-sts.DOMAIN`` for RFC 8461, which the mail section already points at the mail host),
each of which the certificate must cover.
"""

from __future__ import annotations

from typing import Any

from peerage.config import parse_listen

TTL = 3600


def https_port(config: Any) -> int:
    for spec in config.web.https_listen:
        try:
            return parse_listen(spec)[1]
        except Exception:
            continue
    return 443


def records(domain: str, config: Any) -> list[str]:
    target = config.server.public_hostname or domain
    lines = [
        f"_jmap._tcp.{domain}. {TTL} IN SRV 0 1 {https_port(config)} {target}.",
        f"autoconfig.{domain}. {TTL} IN CNAME {target}.",

        f"; The certificate for {domain} must also cover autoconfig.{domain} and mta-sts.{domain}",
        f"; (HTTPS serves https://autoconfig.{domain}/mail/config-v1.1.xml and",
        f"; https://mta-sts.{domain}/.well-known/mta-sts.txt; JMAP at https://{domain}/.well-known/jmap).",
    ]
    return lines
