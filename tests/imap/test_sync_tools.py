"""mbsync (isync) and offlineimap sync a 1,000-message mailbox down to a Maildir and back up after
local changes (flags, deletions, new messages); afterwards the server matches the Maildir exactly."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import ssl
from pathlib import Path

import pytest

from peerage.mail.mailbox import mailbox_owner, store_for
from tests.harness import require_binary
from tests.imap.conftest import PASSWORD, USER, ImapHost

MESSAGES = 1000
# Seconds a sync run of 1,000 messages may take on a loaded two-core machine.
SYNC_TIMEOUT = 120
_MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
_COMPARED_FLAGS = set(_MAILDIR_FLAGS.values())
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.I | re.M)


def sample(number: int) -> bytes:
    return (
        f"From: list{number % 7}@example.net\r\nTo: alice@example.org\r\n"
        f"Subject: sync test {number}\r\nMessage-ID: <sync{number}@example.net>\r\n"
        f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n\r\n" + f"line {number}\r\n" * 5
    ).encode()


async def populate(imap: ImapHost) -> None:
    store = store_for(imap.host)
    owner = mailbox_owner(USER)
    inbox = await store.get_mailbox(owner, "INBOX")
    assert inbox is not None
    flags: list[tuple[str, ...]] = [("\\Seen",) if n % 3 == 0 else () for n in range(MESSAGES)]
    await store.append_many(
        inbox.id, [(sample(n), flags[n], None, 0) for n in range(MESSAGES)], durable=False
    )


async def server_state(imap: ImapHost) -> dict[bytes, set[str]]:
    store = store_for(imap.host)
    inbox = await store.get_mailbox(mailbox_owner(USER), "INBOX")
    assert inbox is not None
    rows = await store.messages(inbox.id, None, with_header=True)
    state = {}
    for row in rows:
        match = _MESSAGE_ID.search(row.header)
        assert match, row.header
        state[match.group(1)] = set(row.flags) & _COMPARED_FLAGS
    return state


def maildir_state(folder: Path) -> dict[bytes, set[str]]:
    state = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir():
            match = _MESSAGE_ID.search(path.read_bytes())
            assert match, path
            info = path.name.rsplit(":2,", 1)[1] if ":2," in path.name else ""
            state[match.group(1)] = {_MAILDIR_FLAGS[c] for c in info if c in _MAILDIR_FLAGS}
    return state


def change_locally(folder: Path) -> tuple[int, int]:
    """Flag 50, flag-as-important 20, delete 10 and add 5 messages; returns (deleted, added)."""
    files = sorted((folder / "cur").iterdir()) + sorted((folder / "new").iterdir())
    assert len(files) == MESSAGES
    for index, path in enumerate(files[:80]):
        name = path.name
        base, _, info = name.partition(":2,")
        if index < 10:
            path.unlink()
            continue
        letter = "S" if index < 60 else "F"
        info = "".join(sorted(set(info) | {letter}))
        path.rename(folder / "cur" / f"{base}:2,{info}")
    for number in range(5):
        name = f"1700000000.local{number}.host"
        (folder / "tmp" / name).write_bytes(sample(10_000 + number))
        os.rename(folder / "tmp" / name, folder / "new" / name)
    return 10, 5


async def run_tool(*argv: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, **(env or {})),
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), SYNC_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


@pytest.mark.interop
async def test_mbsync_round_trip(imap: ImapHost, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_binary("mbsync")
    caplog.set_level(logging.DEBUG, logger="peerage.imap")
    await populate(imap)
    maildir = tmp_path / "mbsync-mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount peerage
Host {imap.address}
Port 993
User {USER}
Pass "{PASSWORD}"
SSLType IMAPS
CertificateFile {imap.cert}
AuthMechs PLAIN

IMAPStore remote
Account peerage

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel inbox
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
"""
    )
    await run_tool("mbsync", "-c", str(config), "-a")
    # mbsync speaks RFC 4978 COMPRESS=DEFLATE whenever the server offers it.
    assert "COMPRESS=DEFLATE active" in caplog.text
    local = maildir_state(maildir / "INBOX")
    assert len(local) == MESSAGES
    assert local == await server_state(imap)

    change_locally(maildir / "INBOX")
    await run_tool("mbsync", "-c", str(config), "-a")
    local = maildir_state(maildir / "INBOX")
    remote = await server_state(imap)
    assert len(remote) == MESSAGES - 10 + 5
    assert remote == local


@pytest.mark.interop
async def test_offlineimap_round_trip(imap: ImapHost, tmp_path: Path) -> None:
    require_binary("offlineimap")
    await populate(imap)
    maildir = tmp_path / "offlineimap-mail"
    der = ssl.PEM_cert_to_DER_cert(imap.cert.read_text())
    fingerprint = hashlib.sha512(der).hexdigest()
    config = tmp_path / "offlineimaprc"
    config.write_text(
        f"""[general]
accounts = main
metadata = {tmp_path / "offlineimap-meta"}
ui = quiet

[Account main]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {maildir}

[Repository remote]
type = IMAP
remotehost = {imap.address}
remoteport = 993
ssl = yes
cert_fingerprint = {fingerprint}
remoteuser = {USER}
remotepass = {PASSWORD}
auth_mechanisms = PLAIN
folderfilter = lambda folder: folder == 'INBOX'
createfolders = False
maxconnections = 1
"""
    )
    await run_tool("offlineimap", "-c", str(config), "-o", "-u", "quiet")
    local = maildir_state(maildir / "INBOX")
    assert len(local) == MESSAGES
    assert local == await server_state(imap)

    change_locally(maildir / "INBOX")
    await run_tool("offlineimap", "-c", str(config), "-o", "-u", "quiet")
    local = maildir_state(maildir / "INBOX")
    remote = await server_state(imap)
    assert len(remote) == MESSAGES - 10 + 5
    assert remote == local
