"""Package jmap is in charge of JMAP (RFC 8620 core, RFC 8621 mail) over the mailbox store IMAP uses.

``register(host, mail_service)`` is called by the mail service when it starts; it adds the JMAP routes
(``peerage.mail.jmap.api``) and the mail discovery documents (``peerage.mail.jmap.discovery``:
Thunderbird autoconfig and the MTA-STS policy) to the web service through ``peerage.web.routes_for``.
The protocol core is ``core`` (request envelope, result references, errors), the mail model is
``index`` (ids, state strings, the in-memory summary of an account) and ``mime`` (body structure,
composing), and the methods are ``methods``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peerage.web import WebContext


def register(host: Any, mail_service: Any) -> None:
    from peerage.mail.jmap.api import JmapRoutes
    from peerage.mail.jmap.discovery import MailDiscovery
    from peerage.web import routes_for

    def setup_jmap(ctx: WebContext) -> None:
        # Built only when the web service builds its app, so a host without it (IMAP tests, a node
        # with [web] disabled) does not listen for mailbox changes on JMAP's behalf.
        JmapRoutes(host, mail_service).setup(ctx)

    routes = routes_for(host)
    routes.add("jmap", setup_jmap)
    routes.add("mail-discovery", MailDiscovery(host).setup)
