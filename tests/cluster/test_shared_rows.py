"""The cluster's shared rows on a real PostgreSQL, without nodes: keys made at once by two engines
(two nodes starting together) end as one, the body store's write, link, read, remove and sweep, and
ACME's challenge rows (expiry, sweep) and one-row key and chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from peerage.cluster.blobs import DatabaseBlobs, SharedKeys
from peerage.cluster.tables import cluster_keys
from peerage.store import Store
from tests.harness.postgres import fresh_database


async def test_keys_made_at_once_by_two_nodes_end_as_one(postgres_url: str) -> None:
    async with fresh_database(postgres_url, "shared_keys") as url:
        first, second = Store(url), Store(url)
        try:
            await first.migrate()
            made: list[bytes] = []
            started = asyncio.Event()

            def maker(pem: bytes) -> bytes:
                made.append(pem)
                return pem

            async def race(store: Store, pem: bytes) -> bytes:
                await started.wait()
                return await SharedKeys(store.engine).get_or_create("dkim", "example.org/rsa2048",
                                                                   lambda: maker(pem))

            tasks = [asyncio.ensure_future(race(first, b"one")), asyncio.ensure_future(race(second, b"two"))]
            started.set()
            results = await asyncio.gather(*tasks)
            assert results[0] == results[1]
            assert results[0] in made
            async with first.engine.connect() as conn:
                assert (await conn.execute(select(func.count()).select_from(cluster_keys))).scalar() == 1
            # Later nodes read it, never make another.
            assert await SharedKeys(second.engine).get_or_create("dkim", "example.org/rsa2048",
                                                                 lambda: b"three") == results[0]
            assert await SharedKeys(second.engine).names("dkim", "example.org/") == ["example.org/rsa2048"]
        finally:
            await first.close()
            await second.close()


async def test_body_store_rows_from_worker_threads(postgres_url: str) -> None:
    async with fresh_database(postgres_url, "shared_blobs") as url:
        store = Store(url)
        try:
            await store.migrate()
            blobs = DatabaseBlobs(store.engine, "mail", asyncio.get_running_loop())
            body = bytes(range(256)) * 400
            name = await asyncio.to_thread(blobs.write, body)
            copy = await asyncio.to_thread(blobs.link, name)
            assert copy != name
            assert await asyncio.to_thread(blobs.read, copy) == body
            assert await blobs.read_async(name) == body
            # Another kind does not see them.
            assert await DatabaseBlobs(store.engine, "upload", asyncio.get_running_loop()).read_async(name) is None
            await asyncio.to_thread(blobs.remove, name)
            assert await blobs.read_async(name) is None
            assert await asyncio.to_thread(blobs.read, copy) == body
            # Called on the loop itself it refuses rather than block the loop that would answer.
            try:
                blobs.read(copy)
            except RuntimeError:
                pass
            else:
                raise AssertionError("a blocking read on the event loop was let through")
            # A body no row refers to is swept once old enough; a referred one stays.
            from peerage.mail.tables import mail_messages

            assert await blobs.sweep(mail_messages.c.blob, 3600) == 0  # younger than an hour
            assert await blobs.sweep(mail_messages.c.blob, -1) == 1
            assert await blobs.count() == 0
        finally:
            await store.close()


async def test_upload_and_media_bodies_without_rows_are_swept(postgres_url: str) -> None:
    from sqlalchemy import insert

    from peerage.cluster.blobs import sweep_files
    from peerage.xmpp.extables import upload_files

    async with fresh_database(postgres_url, "shared_sweep") as url:
        store = Store(url)
        try:
            await store.migrate()
            loop = asyncio.get_running_loop()
            upload, media = DatabaseBlobs(store.engine, "upload", loop), DatabaseBlobs(store.engine, "media", loop)
            kept = await asyncio.to_thread(upload.write, b"kept")
            lost = await asyncio.to_thread(upload.write, b"lost")
            stray = await asyncio.to_thread(media.write, b"stray")
            slot = {"owner": "a@example.org", "filename": "f", "size": 4, "content_type": "text/plain",
                    "created": 0.0, "expires": 1e12, "put_token_hash": "x"}
            async with store.begin() as conn:
                # One slot stored, one still waiting for its PUT (blob NULL).
                await conn.execute(insert(upload_files), [{**slot, "slot": "s1", "blob": kept},
                                                          {**slot, "slot": "s2", "blob": None}])
            assert await sweep_files(upload, media, 3600) == 0  # all younger than an hour
            assert await sweep_files(upload, media, -1) == 2
            assert await upload.read_async(kept) == b"kept"
            assert await upload.read_async(lost) is None and await media.read_async(stray) is None
        finally:
            await store.close()


async def test_domain_add_and_dns_use_the_cluster_rows(postgres_url: str, tmp_path: Path) -> None:
    from peerage.cli import _generate_domain_keys
    from peerage.cluster.blobs import with_keys
    from peerage.config import config_from_dict
    from peerage.mail import dnsrecords
    from peerage.mail.auth import dkim

    async with fresh_database(postgres_url, "shared_dns") as url:
        config = config_from_dict({"server": {"data_dir": str(tmp_path / "data")}, "database": {"url": url},
                                   "cluster": {"node": "n1", "nats_urls": ["nats://127.0.0.1:1"]}},
                                  tmp_path / "peerage.toml", check_files=False)
        # The commands' plain code, as `peerage domain add` and `peerage dns` run it (each opens an
        # engine of its own in a thread of its own).
        await asyncio.to_thread(_generate_domain_keys, config, "example.org")
        assert not (tmp_path / "data" / "dkim").exists()
        keys = await asyncio.to_thread(with_keys, url, lambda rows: dkim.shared_keys(rows, "example.org"))
        assert keys is not None
        # Run again (another node's command), the keys stay.
        await asyncio.to_thread(_generate_domain_keys, config, "example.org")
        assert await asyncio.to_thread(with_keys, url, lambda rows: dkim.shared_keys(rows, "example.org")) == keys
        printed = "".join(await asyncio.to_thread(dnsrecords.records, "example.org", config)).replace('" "', "")
        for _, value in keys.dns_records():
            assert value in printed


async def test_files_from_before_the_cluster_are_still_read_and_their_keys_kept(postgres_url: str,
                                                                              tmp_path: Path) -> None:
    from peerage.mail.auth import dkim
    from peerage.mail.mailbox.blobs import BlobStore
    from peerage.social import keys as account_keys

    async with fresh_database(postgres_url, "shared_upgrade") as url:
        store = Store(url)
        try:
            await store.migrate()
            # What a node wrote while it was single, or while clusters shared data_dir.
            folder = BlobStore(tmp_path / "mail" / "blobs")
            old = folder.write(b"an old large body")
            dkim.generate_keys(tmp_path, "example.org")
            account_keys.generate(tmp_path, "ann@example.org", "main-key")
            blobs = DatabaseBlobs(store.engine, "mail", asyncio.get_running_loop(), folder)
            assert await asyncio.to_thread(blobs.read, old) == b"an old large body"
            assert await blobs.read_async(old) == b"an old large body"
            copy = await asyncio.to_thread(blobs.link, old)  # COPY of an old message: a row
            assert await DatabaseBlobs(store.engine, "mail", asyncio.get_running_loop()).read_async(copy) == (
                b"an old large body")
            await asyncio.to_thread(blobs.remove, old)  # expunged: the file goes
            assert not folder.path(old).exists()
            # The key DNS already publishes is the one stored for every node.
            rows = SharedKeys(store.engine)
            shared = await dkim.shared_keys(rows, "example.org", create=True, data_dir=tmp_path)
            assert shared == dkim.load_keys(tmp_path, "example.org")
            actor = await account_keys.shared(rows, "ann@example.org", "main-key", tmp_path)
            assert actor.public_pem == account_keys.load(tmp_path, "ann@example.org", "main-key").public_pem  # type: ignore[union-attr]
        finally:
            await store.close()


async def test_acme_challenge_rows_and_the_stored_certificate(postgres_url: str, tmp_path: Path) -> None:
    from sqlalchemy import insert, update

    from peerage.cluster.acme import (
        CERT_KIND,
        SharedChallenges,
        join_pair,
        put_challenge,
        split_pair,
        stored_challenge,
    )
    from peerage.cluster.tables import cluster_challenges
    from peerage.net.tls import generate_self_signed
    from peerage.web import AcmeChallenges

    async with fresh_database(postgres_url, "shared_acme") as url:
        store = Store(url)
        try:
            await store.migrate()
            memory = AcmeChallenges()
            shared = SharedChallenges(memory, store.engine, asyncio.get_running_loop())
            # Set from the order's worker thread: in this node's memory and in the row another node reads.
            await asyncio.to_thread(shared.set, "tok-1", "tok-1.thumb")
            assert memory.get("tok-1") == "tok-1.thumb"
            assert await stored_challenge(store.engine, "tok-1") == "tok-1.thumb"
            assert await stored_challenge(store.engine, "tok-2") is None
            # An expired row is not answered, and the next order's put deletes it.
            async with store.engine.begin() as conn:
                await conn.execute(update(cluster_challenges).values(expires_at=1))
                await conn.execute(insert(cluster_challenges).values(token="left", key_authorization="x",
                                                                     expires_at=1))
            assert await stored_challenge(store.engine, "tok-1") is None
            await put_challenge(store.engine, "tok-3", "tok-3.thumb")
            async with store.engine.connect() as conn:
                tokens = sorted(row[0] for row in await conn.execute(select(cluster_challenges.c.token)))
            assert tokens == ["tok-3"]
            await asyncio.to_thread(shared.remove, "tok-3")
            assert await stored_challenge(store.engine, "tok-3") is None
            # Key and chain in one row, replaced whole by a renewal.
            keys = SharedKeys(store.engine)
            for round_ in (1, 2):
                cert, key = tmp_path / f"{round_}.crt", tmp_path / f"{round_}.key"
                generate_self_signed("example.org", cert, key)
                await keys.put(CERT_KIND, "example.org", join_pair(key.read_bytes(), cert.read_bytes()))
                stored = await keys.get(CERT_KIND, "example.org")
                assert stored is not None
                assert split_pair(stored) == (key.read_bytes().strip() + b"\n", cert.read_bytes())
            async with store.engine.connect() as conn:
                assert (await conn.execute(select(func.count()).select_from(cluster_keys))).scalar() == 1
        finally:
            await store.close()
