"""Package jmap is in charge of JMAP (RFC 8620 core, RFC 8621 mail) over the mailbox store IMAP uses.

``register(host, mail_service)`` is called by the mail service when it starts; it adds the JMAP routes
(``peerage.mail.jmap.api``) and the mail discovery documents (``peerage.mail.jmap.discovery``:
Thunderbird autoconfig and the MTA-STS policy) to the web service through ``peerage.web.routes_for``.
The protocol core is ``core`` (request envelope, result references, errors), the mail model is
``index`` (ids, state strings, the in-memory summary of an account) and ``mime`` (body structure,
composing), and the methods are ``methods``.
"""

from __future__ import annotations

from typing import Any


def register(host: Any, mail_service: Any) -> None:
    from peerage.mail.jmap.api import JmapRoutes
    from peerage.mail.jmap.discovery import MailDiscovery
    from peerage.web import routes_for

    routes = routes_for(host)
    routes.add("jmap", JmapRoutes(host, mail_service).setup)
    routes.add("mail-discovery", MailDiscovery(host).setup)
