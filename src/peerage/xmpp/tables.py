"""Database tables of the XMPP service: roster, offline messages, archive, private XML, vCards, blocks.

This module is in charge of declaring the XMPP tables against the shared ``peerage.store.schema``
metadata. Stanzas are stored as serialized XML text in the client content namespace.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from peerage.store.schema import metadata

#: Longest bare JID: 1023 bytes local + '@' + 1023 domain (RFC 7622 section 3.1). Bare JIDs of local
#: accounts are much shorter (64 + 1 + 253), but roster contacts may be remote.
JID_LENGTH = 2047

# RFC 6121 section 2.1.2: one row per contact in a user's roster.
xmpp_roster = Table(
    "xmpp_roster",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("contact", String(JID_LENGTH), primary_key=True),
    Column("name", String(1024), nullable=True),
    # 'none' | 'to' | 'from' | 'both' (RFC 6121 section 2.1.2.5)
    Column("subscription", String(8), nullable=False, default="none"),
    # outbound request pending (ask='subscribe', RFC 6121 section 2.1.2.2)
    Column("ask", Boolean, nullable=False, default=False),
    # pre-approved subscription (RFC 6121 section 3.4)
    Column("approved", Boolean, nullable=False, default=False),
    # groups, newline-separated
    Column("groups", Text, nullable=False, default=""),
    # the item exists only to track a pending inbound request (not shown in roster get)
    Column("hidden", Boolean, nullable=False, default=False),
    # an inbound subscription request waits for the user's answer (pending in)
    Column("pending_in", Boolean, nullable=False, default=False),
    Column("pending_stanza", Text, nullable=True),
    # XEP-0237: the roster version at which this item last changed
    Column("version", Integer, nullable=False, default=0, server_default="0"),
)

# XEP-0237: the roster version of each user, bumped on every change. ``pruned`` is the newest
# version whose removal record was dropped: a client that saw an older version gets the full roster.
xmpp_roster_version = Table(
    "xmpp_roster_version",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("pruned", Integer, nullable=False, default=0, server_default="0"),
)

# XEP-0237: removed roster items, so that a client with an older version is told of the removal.
xmpp_roster_removed = Table(
    "xmpp_roster_removed",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("contact", String(JID_LENGTH), primary_key=True),
    Column("version", Integer, nullable=False),
)

# XEP-0160: messages waiting for an offline user, in arrival order.
xmpp_offline = Table(
    "xmpp_offline",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(JID_LENGTH), nullable=False),
    Column("stamp", Float, nullable=False),
    Column("stanza", Text, nullable=False),
    Index("ix_xmpp_offline_owner_id", "owner", "id"),
)

# XEP-0313: one-to-one message archive of each user.
xmpp_archive = Table(
    "xmpp_archive",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(JID_LENGTH), nullable=False),
    Column("archive_id", String(64), nullable=False, unique=True),
    Column("with_jid", String(JID_LENGTH), nullable=False),
    Column("stamp", Float, nullable=False),
    Column("stanza", Text, nullable=False),
    Index("ix_xmpp_archive_owner_id", "owner", "id"),
    Index("ix_xmpp_archive_owner_with", "owner", "with_jid"),
)

# XEP-0049: private XML storage, one fragment per (user, namespace).
xmpp_private = Table(
    "xmpp_private",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("namespace", String(1024), primary_key=True),
    Column("xml", Text, nullable=False),
)

# XEP-0054: one vCard per user.
xmpp_vcard = Table(
    "xmpp_vcard",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("xml", Text, nullable=False),
)

# XEP-0191: blocked JIDs of each user.
xmpp_blocklist = Table(
    "xmpp_blocklist",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("jid", String(3071), primary_key=True),
)

# XEP-0163 / XEP-0060: the PEP nodes of each account and their configuration.
xmpp_pep_nodes = Table(
    "xmpp_pep_nodes",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("node", String(1024), primary_key=True),
    # 'presence' | 'open' | 'roster' | 'whitelist' (XEP-0060 section 4.5)
    Column("access_model", String(16), nullable=False),
    Column("max_items", Integer, nullable=False),
    # pubsub#roster_groups_allowed, one a line (the roster access model)
    Column("roster_groups", Text, nullable=True),
    # bare JIDs affiliated as members, one a line (the whitelist access model)
    Column("whitelist", Text, nullable=True),
)

# XEP-0223: persistent PEP items, oldest first by id.
xmpp_pep_items = Table(
    "xmpp_pep_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(JID_LENGTH), nullable=False),
    Column("node", String(1024), nullable=False),
    Column("item_id", String(1024), nullable=False),
    Column("stamp", Float, nullable=False),
    Column("xml", Text, nullable=False),
    Index("ix_xmpp_pep_items_owner_node", "owner", "node", "id"),
)

# XEP-0012: when each account last went offline, and the status it gave.
xmpp_last_activity = Table(
    "xmpp_last_activity",
    metadata,
    Column("owner", String(JID_LENGTH), primary_key=True),
    Column("stamp", Float, nullable=False),
    Column("status", Text, nullable=False, default=""),
)
