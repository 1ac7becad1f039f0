"""The identity layer's own tables (beyond `accounts` in peerage.store.schema): app passwords, login tokens."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    func,
)

from peerage.store.schema import metadata

# One row per device secret of an account (`peerage user app-password add`). Only derived secrets are
# stored: the SHA-256 of the generated password (it has about 80 bits of entropy, so a fast hash is
# enough; GitHub and GitLab store their tokens the same way), SCRAM keys under the account's own salt and
# iteration count (so one server-first message serves the account and all its devices), and SIP HA1s.
app_passwords = Table(
    "app_passwords",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False),
    Column("name", String(64), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("scram_sha1_stored_key", LargeBinary, nullable=False),
    Column("scram_sha1_server_key", LargeBinary, nullable=False),
    Column("scram_sha256_stored_key", LargeBinary, nullable=False),
    Column("scram_sha256_server_key", LargeBinary, nullable=False),
    Column("sip_ha1_md5", String(32), nullable=False),
    Column("sip_ha1_sha256", String(64), nullable=False),
    Column("sip_ha1_full_md5", String(32), nullable=True),  # full address as digest username
    Column("sip_ha1_full_sha256", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("account", "name", name="uq_app_passwords_account_name"),
    Index("ix_app_passwords_token", "token_sha256"),
)

# Short-lived login tokens a web session hands to a browser client (`GET /auth/xmpp-credentials`), each
# good for one protocol only (`protocol`, e.g. "xmpp") until `expires` (seconds since the epoch). As for
# app passwords only derived secrets are kept: the SHA-256 of the token (256 random bits) for PLAIN and
# SCRAM keys under the account's salt and iteration count for SCRAM. `web_session` is the hash of the web
# session that asked, so logging out can end its tokens.
login_tokens = Table(
    "login_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("scram_sha1_stored_key", LargeBinary, nullable=False),
    Column("scram_sha1_server_key", LargeBinary, nullable=False),
    Column("scram_sha256_stored_key", LargeBinary, nullable=False),
    Column("scram_sha256_server_key", LargeBinary, nullable=False),
    Column("web_session", String(64), nullable=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Index("ix_login_tokens_account", "account", "protocol"),
)

# Short-lived SIP digest secrets a web session hands to the browser's phone (POST /auth/sip-credentials,
# peerage.identity.sip_tokens). Only the token's HA1s are kept (RFC 3261 §22.4 / RFC 8760, for the local
# part and the full address as digest username), never the token: a 128-bit random secret, so its HA1 is
# no easier to invert than an account's. `web_session` is the hash of the web session that asked, so
# logging out or revoking that session ends them; a password change ends all of the account's.
sip_web_tokens = Table(
    "sip_web_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False),
    Column("ha1_md5", String(32), nullable=False),
    Column("ha1_sha256", String(64), nullable=False),
    Column("ha1_full_md5", String(32), nullable=False),
    Column("ha1_full_sha256", String(64), nullable=False),
    Column("web_session", String(64), nullable=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Index("ix_sip_web_tokens_account", "account"),
    Index("ix_sip_web_tokens_web_session", "web_session"),
)

# What ended an account's credentials, for the servers that hold its live sessions: a password change
# ("reset"), a deletion ("not-authorized"), or one web session's logout or revocation ("web-session",
# with that session's token hash). Written in the transaction that ends the credentials, so `peerage user passwd` in
# another process, or another node sharing the database, cannot change a password without the running
# servers learning of it (peerage.identity.credential_events polls this table). Rows older than an hour
# are pruned: a server that was down meanwhile starts with no live sessions to end.
identity_credential_events = Table(
    "identity_credential_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("web_session", String(64), nullable=True),
    Column("at", Float, nullable=False),
)
