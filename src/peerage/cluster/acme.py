"""ACME on a cluster: challenges every node answers, one order per domain, one certificate for all.

This module is in charge of what ``peerage.ops.acme`` shares in cluster mode:

- ``SharedChallenges``: the HTTP-01 key authorisations (RFC 8555 §8.3) of the order in progress,
  written to ``cluster_challenges`` before the challenge is answered to the CA and removed after,
  so the web service of whichever node the CA's validation reaches answers it (``stored_challenge``:
  its own memory first, then this table). Its ``set``/``remove`` are blocking, for the worker
  thread that runs the order; they run their statement on the event loop's engine and wait.
- the certificate row (``cluster_keys`` kind ``acme-cert``, the domain's key PEM then its chain):
  ``join_pair`` / ``split_pair``;
- the names: the lease kind (one node orders a domain at a time), the account key row (one ACME
  account for the cluster) and the NATS subject on which the ordering node announces a new
  certificate so the others load it at once.

TLS-ALPN-01 (RFC 8737) is not shared: its validation certificate lives in the TLS layer of the
ordering node, so a cluster orders with HTTP-01 only (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from peerage.cluster.tables import cluster_challenges

#: The lease (``cluster_leases``) a node holds while it orders a domain's certificate.
LEASE_KIND = "acme"
#: ``cluster_keys`` rows: the cluster's ACME account key, and each domain's key and chain.
ACCOUNT_KIND, ACCOUNT_NAME = "acme", "account"
CERT_KIND = "acme-cert"
#: Published (payload: the domain) once a new certificate row is stored.
ACME_SUBJECT = "peerage.cluster.acme"
#: Seconds a key authorisation row is answered: longer than an order may take (ops.acme.ORDER_TIMEOUT).
CHALLENGE_SECONDS = 600
#: Seconds the ordering thread waits for one statement.
STATEMENT_TIMEOUT = 30.0

_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----\s*", re.DOTALL)


def join_pair(key_pem: bytes, chain_pem: bytes) -> bytes:
    """One row for a domain's key and chain, so a node never loads a key with another chain."""
    return key_pem.strip() + b"\n" + chain_pem.lstrip()


def split_pair(pem: bytes) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) of a row ``join_pair`` made; ValueError when it holds no key."""
    found = _KEY.search(pem)
    if found is None:
        raise ValueError("the stored certificate has no private key")
    return found.group(0).strip() + b"\n", (pem[:found.start()] + pem[found.end():]).lstrip()


async def put_challenge(engine: AsyncEngine, token: str, key_authorization: str) -> None:
    now = int(time.time())
    statement = pg_insert(cluster_challenges).values(token=token, key_authorization=key_authorization,
                                                     expires_at=now + CHALLENGE_SECONDS)
    async with engine.begin() as conn:
        # Rows of orders that never cleaned up (a node killed mid-order) go with the next order.
        await conn.execute(delete(cluster_challenges).where(cluster_challenges.c.expires_at < now))
        await conn.execute(statement.on_conflict_do_update(
            index_elements=[cluster_challenges.c.token],
            set_={"key_authorization": statement.excluded.key_authorization,
                  "expires_at": statement.excluded.expires_at}))


async def remove_challenge(engine: AsyncEngine, token: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(cluster_challenges).where(cluster_challenges.c.token == token))


async def stored_challenge(engine: AsyncEngine, token: str) -> str | None:
    """The key authorisation for ``token`` some node's order stored, while it has not expired."""
    async with engine.connect() as conn:
        found = (await conn.execute(select(cluster_challenges.c.key_authorization).where(
            cluster_challenges.c.token == token, cluster_challenges.c.expires_at >= int(time.time())))).scalar()
    return None if found is None else str(found)


class SharedChallenges:
    """The web service's registry and ``cluster_challenges`` together; blocking, for the order's thread."""

    def __init__(self, memory: Any, engine: AsyncEngine, loop: asyncio.AbstractEventLoop) -> None:
        self.memory = memory
        self.engine = engine
        self.loop = loop

    def _run(self, coroutine: Any) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(STATEMENT_TIMEOUT)

    def set(self, token: str, key_authorization: str) -> None:
        self.memory.set(token, key_authorization)
        # Committed before the challenge is answered: the CA may validate at once, at any node.
        self._run(put_challenge(self.engine, token, key_authorization))

    def remove(self, token: str) -> None:
        self.memory.remove(token)
        self._run(remove_challenge(self.engine, token))

    def get(self, token: str) -> str | None:
        found = self.memory.get(token)
        return None if found is None else str(found)
