"""DNS records a hosted domain publishes so any SIP domain can reach it (RFC 3263 §4.1, RFC 2782).

This module is in charge of the SIP part of `peerage dns DOMAIN`: one NAPTR per transport we listen
on (SIPS over TLS preferred, then TCP, then UDP) pointing at the matching SRV record.
"""

from __future__ import annotations

from peerage.config import Config, parse_listen


def records(domain: str, config: Config) -> list[str]:
    target = config.server.public_hostname or domain
    sip = config.sip
    entries = [
        # (NAPTR order, service, SRV name, listen setting)
        (10, "SIPS+D2T", f"_sips._tcp.{domain}.", sip.tls_listen),
        (20, "SIP+D2T", f"_sip._tcp.{domain}.", sip.tcp_listen),
        (30, "SIP+D2U", f"_sip._udp.{domain}.", sip.udp_listen),
    ]
    naptr: list[str] = []
    srv: list[str] = []
    for order, service, srv_name, listen in entries:
        if not listen:
            continue
        port = parse_listen(listen[0])[1]
        naptr.append(f'{domain}. 3600 IN NAPTR {order} 10 "s" "{service}" "" {srv_name}')
        srv.append(f"{srv_name} 3600 IN SRV 10 0 {port} {target}.")
    return naptr + srv
