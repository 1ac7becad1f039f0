"""Social tables: who opted in, the follow graph, posts, received activities and the delivery queue.

Every table is prefixed ``social_``. Remote JSON documents are stored as text exactly as received (after
verification), so what we show or forward is what the remote signed; local objects are stored as the
JSON we serve. Private keys are not here: they are files, as the DKIM keys are
(``peerage.social.keys``); only the public half is cached in ``social_remote_keys`` for remote actors.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from peerage.store.schema import metadata

ADDRESS = 320
# URLs: Mastodon limits its ActivityPub ids to 2048 characters (the common browser bound).
URL = 2048

# One row per account that has a social profile setting; no row means "the configured default".
social_accounts = Table(
    "social_accounts",
    metadata,
    Column("address", String(ADDRESS), primary_key=True),
    Column("discoverable", Boolean, nullable=False, default=False),
    # The key currently signing (a file name under data_dir/social/keys/DOMAIN/LOCAL/); rotation
    # writes a new one and keeps the old ones for verification of what they signed.
    Column("key_id", String(64), nullable=False, default=""),
    Column("summary", Text, nullable=False, default=""),
    # Account migration (Move): where this account moved to, and the aliases it accepts moves from.
    Column("moved_to", String(URL), nullable=False, default=""),
    Column("also_known_as", Text, nullable=False, default="[]"),  # JSON list of actor URLs
    Column("updated_at", Float, nullable=False, default=0.0),
    # A locked account (Mastodon's manuallyApprovesFollowers): a Follow waits for its owner.
    Column("locked", Boolean, nullable=False, default=False, server_default=false()),
)

# Remote actors following a local account. `state` is "accepted", or "pending" while the owner of a
# locked account has not approved the request (a refusal deletes the row).
social_followers = Table(
    "social_followers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(ADDRESS), nullable=False),
    Column("actor", String(URL), nullable=False),
    Column("inbox", String(URL), nullable=False),
    Column("shared_inbox", String(URL), nullable=False, default=""),
    Column("follow_id", String(URL), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("state", String(16), nullable=False, default="accepted", server_default="accepted"),
    UniqueConstraint("account", "actor", name="uq_social_followers_account_actor"),
)

# Remote actors a local account follows; `state` is "pending" until their Accept, then "accepted".
social_following = Table(
    "social_following",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(ADDRESS), nullable=False),
    Column("actor", String(URL), nullable=False),
    Column("inbox", String(URL), nullable=False),
    Column("follow_id", String(URL), nullable=False),
    Column("state", String(16), nullable=False, default="pending"),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("account", "actor", name="uq_social_following_account_actor"),
)

# Activities and objects: local ones (`local` true, `account` their author) and remote ones received
# for a local account's inbox (one row per receiving account). `object_id` is the Note's id for a
# Create, so a Delete or Update finds it.
social_activities = Table(
    "social_activities",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("activity_id", String(URL), nullable=False),
    Column("account", String(ADDRESS), nullable=False),
    Column("local", Boolean, nullable=False),
    Column("type", String(32), nullable=False),
    Column("actor", String(URL), nullable=False),
    Column("object_id", String(URL), nullable=False, default=""),
    Column("public", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("document", Text, nullable=False),
    Column("received_at", Float, nullable=False),
    # A local post its author pinned (the featured collection), and when: newest pin first.
    Column("pinned_at", Float, nullable=True),
    # A Create's object.inReplyTo: a post's replies (its thread, its XEP-0277 comments node) by index.
    Column("in_reply_to", String(URL), nullable=True),
    UniqueConstraint("account", "activity_id", name="uq_social_activities_account_activity_id"),
)
Index("ix_social_activities_object", social_activities.c.object_id)
Index("ix_social_activities_in_reply_to", social_activities.c.in_reply_to)

# Images attached to local posts (peerage.social.media): kept as long as the post, served at
# /media/TOKEN/FILENAME; `blob` is the file's name in the media BlobStore.
social_media = Table(
    "social_media",
    metadata,
    Column("token", String(32), primary_key=True),
    Column("account", String(ADDRESS), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("filename", String(64), nullable=False),
    Column("blob", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_social_media_account", social_media.c.account)

# Activity ids seen on the inbox, so a redelivery or a replay is acknowledged without acting twice
# (ActivityPub §7: "servers SHOULD deduplicate"); kept for the signature freshness window and more.
social_seen = Table(
    "social_seen",
    metadata,
    Column("key", String(URL), primary_key=True),  # activity id, or "sig:" + signature for replay checks
    Column("seen_at", Float, nullable=False),
)

# Public keys of remote actors, by key id, with the actor that owns them.
social_remote_keys = Table(
    "social_remote_keys",
    metadata,
    Column("key_id", String(URL), primary_key=True),
    Column("actor", String(URL), nullable=False),
    Column("public_key_pem", Text, nullable=False),
    Column("inbox", String(URL), nullable=False, default=""),
    Column("shared_inbox", String(URL), nullable=False, default=""),
    Column("fetched_at", Float, nullable=False),
)

# Defederated remote domains (and their subdomains).
social_blocked_domains = Table(
    "social_blocked_domains",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("created_at", Float, nullable=False),
)

# The outbound queue: one row per (activity, target inbox). The body is the exact JSON to POST; it is
# signed at each attempt (a Date must be fresh). Delivered rows are deleted in the same transaction
# that records success, so a delivery happens once.
social_deliveries = Table(
    "social_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(ADDRESS), nullable=False),  # whose key signs
    Column("inbox", String(URL), nullable=False),
    Column("host", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("queued_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
)
Index("ix_social_deliveries_next_attempt", social_deliveries.c.next_attempt_at)
