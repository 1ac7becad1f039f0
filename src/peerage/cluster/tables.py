"""Cluster tables: leases (one owner node per key) and the shared bodies of queued mail.

``cluster_leases`` holds who owns what for a bounded time (kind ``s2s``: the node that runs the
outbound stream to a remote XMPP domain). A lease is taken when free or expired and renewed by its
owner; a dead node's leases lapse after ``LEASE_SECONDS`` and another node takes them.

``cluster_spool`` holds the bytes of each queued outbound message in cluster mode, so that the queue
worker of any node can deliver a message another node accepted (a single node keeps them as files).

``cluster_blobs`` holds, in cluster mode, the bytes a single node keeps as files under its data
directory (``peerage.mail.mailbox.blobs.BlobStore``): mail bodies of ``INLINE_BODY_LIMIT`` and more
(kind ``mail``), XEP-0363 uploads (``upload``) and the media of local posts (``media``); each row's
``name`` is what the owner's table refers to, as a file name would be.

``cluster_keys`` holds the private keys every node must sign with alike, as PEM: each hosted
domain's DKIM keys (kind ``dkim``) and the signing keys of social accounts (``social``). A key is created by whichever node needs it first
(``INSERT ... ON CONFLICT DO NOTHING``, then read back), so every node holds the one DNS publishes.
The ACME account key (kind ``acme``, name ``account``) and each domain's ACME-issued key and
certificate chain (kind ``acme-cert``, name the domain, key PEM then chain PEM) are rows too: the
node that ordered stores them, every node loads them.

``cluster_challenges`` holds the ACME HTTP-01 key authorisations (RFC 8555 §8.3) of orders in
progress, so whichever node the CA's validation reaches answers it; each row expires with its order.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, String, Table, Text

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

cluster_blobs = Table(
    "cluster_blobs",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    # Seconds since the epoch (UTC): bodies written but never referred to are swept by age.
    Column("created_at", BigInteger, nullable=False),
)

cluster_keys = Table(
    "cluster_keys",
    metadata,
    Column("kind", String(16), primary_key=True),
    # "DOMAIN/SELECTOR" (dkim), "ADDRESS/KEY-ID" (social).
    Column("name", String(512), primary_key=True),
    Column("pem", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

cluster_challenges = Table(
    "cluster_challenges",
    metadata,
    # The token of an HTTP-01 challenge (base64url, RFC 8555 §8.3: at least 128 bits).
    Column("token", String(255), primary_key=True),
    Column("key_authorization", Text, nullable=False),
    # Seconds since the epoch (UTC) after which the row is not answered and may be deleted.
    Column("expires_at", BigInteger, nullable=False),
)
