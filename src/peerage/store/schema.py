"""The database schema: one MetaData for every table of every protocol.

This module is in charge of the tables the identity layer owns (accounts, server secrets) and of
importing each protocol's `tables` module, so that the metadata holds them all. Each protocol declares its
own tables against `metadata` in `peerage/<proto>/tables.py`; every change to a declared table also gets
an Alembic revision in `peerage/store/migrations/versions/` (see that package).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)

log = logging.getLogger(__name__)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per account. Only derived secrets are stored (see peerage.identity.credentials).
accounts = Table(
    "accounts",
    metadata,
    Column("address", String(320), primary_key=True),  # normalised local@domain
    Column("domain", String(253), nullable=False, index=True),
    Column("local", String(64), nullable=False),
    Column("scram_salt", LargeBinary, nullable=False),
    Column("scram_iterations", Integer, nullable=False),
    Column("scram_sha1_stored_key", LargeBinary, nullable=False),
    Column("scram_sha1_server_key", LargeBinary, nullable=False),
    Column("scram_sha256_stored_key", LargeBinary, nullable=False),
    Column("scram_sha256_server_key", LargeBinary, nullable=False),
    Column("sip_ha1_md5", String(32), nullable=False),
    Column("sip_ha1_sha256", String(64), nullable=False),
    # HA1s for the full address as digest username; NULL for passwords set before they were stored
    # (such accounts register as `alice` until their next password change).
    Column("sip_ha1_full_md5", String(32), nullable=True),
    Column("sip_ha1_full_sha256", String(64), nullable=True),
    Column("argon2", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Server-wide secrets and small persistent values (the dialback secret, nonce keys) that must survive
# a restart so that exchanges in flight keep working.
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

# Protocol table modules, imported so that their tables join `metadata`. A missing module is fine while
# that protocol has no tables yet.
PROTOCOL_TABLE_MODULES = (
    "peerage.identity.tables",
    "peerage.xmpp.tables",
    "peerage.xmpp.extables",
    "peerage.sip.tables",
    "peerage.mail.tables",
    "peerage.mail.queue_tables",
    "peerage.web.tables",
    "peerage.mail.jmap.tables",
    "peerage.cluster.tables",
    "peerage.xmpp.muc.tables",
    "peerage.mail.sieve.tables",
    "peerage.mail.reports.tables",
    "peerage.social.tables",
)


# Tables a migration makes outside the metadata because each engine needs its own kind (an SQLite FTS5
# virtual table and its shadow tables, a PostgreSQL tsvector table): schema comparisons skip them.
UNDECLARED_TABLE_PREFIXES = ("mail_fts",)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name`` hook: False for the tables of UNDECLARED_TABLE_PREFIXES."""
    return not (type_ == "table" and name is not None and name.startswith(UNDECLARED_TABLE_PREFIXES))


def load_all_tables() -> MetaData:
    """The metadata with every protocol's tables declared. Each module in PROTOCOL_TABLE_MODULES
    is part of the package: one that cannot be imported is an error, never a schema silently
    missing its tables (the migrations and schema checks would then disagree with the code)."""
    for module in PROTOCOL_TABLE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(f"{exc.name}.")):
                raise  # the module is there; something it imports is not
            raise RuntimeError(f"table module {module} is missing from the installation") from exc
    return metadata
