"""Mail discovery over HTTPS: Thunderbird autoconfig and the MTA-STS policy file.

This module is in charge of ``/mail/config-v1.1.xml`` on ``autoconfig.DOMAIN`` and
``/.well-known/autoconfig/mail/config-v1.1.xml`` on the domain (Mozilla's autoconfig format: IMAP 993
and 143, submission 465 and 587, each with the full address as user name), and of
``/.well-known/mta-sts.txt`` on ``mta-sts.DOMAIN`` (RFC 8461 §3.2), whose text is the very policy
``peerage dns`` derives its ``_mta-sts`` id from (``peerage.mail.dnsrecords.mta_sts_policy``), so the
record and the file always agree.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from peerage.mail.dnsrecords import mta_sts_policy, port_of
from peerage.web import DOMAIN, HOST_NAME, WebContext


class MailDiscovery:
    def __init__(self, host: Any) -> None:
        self.host = host

    def setup(self, ctx: WebContext) -> None:
        router = ctx.app.router
        router.add_get("/mail/config-v1.1.xml", self.autoconfig)
        router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", self.autoconfig)
        router.add_get("/.well-known/mta-sts.txt", self.mta_sts)

    def _mail_host(self, domain: str) -> str:
        config = self.host.config
        return config.smtp.hostname or config.server.public_hostname or domain

    async def autoconfig(self, request: web.Request) -> web.Response:
        domain = request[DOMAIN]
        config = self.host.config
        host = escape(self._mail_host(domain))
        servers = []
        if config.imap.enabled:
            for port, socket in ((port_of(config.imap.tls_listen, 993), "SSL"),
                                 (port_of(config.imap.listen, 143), "STARTTLS")):
                servers.append(f"""    <incomingServer type="imap">
      <hostname>{host}</hostname><port>{port}</port><socketType>{socket}</socketType>
      <authentication>password-cleartext</authentication><username>%EMAILADDRESS%</username>
    </incomingServer>""")
        if config.smtp.enabled:
            for port, socket in ((port_of(config.smtp.submissions_listen, 465), "SSL"),
                                 (port_of(config.smtp.submission_listen, 587), "STARTTLS")):
                servers.append(f"""    <outgoingServer type="smtp">
      <hostname>{host}</hostname><port>{port}</port><socketType>{socket}</socketType>
      <authentication>password-cleartext</authentication><username>%EMAILADDRESS%</username>
    </outgoingServer>""")
        text = (f'<?xml version="1.0" encoding="UTF-8"?>\n<clientConfig version="1.1">\n'
                f'  <emailProvider id="{escape(domain)}">\n    <domain>{escape(domain)}</domain>\n'
                f'    <displayName>{escape(domain)}</displayName>\n'
                f'    <displayShortName>{escape(domain)}</displayShortName>\n'
                + "\n".join(servers) + "\n  </emailProvider>\n</clientConfig>\n")
        return web.Response(text=text, content_type="application/xml")

    async def mta_sts(self, request: web.Request) -> web.Response:
        # RFC 8461 §3.3: only at mta-sts.DOMAIN; elsewhere it would claim a policy for the wrong name.
        name = request[HOST_NAME]
        if not name.startswith("mta-sts."):
            raise web.HTTPNotFound(text="the MTA-STS policy is served at mta-sts.DOMAIN\n")
        lines = mta_sts_policy(request[DOMAIN], self.host.config)
        return web.Response(text="\r\n".join(lines) + "\r\n", content_type="text/plain")
