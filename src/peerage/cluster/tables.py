"""Cluster tables: leases (one owner node per key) and the shared bodies of queued mail.

``cluster_leases`` holds who owns what for a bounded time (kind ``s2s``: the node that runs the
outbound stream to a remote XMPP domain). A lease is taken when free or expired and renewed by its
owner; a dead node's leases lapse after ``LEASE_SECONDS`` and another node takes them.

``cluster_spool`` holds the bytes of each queued outbound message in cluster mode, so that the queue
worker of any node can deliver a message another node accepted (a single node keeps them as files).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, String, Table

from peerage.store.schema import metadata

cluster_leases = Table(
    "cluster_leases",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("node", String(64), nullable=False),
    # Seconds since the epoch (UTC) after which the lease is free.
    Column("expires_at", BigInteger, nullable=False),
)

cluster_spool = Table(
    "cluster_spool",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    # Seconds since the epoch (UTC): bodies left without rows are swept by age.
    Column("created_at", BigInteger, nullable=False),
)
