"""Per-user export and import: `peerage user export ADDRESS DIR`, `peerage user import ADDRESS DIR`.

This module is in charge of one account's data in formats other software reads: every mail folder
as a Maildir (flags in the file names) or an mbox file, the XMPP roster and one-to-one archive as JSON
(the archive keeps each stanza's XML as stored), and the vCard as vcard-temp XML (XEP-0054). Import
takes the same folder into an existing account: folders are created as needed, messages appended
with their flags and dates, roster items and the vCard replaced, archive entries added unless their
archive id is already there. Passwords are never exported (only derived secrets exist).
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from peerage.config import Config

# IMAP system flags and their Maildir letters (https://cr.yp.to/proto/maildir.html).
MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


def _folder_file(name: str) -> str:
    return name.replace("/", ".") or "INBOX"


async def _mailbox_store(store: Any, config: Config) -> Any:
    """The mailboxes, with a cluster's large bodies read from and written to its database."""
    from peerage.mail.mailbox.store import MailboxStore

    mail = MailboxStore(store.engine, config.data_dir)
    if config.cluster.enabled:
        from peerage.cluster import BLOB_FOLDERS
        from peerage.cluster.blobs import DatabaseBlobs
        from peerage.mail.mailbox.blobs import BlobStore

        mail.blobs = DatabaseBlobs(store.engine, "mail", asyncio.get_running_loop(),
                                   BlobStore(config.data_dir / BLOB_FOLDERS["mail"]))
    return mail


async def export_account(store: Any, config: Config, address: str, target: Path, fmt: str) -> dict[str, int]:
    from peerage.xmpp.tables import xmpp_archive, xmpp_roster, xmpp_vcard

    target.mkdir(parents=True, exist_ok=True)
    counts = {"folders": 0, "messages": 0, "roster": 0, "archive": 0, "vcard": 0}
    mail = await _mailbox_store(store, config)
    (target / "mail").mkdir(exist_ok=True)
    for info in await mail.list_mailboxes(address):
        rows = await mail.messages(info.id, None)
        bodies = await mail.read_bodies(rows)
        counts["folders"] += 1
        if fmt == "maildir":
            box: Any = mailbox.Maildir(target / "mail" / _folder_file(info.name), create=True)
        else:
            box = mailbox.mbox(target / "mail" / f"{_folder_file(info.name)}.mbox", create=True)
        box.lock()
        try:
            for row in rows:
                if fmt == "maildir":
                    message: Any = mailbox.MaildirMessage(bodies.get(row.uid, b""))
                    message.set_subdir("cur")
                    message.set_flags("".join(sorted(MAILDIR_FLAGS[f] for f in row.flags if f in MAILDIR_FLAGS)))
                    message.set_date(float(row.internal_date))
                else:
                    message = mailbox.mboxMessage(bodies.get(row.uid, b""))
                    message.set_from("MAILER-DAEMON", time.gmtime(row.internal_date))
                    message.set_flags("".join(sorted({"\\Seen": "R", "\\Deleted": "D", "\\Flagged": "F",
                                                      "\\Answered": "A"}.get(f, "") for f in row.flags)))
                box.add(message)
                counts["messages"] += 1
        finally:
            box.flush()
            box.unlock()
            box.close()
    async with store.begin() as conn:
        # Every roster column but the owner, so columns added later travel too.
        fields = [c.name for c in xmpp_roster.columns if c.name != "owner"]
        roster = [dict(zip(fields, row, strict=True)) for row in await conn.execute(
            select(*(xmpp_roster.c[f] for f in fields)).where(xmpp_roster.c.owner == address)
            .order_by(xmpp_roster.c.contact))]
        archive = [{"archive_id": r.archive_id, "with": r.with_jid, "stamp": r.stamp, "stanza": r.stanza}
                   for r in await conn.execute(select(xmpp_archive).where(xmpp_archive.c.owner == address)
                                               .order_by(xmpp_archive.c.id))]
        vcard = (await conn.execute(select(xmpp_vcard.c.xml).where(xmpp_vcard.c.owner == address))).scalar()
    (target / "roster.json").write_text(json.dumps(roster, indent=1))
    (target / "archive.json").write_text(json.dumps(archive, indent=1))
    if vcard is not None:
        (target / "vcard.xml").write_text(vcard)
        counts["vcard"] = 1
    counts["roster"], counts["archive"] = len(roster), len(archive)
    (target / "export.json").write_text(json.dumps({"address": address, "mail_format": fmt, **counts}, indent=1))
    return counts


async def _bump_roster_version(conn: Any, address: str) -> int:
    """Move ``address``'s roster version (XEP-0237) one step on and return it."""
    from peerage.xmpp.tables import xmpp_roster_version

    current = (await conn.execute(select(xmpp_roster_version.c.version)
                                  .where(xmpp_roster_version.c.owner == address))).scalar()
    if current is None:
        await conn.execute(insert(xmpp_roster_version).values(owner=address, version=1, pruned=0))
        return 1
    version = int(current) + 1
    await conn.execute(update(xmpp_roster_version).where(xmpp_roster_version.c.owner == address)
                       .values(version=version))
    return version


async def import_account(store: Any, config: Config, address: str, source: Path) -> dict[str, int]:
    from peerage.mail.mailbox.store import MailboxExists
    from peerage.xmpp.tables import xmpp_archive, xmpp_roster, xmpp_vcard

    try:
        manifest = json.loads((source / "export.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{source} has no export.json: not a peerage user export") from None
    counts = {"folders": 0, "messages": 0, "roster": 0, "archive": 0, "vcard": 0}
    mail = await _mailbox_store(store, config)
    await mail.ensure_defaults(address)
    for path in sorted((source / "mail").iterdir()):
        box: Any
        if manifest["mail_format"] == "maildir":
            if not path.is_dir():
                continue
            name, box = path.name.replace(".", "/"), mailbox.Maildir(path, create=False)
        else:
            if path.suffix != ".mbox":
                continue
            name, box = path.stem.replace(".", "/"), mailbox.mbox(path, create=False)
        info = await mail.get_mailbox(address, name)
        if info is None:
            try:
                info = await mail.create_mailbox(address, name)
            except MailboxExists:
                info = await mail.get_mailbox(address, name)
        assert info is not None
        counts["folders"] += 1
        items = []
        for message in box:
            letters = message.get_flags()
            if manifest["mail_format"] == "maildir":
                flags = tuple(f for f, letter in MAILDIR_FLAGS.items() if letter in letters)
                date = message.get_date()
            else:
                mapping = {"R": "\\Seen", "D": "\\Deleted", "F": "\\Flagged", "A": "\\Answered"}
                flags = tuple(sorted(mapping[c] for c in letters if c in mapping))
                date = None
            items.append((message.as_bytes(unixfrom=False), flags, date, 0))
        if items:
            await mail.append_many(info.id, items)
            counts["messages"] += len(items)
    roster = json.loads((source / "roster.json").read_text())
    archive = json.loads((source / "archive.json").read_text())
    async with store.begin() as conn:
        version = await _bump_roster_version(conn, address) if roster else 0
        known_columns = {c.name for c in xmpp_roster.columns} - {"owner", "version"}
        for item in roster:
            await conn.execute(delete(xmpp_roster).where((xmpp_roster.c.owner == address)
                                                         & (xmpp_roster.c.contact == item["contact"])))
            # Stored at the account's new roster version (XEP-0237): a client that synced before the
            # import is sent these items, not told it is up to date. The exported version numbers
            # belong to the other server's sequence.
            await conn.execute(insert(xmpp_roster).values(
                owner=address, version=version, **{k: v for k, v in item.items() if k in known_columns}))
        counts["roster"] = len(roster)
        # Archive ids are unique server-wide (XEP-0313 stanza ids): an entry already here is skipped.
        ids = [entry["archive_id"] for entry in archive]
        known = {r[0] for r in await conn.execute(select(xmpp_archive.c.archive_id)
                                                  .where(xmpp_archive.c.archive_id.in_(ids)))} if ids else set()
        for entry in archive:
            if entry["archive_id"] in known:
                continue
            await conn.execute(insert(xmpp_archive).values(owner=address, archive_id=entry["archive_id"],
                                                           with_jid=entry["with"], stamp=entry["stamp"],
                                                           stanza=entry["stanza"]))
            counts["archive"] += 1
        vcard_path = source / "vcard.xml"
        if vcard_path.exists():
            await conn.execute(delete(xmpp_vcard).where(xmpp_vcard.c.owner == address))
            await conn.execute(insert(xmpp_vcard).values(owner=address, xml=vcard_path.read_text()))
            counts["vcard"] = 1
    return counts
