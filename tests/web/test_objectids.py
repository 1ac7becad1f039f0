"""Stable Email ids: a message keeps its JMAP id through IMAP MOVE, COPY then EXPUNGE, and JMAP
mailboxIds changes, and the /changes methods report such a move as an update (RFC 8620 §5.2)."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import ssl
from typing import Any

import pytest

from peerage.mail.mailbox import deliver
from tests.harness import async_wait_for
from tests.web.conftest import PASSWORD, USER, Jmap, WebHost


def message(subject: str, extra: str = "") -> bytes:
    return (f"From: Carol <carol@remote.example>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.example>\r\n"
            f"{extra}\r\nbody of {subject}\r\n").encode()


def imap(server: WebHost, *commands: tuple[str, ...]) -> list[tuple[str, Any]]:
    """Run IMAP commands over implicit TLS as a stock client (imaplib) does; the answers in order."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = imaplib.IMAP4_SSL(server.address, 993, ssl_context=context, timeout=20)
    try:
        client.login(USER, PASSWORD)
        out = []
        for command in commands:
            name, *args = command
            if name == "select":
                out.append(client.select(*args))
            else:
                out.append(client.uid(name, *args))
        return out
    finally:
        client.logout()


async def inbox_and(jmap: Jmap, role: str) -> tuple[str, str]:
    return await jmap.mailbox("inbox"), await jmap.mailbox(role)


async def only_id(jmap: Jmap, box: str) -> str:
    (email,) = (await jmap.one("Email/query", {"filter": {"inMailbox": box}}))["ids"]
    return str(email)


async def test_imap_move_keeps_the_id_and_is_an_update(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("moving"))
    jmap = Jmap(mailhost)
    inbox, trash = await inbox_and(jmap, "trash")
    email = await only_id(jmap, inbox)
    state = (await jmap.one("Email/get", {"ids": [email], "properties": ["threadId"]}))["state"]
    thread_state = state
    query_state = (await jmap.one("Email/query", {"filter": {"inMailbox": inbox}}))["queryState"]
    answers = await asyncio.to_thread(imap, mailhost, ("select", "INBOX"), ("MOVE", "1:*", "Trash"))
    assert answers[1][0] == "OK", answers
    assert await only_id(jmap, trash) == email
    got = await jmap.one("Email/get", {"ids": [email], "properties": ["mailboxIds"]})
    assert got["list"][0]["mailboxIds"] == {trash: True}
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([], [email], [])
    threads = await jmap.one("Thread/changes", {"sinceState": thread_state})
    assert threads["destroyed"] == [] and len(threads["updated"]) == 1
    # The inbox query lost it; RFC 8620 §5.6: removed, and not added back.
    moved = await jmap.one("Email/queryChanges", {"filter": {"inMailbox": inbox}, "sinceQueryState": query_state})
    assert moved["removed"] == [email] and moved["added"] == []


async def test_imap_copy_then_expunge_keeps_the_id(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("copied"))
    jmap = Jmap(mailhost)
    inbox, archive = await inbox_and(jmap, "trash")
    email = await only_id(jmap, inbox)
    state = (await jmap.one("Email/get", {"ids": [email], "properties": ["id"]}))["state"]
    await asyncio.to_thread(imap, mailhost, ("select", "INBOX"), ("COPY", "1", "Trash"))
    # Between the COPY and the EXPUNGE the one message is in two mailboxes: one Email, two mailboxIds.
    got = await jmap.one("Email/get", {"ids": [email], "properties": ["mailboxIds"]})
    assert got["list"][0]["mailboxIds"] == {inbox: True, archive: True}
    mid = await jmap.one("Email/changes", {"sinceState": state})
    assert (mid["created"], mid["updated"], mid["destroyed"]) == ([], [email], [])
    await asyncio.to_thread(imap, mailhost, ("select", "INBOX"), ("STORE", "1", "+FLAGS", "(\\Deleted)"),
                            ("EXPUNGE", "1"))
    assert await only_id(jmap, archive) == email
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([], [email], [])
    assert (await jmap.one("Email/get", {"ids": [email], "properties": ["mailboxIds"]}))["list"][0][
        "mailboxIds"] == {archive: True}


async def test_jmap_move_seen_over_imap_and_destroy_reported(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("first"))
    await deliver(mailhost.host, USER, message("second"))
    jmap = Jmap(mailhost)
    inbox, trash = await inbox_and(jmap, "trash")
    ids = (await jmap.one("Email/query", {"filter": {"inMailbox": inbox}, "sort": [{"property": "subject"}]}))["ids"]
    first, second = ids
    state = (await jmap.one("Email/get", {"ids": ids, "properties": ["id"]}))["state"]
    moved = await jmap.one("Email/set", {"update": {first: {f"mailboxIds/{inbox}": None, f"mailboxIds/{trash}": True,
                                                            "keywords/$seen": True}}})
    assert first in moved["updated"]
    gone = await jmap.one("Email/set", {"destroy": [second]})
    assert gone["destroyed"] == [second]
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([], [first], [second])
    threads = await jmap.one("Thread/changes", {"sinceState": state})
    assert len(threads["destroyed"]) == 1 and len(threads["updated"]) == 1
    # IMAP sees the moved message in Trash with the flag JMAP set.
    answers = await asyncio.to_thread(imap, mailhost, ("select", "Trash"), ("FETCH", "1:*", "(FLAGS)"))
    assert b"\\Seen" in answers[1][1][0]
    # A message created and gone again between two states is not reported at all.
    later = (await jmap.one("Email/get", {"ids": [first], "properties": ["id"]}))["state"]
    await deliver(mailhost.host, USER, message("brief"))
    brief = await only_id(jmap, inbox)
    await jmap.one("Email/set", {"destroy": [brief]})
    quiet = await jmap.one("Email/changes", {"sinceState": later})
    assert (quiet["created"], quiet["updated"], quiet["destroyed"]) == ([], [], [])


async def test_new_emails_and_threads_are_created(mailhost: WebHost) -> None:
    jmap = Jmap(mailhost)
    inbox = await jmap.mailbox("inbox")
    state = (await jmap.one("Email/get", {"ids": [], "properties": ["id"]}))["state"]
    await deliver(mailhost.host, USER, message("root"))
    await deliver(mailhost.host, USER, message("Re: root", "References: <root@remote.example>\r\n"))
    ids = (await jmap.one("Email/query", {"filter": {"inMailbox": inbox}}))["ids"]
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert sorted(changes["created"]) == sorted(ids) and changes["updated"] == []
    threads = await jmap.one("Thread/changes", {"sinceState": state})
    assert len(threads["created"]) == 1 and threads["updated"] == []
    got = await jmap.one("Thread/get", {"ids": threads["created"]})
    assert sorted(got["list"][0]["emailIds"]) == sorted(ids)


async def test_list_facts_are_kept_at_delivery_and_filled_in(mailhost: WebHost) -> None:
    from peerage.mail.mailbox import store_for

    store = store_for(mailhost.host)
    await deliver(mailhost.host, USER, message("=?utf-8?q?caf=C3=A9_kept?="))
    summarize, store.summarize = store.summarize, None  # as a message stored before the facts were kept
    try:
        await deliver(mailhost.host, USER, message("=?utf-8?q?caf=C3=A9_later?="))
    finally:
        store.summarize = summarize
    inbox = await store.get_mailbox(USER, "INBOX")
    assert inbox is not None
    rows = sorted(await store.messages(inbox.id, None, with_header=True), key=lambda r: r.uid)
    assert rows[0].summary is not None and rows[1].summary is None
    jmap = Jmap(mailhost)
    ids = (await jmap.one("Email/query", {"sort": [{"property": "subject"}]}))["ids"]
    got = await jmap.one("Email/get", {"ids": ids, "properties": ["subject", "from", "sentAt", "messageId"]})
    assert [e["subject"] for e in got["list"]] == ["café kept", "café later"]
    assert got["list"][1]["from"] == [{"name": "Carol", "email": "carol@remote.example"}]
    assert got["list"][1]["sentAt"] == "2026-12-01T10:00:00Z"
    rows = sorted(await store.messages(inbox.id, None, with_header=True), key=lambda r: r.uid)
    assert rows[1].summary is not None  # filled in by the first read


async def test_login_starts_loading_the_mail(mailhost: WebHost, caplog: pytest.LogCaptureFixture) -> None:
    """The form login starts building the account's JMAP index, so the webmail's first request (a page
    load later) finds it ready; observed through its log line, within a bound."""
    for n in range(3):
        await deliver(mailhost.host, USER, message(f"warm {n}"))
    caplog.set_level(logging.INFO, logger="peerage.mail.jmap.api")
    await mailhost.login()
    await async_wait_for(lambda: any("JMAP index of" in r.getMessage() for r in caplog.records), 30,
                         "the JMAP index loaded")
    (line,) = [r.getMessage() for r in caplog.records if "JMAP index of" in r.getMessage()]
    assert f"JMAP index of {USER} loaded: 3 emails" in line


async def test_changes_across_a_deleted_mailbox(mailhost: WebHost) -> None:
    await deliver(mailhost.host, USER, message("only there"))
    await deliver(mailhost.host, USER, message("also in inbox"))
    jmap = Jmap(mailhost)
    inbox = await jmap.mailbox("inbox")
    old = (await jmap.one("Mailbox/set", {"create": {"o": {"name": "Old"}}}))["created"]["o"]["id"]
    ids = (await jmap.one("Email/query", {"filter": {"inMailbox": inbox}, "sort": [{"property": "subject"}]}))["ids"]
    both, moved = ids  # "also in inbox" sorts first
    await jmap.one("Email/set", {"update": {moved: {"mailboxIds": {old: True}},
                                            both: {f"mailboxIds/{old}": True}}})
    state = (await jmap.one("Email/get", {"ids": ids, "properties": ["id"]}))["state"]
    gone = await jmap.one("Mailbox/set", {"destroy": [old], "onDestroyRemoveEmails": True})
    assert gone["destroyed"] == [old]
    changes = await jmap.one("Email/changes", {"sinceState": state})
    assert (changes["created"], changes["updated"], changes["destroyed"]) == ([], [both], [moved])
    threads = await jmap.one("Thread/changes", {"sinceState": state})
    assert len(threads["destroyed"]) == 1 and len(threads["updated"]) == 1
