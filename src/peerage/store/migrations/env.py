"""Alembic environment: runs migrations on the connection `peerage.store.Store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from peerage.store.schema import include_name, load_all_tables

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("peerage migrations run through peerage.store.Store.migrate or `python -m peerage.store.migrations`")

context.configure(
    connection=connection,
    target_metadata=load_all_tables(),
    # SQLite cannot ALTER most things in place; batch mode copies the table (harmless on PostgreSQL).
    render_as_batch=True,
    compare_type=True,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
