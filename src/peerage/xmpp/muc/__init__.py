"""XEP-0045 Multi-User Chat on ``conference.DOMAIN`` for every hosted domain.

This package is in charge of group chats: ``service`` registers the service JIDs
(``peerage.xmpp.hosted``) and hooks their events; ``room`` is one room's state and rules
(occupants, roles, affiliations, history, subject, moderation, invitations, voice requests);
``forms`` builds and reads the data forms (``muc#roomconfig``, ``muc#roominfo``, ``muc#request``);
``archive`` keeps the room archive (XEP-0313 on the room JID); ``store`` and ``tables`` persist
persistent rooms; ``limits`` names every limit with its precedent.
"""
