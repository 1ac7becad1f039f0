"""Database tables of the group-chat service: persistent rooms and their affiliations.

This module is in charge of declaring the ``muc_`` tables against the shared metadata. The room
archive (XEP-0313 on the room JID) lives in ``xmpp_archive`` with the room's JID as owner; it is
expired by ``peerage.xmpp.muc.service`` after ``[muc] archive_expires_days``, and the one-to-one
sweep (``[xmpp] archive_expires_days``) leaves it alone.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, String, Table, Text

from peerage.store.schema import metadata
from peerage.xmpp.tables import JID_LENGTH

# XEP-0045 section 10: persistent rooms; ``config`` is the room configuration as JSON.
muc_rooms = Table(
    "muc_rooms",
    metadata,
    Column("jid", String(JID_LENGTH), primary_key=True),
    Column("config", Text, nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("subject_by", String(1024), nullable=False, default=""),
    # the XEP-0421 occupant-id salt, so ids stay stable across restarts
    Column("salt", String(64), nullable=False),
    Column("created", Float, nullable=False),
)

# XEP-0045 section 5.2: owner / admin / member / outcast of each persistent room.
muc_affiliations = Table(
    "muc_affiliations",
    metadata,
    Column("room", String(JID_LENGTH), primary_key=True),
    # indexed alone too: a cluster node counts the rooms one account owns (peerage.cluster.muc)
    Column("jid", String(JID_LENGTH), primary_key=True, index=True),
    Column("affiliation", String(8), nullable=False),
    # a member's reserved nickname (XEP-0045 section 7.12)
    Column("nick", String(1024), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    # whether room messages go to the member while absent (Prosody's mod_muc_offline_delivery field
    # {http://tigase.org/protocol/muc}offline); NULL: the service's default
    Column("offline", Boolean, nullable=True),
)
