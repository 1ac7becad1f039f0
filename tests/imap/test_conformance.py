"""One test per IMAP behaviour found wrong by a conformance run, each from its RFC: `[` in an atom
(RFC 9051 §9 ATOM-CHAR), section numbers inside a message/rfc822 part (RFC 9051 §6.4.5), address
groups and empty Sender/Reply-To in ENVELOPE (RFC 9051 §7.5.2), LIST's unknown options (RFC 5258 §3),
LSUB's \\Noselect parent (RFC 3501 §6.3.9), MOVE into the selected mailbox (RFC 6851 §3.3), and
the UID in every FETCH response under QRESYNC (RFC 7162 §3.2), only known messages in VANISHED
(RFC 7162 §3.2.10), and the mailbox's keywords in PERMANENTFLAGS (RFC 9051 §7.1); beside them,
SELECT's first unseen message and keywords in use, which SELECT reads grouped (RFC 3501 §6.3.1);
quoted-printable decoding for BINARY (RFC 2045 §6.7), BINARY[] of a multipart message and APPEND of a literal8 (RFC 3516).
One test pins the forms given after ENABLE IMAP4rev2 and QRESYNC, which imaptest's imap4rev2
mode does not expect of any server (the runs against peerage and Dovecot 2.4 are in docs/standards.md)."""

from __future__ import annotations

import asyncio
import re

from peerage.mail.imap import mime
from peerage.mail.imap.parser import Literal8, parse_command
from tests.imap.conftest import ImapHost
from tests.imap.test_extensions import Raw, append, login

FORWARD = (
    b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\nMime-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n\r\n"
    b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\nSubject: submsg\r\n\r\nHello world\r\n"
)


def test_open_bracket_is_an_atom_char() -> None:
    command = parse_command([b"a SELECT foo[bar"])
    assert command.args == ["foo[bar"]
    command = parse_command([b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*"])
    assert command.args[1] == "!#$&'+,-.0123456789:;<=>?@^_`|[}%*"
    # A section with spaces inside brackets still reads as one attribute.
    command = parse_command([b"a FETCH 1 BODY[HEADER.FIELDS (FROM TO)]"])
    assert command.args[1] == "BODY[HEADER.FIELDS (FROM TO)]"


def test_sections_inside_a_message_rfc822_body() -> None:
    # The message's one body part (1) is a message/rfc822: 1.1 is the inner message's body part,
    # 1.HEADER and 1.TEXT its header and text.
    assert mime.section_bytes(FORWARD, (1, 1), "", ()) == b"Hello world\r\n"
    assert mime.section_bytes(FORWARD, (1,), "HEADER", ()) == (
        b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\nSubject: submsg\r\n\r\n"
    )
    assert mime.section_bytes(FORWARD, (1,), "HEADER.FIELDS", ("FROM", "SUBJECT")) == (
        b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n"
    )
    assert mime.section_bytes(FORWARD, (1,), "TEXT", ()) == b"Hello world\r\n"
    assert mime.section_bytes(FORWARD, (1,), "", ()).startswith(b"From: sub@domain.org")  # type: ignore[union-attr]
    assert mime.section_bytes(FORWARD, (1, 2), "", ()) is None
    # HEADER of a part that is not a message does not exist.
    plain = b"Subject: x\r\n\r\nbody\r\n"
    assert mime.section_bytes(plain, (1,), "HEADER", ()) is None


def test_envelope_keeps_address_groups() -> None:
    header = (
        b'From: "Real Name" <user@domain>\r\nTo: a@b.example, group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n'
        b"Cc: group:;\r\nSender:\r\nReply-To: \r\n\r\n"
    )
    envelope = mime.envelope(header)
    real = b'(("Real Name" NIL "user" "domain"))'
    assert envelope == (
        b"(NIL NIL " + real + b" " + real + b" " + real + b" "
        b'((NIL NIL "a" "b.example") (NIL NIL "group" NIL) (NIL NIL "g1" "d1.org") (NIL NIL "g2" "d2.org") '
        b'(NIL NIL NIL NIL) (NIL NIL "group2" NIL) (NIL NIL "g3" "d3.org") (NIL NIL NIL NIL)) '
        b'((NIL NIL "group" NIL) (NIL NIL NIL NIL)) NIL NIL NIL)'
    )


async def test_list_refuses_unknown_options(imap: ImapHost) -> None:
    raw = await login(imap)
    for command in ('LIST (imaptest) "" ""', 'LIST (RECURSIVEMATCH) "" ""', 'LIST (RECURSIVEMATCH REMOTE) "" ""',
                    'LIST "" "" RETURN (imaptest)'):
        _, done = await raw.command(command)
        assert b" BAD " in done, (command, done)
    _, done = await raw.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')
    assert b" OK " in done
    _, done = await raw.command('LIST (REMOTE) "" "*" RETURN (CHILDREN SUBSCRIBED)')
    assert b" OK " in done
    raw.writer.close()


async def test_lsub_lists_an_unsubscribed_parent_as_noselect(imap: ImapHost) -> None:
    raw = await login(imap)
    for command in ("CREATE top", "CREATE top/leaf", "CREATE other", "SUBSCRIBE top/leaf", "SUBSCRIBE other",
                    "UNSUBSCRIBE top"):
        _, done = await raw.command(command)
        assert b" OK " in done, (command, done)
    untagged, _ = await raw.command('LSUB "" %')
    assert b'* LSUB (\\Noselect) "/" top' in untagged, untagged
    assert any(line.startswith(b"* LSUB (") and line.endswith(b'"/" other') for line in untagged), untagged
    assert not any(b"top/leaf" in line for line in untagged)
    untagged, _ = await raw.command('LSUB "" *')
    assert not any(b"\\Noselect" in line for line in untagged), untagged
    raw.writer.close()


async def test_move_into_the_selected_mailbox(imap: ImapHost) -> None:
    raw = await login(imap)
    for number in (1, 2):
        await append(raw, f"Subject: m{number}\r\n\r\nbody\r\n".encode())
    await raw.command("SELECT INBOX")
    untagged, done = await raw.command("MOVE 1 INBOX")
    assert b" OK " in done, done
    assert any(re.match(rb"\* OK \[COPYUID \d+ 1 3\]", line) for line in untagged), untagged
    assert b"* 1 EXPUNGE" in untagged
    untagged, _ = await raw.command("UID FETCH 1:* (UID)")
    assert [re.search(rb"UID (\d+)", line).group(1) for line in untagged if b"FETCH" in line] == [b"2", b"3"]  # type: ignore[union-attr]
    raw.writer.close()


def test_base_subject_follows_rfc5256() -> None:
    from peerage.mail.imap.search import base_subject

    assert base_subject("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)") == "B"
    assert base_subject("Re: [FWD: c]") == "C"
    assert base_subject("[xyz]") == "[XYZ]"  # a blob that is the whole subject stays
    assert base_subject("re: [fwd: [fwd: re: [fwd: babylon]]]") == "BABYLON"
    assert base_subject("Ad: Re: x") == "AD: RE: X"  # only re, fw and fwd are reply markers
    assert base_subject("b (a)") == "B (A)"


async def _sort_and_thread(imap: ImapHost, messages: list[bytes], command: str) -> list[bytes]:
    raw = await login(imap)
    for data in messages:
        await append(raw, data)
    await raw.command("SELECT INBOX")
    untagged, done = await raw.command(command)
    assert b" OK " in done, done
    raw.writer.close()
    return untagged


async def test_sort_by_subject_uses_base_subjects_and_ascii_casemap(imap: ImapHost) -> None:
    subjects = ["a", "C", "b", "_", "Re: [FWD: c]", "[xyz]", "", "=?iso-8859-1?q?RE:_C?=", "Ad: Re: x"]
    messages = [f"Subject: {s}\r\n\r\nbody\r\n".encode() for s in subjects]
    untagged = await _sort_and_thread(imap, messages, "SORT (SUBJECT) US-ASCII ALL")
    # "", A, AD: RE: X, B, C, C, C, [XYZ], _ (upper case: '[' and '_' sort after letters)
    assert untagged == [b"* SORT 7 1 9 3 2 5 8 6 4"], untagged


async def test_sort_by_cc_takes_a_group_name_as_first_address(imap: ImapHost) -> None:
    ccs = ["user2@domain2.org (foo bar)", "user2: blah@domain1.org;", "user1@domain1.org"]
    messages = [f"From: x@y.example\r\nCc: {cc}\r\nSubject: s\r\n\r\nbody\r\n".encode() for cc in ccs]
    untagged = await _sort_and_thread(imap, messages, "SORT (CC) US-ASCII ALL")
    assert untagged == [b"* SORT 3 1 2"], untagged


async def test_thread_references_own_references_decide_and_dummies_keep_children(imap: ImapHost) -> None:
    # RFC 5256: message 3's own References (<b@b>) decide its parent; <b@b>'s link to <c@b> would
    # close a loop, so 3 is a root with 2 under it, and 1 stands alone.
    messages = [
        b"Message-ID: <a@b>\r\nDate: Fri, 22 Feb 2008 17:06:23 +0000\r\n\r\nbody\r\n",
        b"Message-Id: <b@b>\r\nReferences: <a@b> <c@b>\r\nDate: Fri, 22 Feb 2008 15:06:23 +0000\r\n\r\nbody\r\n",
        b"Message-Id: <c@b>\r\nReferences: <b@b>\r\nDate: Fri, 22 Feb 2008 16:06:25 +0000\r\n\r\nbody\r\n",
        # A reply to a message that is not here, gathered by subject under its original.
        b"Message-Id: <d@b>\r\nSubject: foo\r\nDate: Fri, 22 Feb 2008 18:00:00 +0000\r\n\r\nbody\r\n",
        b"Message-Id: <e@b>\r\nReferences: <missing@b>\r\nSubject: Re: foo\r\n"
        b"Date: Fri, 22 Feb 2008 18:00:01 +0000\r\n\r\nbody\r\n",
    ]
    untagged = await _sort_and_thread(imap, messages, "THREAD REFERENCES US-ASCII ALL")
    assert untagged == [b"* THREAD (3 2)(1)(4 5)"], untagged


async def test_a_name_that_is_not_modified_utf7_is_no_not_bad(imap: ImapHost) -> None:
    raw = await login(imap)
    _, done = await raw.command("SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}")
    assert b" NO " in done, done
    untagged, done = await raw.command("LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*")
    assert b" OK " in done and untagged == [], (untagged, done)
    raw.writer.close()


async def test_recent_belongs_to_the_first_session_that_selects(imap: ImapHost) -> None:
    # RFC 3501 §2.3.2: \Recent is set in the one session that first learns of a message; EXAMINE
    # does not take it (§6.3.2); STATUS counts it; SEARCH RECENT/NEW/OLD use it.
    raw = await login(imap)
    await raw.command("CREATE fresh")
    for number in (1, 2):
        raw.writer.write(b"a%d APPEND fresh {%d+}\r\n" % (raw.counter, 13) + b"Subject: %d\r\n\r\n\r\n" % number)
        await raw.writer.drain()
        while not (await raw.reader.readline()).startswith(b"a%d " % raw.counter):
            pass
        raw.counter += 1
    untagged, _ = await raw.command("EXAMINE fresh")
    assert b"* 2 RECENT" in untagged, untagged
    untagged, _ = await raw.command("STATUS fresh (RECENT)")
    assert untagged == [b"* STATUS fresh (RECENT 2)"], untagged
    untagged, _ = await raw.command("SELECT fresh")
    assert b"* 2 RECENT" in untagged, untagged
    untagged, _ = await raw.command("FETCH 1 FLAGS")
    assert untagged == [b"* 1 FETCH (FLAGS (\\Recent))"], untagged
    untagged, _ = await raw.command("STORE 1 +FLAGS (\\Seen)")
    untagged, _ = await raw.command("SEARCH NEW")
    assert untagged == [b"* SEARCH 2"], untagged
    untagged, _ = await raw.command("SEARCH OLD")
    assert untagged == [b"* SEARCH"], untagged
    # Another session selecting now finds nothing recent: this one took both.
    other = await login(imap)
    untagged, _ = await other.command("SELECT fresh")
    assert b"* 0 RECENT" in untagged, untagged
    untagged, _ = await other.command("SEARCH RECENT")
    assert untagged == [b"* SEARCH"], untagged
    raw.writer.close()
    other.writer.close()


async def test_untagged_flags_announce_a_keyword_before_it_is_used(imap: ImapHost) -> None:
    # RFC 9051 §7.3.5: FLAGS lists the flags of the mailbox; a session must see a new keyword in a
    # FLAGS response before a FETCH carries it, also when another session created it.
    one = await login(imap)
    await append(one, b"Subject: k\r\n\r\nbody\r\n")
    await one.command("SELECT INBOX")
    two = await login(imap)
    await two.command("SELECT INBOX")
    await two.command("STORE 1 +FLAGS ($Label7)")
    untagged, _ = await one.command("NOOP")
    flags_at = next(i for i, line in enumerate(untagged) if line.startswith(b"* FLAGS ("))
    fetch_at = next(i for i, line in enumerate(untagged) if b"FETCH" in line)
    assert flags_at < fetch_at and b"$Label7" in untagged[flags_at], untagged
    assert b"$Label7" in untagged[fetch_at]
    one.writer.close()
    two.writer.close()


def test_envelope_keeps_a_source_route() -> None:
    # RFC 9051 §7.5.2 / RFC 5322 §4.4 obs-route: `<@route:user@domain>` puts "@route" in the
    # address's at-domain-list (the second field).
    envelope = mime.envelope(b"From: <@route:user@domain>\r\nTo: Real <@a.example,@b.example:u@d.example>\r\n\r\n")
    assert b'((NIL "@route" "user" "domain"))' in envelope
    assert b'(("Real" "@a.example,@b.example" "u" "d.example"))' in envelope


async def test_search_by_address_sees_the_parsed_address(imap: ImapHost) -> None:
    # RFC 9051 §6.4.4 FROM/TO: the address as parsed matches too, so comments and spacing inside the
    # address do not hide it (Dovecot matches the same way).
    untagged = await _sort_and_thread(imap, [
        b"From: <user-from (comment)@ (comment) domain.org>\r\n\r\nbody\r\n",
        b"From: user-from@domain.org (RealFrom)\r\n\r\nbody\r\n",
        b"From: other@domain.org\r\n\r\nbody\r\n",
    ], "SEARCH FROM user-from@domain.org")
    assert untagged == [b"* SEARCH 1 2"], untagged


async def test_condstore_enabled_by_fetch_tells_highestmodseq_and_min_max_modseq(imap: ImapHost) -> None:
    raw = await login(imap)
    for number in range(3):
        await append(raw, b"Subject: %d\r\n\r\nbody\r\n" % number)
    await raw.command("SELECT INBOX")
    # RFC 7162 §3.1: the first CONDSTORE-enabling command is told HIGHESTMODSEQ.
    untagged, _ = await raw.command("FETCH 1 MODSEQ")
    assert any(re.match(rb"\* OK \[HIGHESTMODSEQ \d+\]", line) for line in untagged), untagged
    modseqs = {}
    for seq in (1, 3, 2):
        untagged, _ = await raw.command(f"STORE {seq} +FLAGS (\\Seen)")
        modseqs[seq] = int(re.search(rb"MODSEQ \((\d+)\)", b" ".join(untagged)).group(1))  # type: ignore[union-attr]
    # RFC 4731 §3.2: with only MIN (or MAX), MODSEQ is that message's, not the highest of all matches.
    untagged, _ = await raw.command('SEARCH RETURN (MIN) 1:3 MODSEQ "/flags/\\\\seen" all 1')
    assert untagged[-1].endswith(b"MIN 1 MODSEQ %d" % modseqs[1]), untagged
    untagged, _ = await raw.command('SEARCH RETURN (ALL) 1:3 MODSEQ "/flags/\\\\seen" all 1')
    assert untagged[-1].endswith(b"ALL 1:3 MODSEQ %d" % max(modseqs.values())), untagged
    raw.writer.close()


async def test_subscriptions_are_names_not_mailboxes(imap: ImapHost) -> None:
    # RFC 9051 §6.3.4: CREATE does not subscribe; §6.3.7: a name without a mailbox may be subscribed;
    # §6.3.5: DELETE leaves the subscription; RFC 5258 §3.4: such a name is listed \NonExistent.
    raw = await login(imap)
    for name in ("top", "top/child", "top/other", "gone"):
        _, done = await raw.command(f"CREATE {name}")
        assert b" OK " in done, done
    untagged, _ = await raw.command('LIST "" top RETURN (SUBSCRIBED)')
    assert untagged == [b'* LIST (\\HasChildren) "/" top'], untagged
    for name in ("top/child", "gone", "never/made"):
        _, done = await raw.command(f"SUBSCRIBE {name}")
        assert b" OK " in done, done
    await raw.command("DELETE gone")
    untagged, _ = await raw.command('LIST (SUBSCRIBED) "" *')
    assert b'* LIST (\\Subscribed \\NonExistent) "/" gone' in untagged, untagged
    assert b'* LIST (\\Subscribed \\NonExistent) "/" never/made' in untagged, untagged
    assert not any(line.endswith(b'"/" top') for line in untagged), untagged
    # RFC 5258 §3.5: with RECURSIVEMATCH, a parent whose subscribed child does not match by itself
    # is listed with CHILDINFO; a name with no mailbox at all is \NonExistent.
    untagged, _ = await raw.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (CHILDREN)')
    assert b'* LIST (\\HasChildren) "/" top (CHILDINFO ("SUBSCRIBED"))' in untagged, untagged
    assert b'* LIST (\\NonExistent) "/" never (CHILDINFO ("SUBSCRIBED"))' in untagged, untagged
    # LSUB's % stops above top/child: top is shown \Noselect (RFC 3501 §6.3.9).
    untagged, _ = await raw.command('LSUB "" %')
    assert b'* LSUB (\\Noselect) "/" top' in untagged, untagged
    # Re-creating a subscribed name gives back a subscribed mailbox; UNSUBSCRIBE of an unknown name is OK.
    await raw.command("CREATE gone")
    untagged, _ = await raw.command('LIST "" gone RETURN (SUBSCRIBED)')
    assert untagged == [b'* LIST (\\HasNoChildren \\Subscribed) "/" gone'], untagged
    _, done = await raw.command("UNSUBSCRIBE never/made")
    assert b" OK " in done
    raw.writer.close()


async def test_unauthenticate_ends_the_login_on_the_same_connection(imap: ImapHost) -> None:
    """RFC 8437 with imaplib: log in, select, UNAUTHENTICATE, log in as someone else on the same
    TLS connection; the first user's mailbox and ENABLEd extensions are gone with the login."""
    import asyncio
    import imaplib

    from tests.imap.conftest import OTHER_USER, PASSWORD, USER

    def session() -> list[object]:
        imaplib.Commands.setdefault("UNAUTHENTICATE", ("AUTH", "SELECTED"))
        client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
        try:
            client.login(USER, PASSWORD)
            seen: list[object] = ["UNAUTHENTICATE" in client.capabilities]
            client.enable("CONDSTORE")
            client.select("INBOX")
            seen.append(client._simple_command("UNAUTHENTICATE")[0])
            client.state = "NONAUTH"
            # Not authenticated again: mailbox commands are refused until the next login.
            try:
                client._simple_command("SELECT", "INBOX")
                seen.append("select allowed")
            except imaplib.IMAP4.error as exc:
                seen.append(str(exc))
            client.login(OTHER_USER, PASSWORD)
            # CONDSTORE went with the first login: enabling it again reports it enabled anew.
            client.untagged_responses.pop("ENABLED", None)
            client.enable("CONDSTORE")
            seen.append(client.untagged_responses.get("ENABLED"))
            seen.append(client.select("INBOX")[0])
            return seen
        finally:
            client.logout()

    seen = await asyncio.to_thread(session)
    assert seen[0] is True and seen[1] == "OK"
    assert seen[2] != "select allowed" and "SELECT" in str(seen[2])
    assert seen[3] == [b"CONDSTORE"] and seen[4] == "OK"


async def _append_to(raw: Raw, mailbox: str, data: bytes) -> None:
    raw.writer.write(b"a%d APPEND %s {%d+}\r\n" % (raw.counter, mailbox.encode(), len(data)) + data + b"\r\n")
    await raw.writer.drain()
    while not (await asyncio.wait_for(raw.reader.readline(), 10)).startswith(b"a%d " % raw.counter):
        pass
    raw.counter += 1


async def test_qresync_fetch_responses_carry_the_uid(imap: ImapHost) -> None:
    # RFC 7162 §3.2 (RFC 5162 erratum 1807): once QRESYNC is enabled, FETCH responses name their
    # message by UID, also for a FETCH or STORE by sequence number: after a VANISHED the client's
    # sequence numbers may no longer be the server's.
    raw = await login(imap)
    await raw.command("CREATE qresync-uid")
    for number in (1, 2):
        await _append_to(raw, "qresync-uid", b"Subject: %d\r\n\r\nbody\r\n" % number)
    untagged, _done = await raw.command("ENABLE QRESYNC")
    assert untagged == [b"* ENABLED QRESYNC"], untagged
    await raw.command("SELECT qresync-uid")
    untagged, _ = await raw.command("FETCH 1:2 RFC822.SIZE")
    assert [re.match(rb"\* (\d) FETCH \(UID \d+ RFC822\.SIZE \d+\)$", line) is not None for line in untagged] == [
        True, True], untagged
    untagged, _ = await raw.command("STORE 1 +FLAGS (\\Seen)")
    assert next(line for line in untagged if b"FETCH" in line).startswith(b"* 1 FETCH (UID "), untagged
    untagged, _ = await raw.command("STORE 2 (UNCHANGEDSINCE 1000000) +FLAGS.SILENT (\\Seen)")
    assert re.match(rb"\* 2 FETCH \(UID \d+ MODSEQ \(\d+\)\)$", untagged[-1]), untagged
    # Without QRESYNC a FETCH by sequence number answers what was asked.
    plain = await login(imap)
    await plain.command("SELECT qresync-uid")
    untagged, _ = await plain.command("FETCH 1 RFC822.SIZE")
    assert re.match(rb"\* 1 FETCH \(RFC822\.SIZE \d+\)$", untagged[0]), untagged
    raw.writer.close()
    plain.writer.close()


async def test_permanentflags_lists_the_mailbox_keywords(imap: ImapHost) -> None:
    # RFC 9051 §7.1 PERMANENTFLAGS: the flags the client can change permanently. Every flag and
    # keyword of FLAGS can be, and \* says new keywords can be made; a new keyword joins both lists.
    raw = await login(imap)
    await raw.command("CREATE permanent")
    await _append_to(raw, "permanent", b"Subject: p\r\n\r\nbody\r\n")
    untagged, _ = await raw.command("SELECT permanent")
    flags = next(line for line in untagged if line.startswith(b"* FLAGS ("))[len(b"* FLAGS ("):-1].split()
    permanent = next(line for line in untagged if b"[PERMANENTFLAGS (" in line)
    listed = permanent.split(b"(", 1)[1].split(b")", 1)[0].split()
    assert set(listed) == {*flags, b"\\*"}, (flags, listed)
    assert b"$Forwarded" in listed
    untagged, _ = await raw.command("STORE 1 +FLAGS ($Project42)")
    permanent = next(line for line in untagged if b"[PERMANENTFLAGS (" in line)
    assert b"$Project42" in permanent and b"\\*" in permanent, untagged
    # EXAMINE: nothing can be changed.
    untagged, _ = await raw.command("EXAMINE permanent")
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox" in untagged, untagged
    raw.writer.close()


async def test_vanished_names_only_messages_the_session_knows(imap: ImapHost) -> None:
    # RFC 7162 §3.2.10: VANISHED (without EARLIER) lowers the client's message count per UID, so a
    # message the session was never told of (here: appended as \Deleted by another client between
    # this session's last report and its EXPUNGE) must not appear in it.
    from peerage.mail.mailbox import mailbox_owner, store_for
    from tests.imap.conftest import USER

    raw = await login(imap)
    await raw.command("CREATE vanished")
    for number in (1, 2):
        await _append_to(raw, "vanished", b"Subject: %d\r\n\r\nbody\r\n" % number)
    await raw.command("ENABLE QRESYNC")
    await raw.command("SELECT vanished")
    untagged, _ = await raw.command("UID FETCH 1:* FLAGS")
    known = sorted(int(m.group(1)) for line in untagged if (m := re.search(rb"UID (\d+)", line)))
    store = store_for(imap.host)
    mailbox = await store.get_mailbox(mailbox_owner(USER), "vanished")
    assert mailbox is not None
    real_expunge = store.expunge
    unseen: list[int] = []

    async def expunge_after_an_append(mailbox_id: int, uids: object = None) -> list[int]:
        # Another client's APPEND lands between the session's change report and its EXPUNGE.
        uid, _ = await store.append(mailbox.id, b"Subject: late\r\n\r\nbody\r\n", ("\\Deleted",))
        unseen.append(uid)
        return await real_expunge(mailbox_id, uids)  # type: ignore[arg-type]

    await raw.command(f"UID STORE {known[0]} +FLAGS (\\Deleted)")
    store.expunge = expunge_after_an_append  # type: ignore[method-assign]
    try:
        untagged, done = await raw.command("EXPUNGE")
    finally:
        store.expunge = real_expunge  # type: ignore[method-assign]
    assert b" OK " in done and unseen, (untagged, done)
    assert untagged == [b"* VANISHED %d" % known[0]], (untagged, unseen)
    # The session's count is right: one message left, and nothing more to report.
    untagged, _ = await raw.command("NOOP")
    assert not any(b"EXISTS" in line or b"VANISHED" in line for line in untagged), untagged
    untagged, _ = await raw.command("SEARCH RETURN (COUNT) ALL")
    assert untagged[-1].endswith(b"COUNT 1"), untagged
    raw.writer.close()


async def test_select_names_the_first_unseen_message_and_the_keywords_in_use(imap: ImapHost) -> None:
    # RFC 3501 §6.3.1: OK [UNSEEN n] gives the sequence number of the first message without \Seen;
    # RFC 9051 §7.1: FLAGS and PERMANENTFLAGS list the keywords messages of the mailbox carry.
    raw = await login(imap)
    await raw.command("CREATE unseenbox")
    for flags in (r"(\Seen)", r"(\Seen $Work)", "(Project)", "()", r"(\Seen \Flagged)"):
        data = b"Subject: u\r\n\r\nbody\r\n"
        raw.writer.write(b"a%d APPEND unseenbox %s {%d+}\r\n" % (raw.counter, flags.encode(), len(data)) + data + b"\r\n")
        await raw.writer.drain()
        while not (await asyncio.wait_for(raw.reader.readline(), 10)).startswith(b"a%d " % raw.counter):
            pass
        raw.counter += 1
    untagged, done = await raw.command("SELECT unseenbox")
    assert b" OK " in done, done
    assert b"* OK [UNSEEN 3] First unseen" in untagged, untagged
    flags_line = next(line for line in untagged if line.startswith(b"* FLAGS "))
    base = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft $Forwarded $Junk $NotJunk $MDNSent $Phishing"
    assert flags_line == b"* FLAGS (" + base + b" $Work Project)", flags_line
    # With the first two gone the first unseen is message 1; with every message seen, no UNSEEN.
    await raw.command("STORE 1:2 +FLAGS (\\Deleted)")
    await raw.command("EXPUNGE")
    untagged, _ = await raw.command("SELECT unseenbox")
    assert b"* OK [UNSEEN 1] First unseen" in untagged, untagged
    await raw.command("STORE 1:* +FLAGS (\\Seen)")
    untagged, _ = await raw.command("SELECT unseenbox")
    assert not any(b"[UNSEEN" in line for line in untagged), untagged
    assert b"* 3 EXISTS" in untagged, untagged
    # An empty mailbox: no messages, no UNSEEN, only the system flags.
    await raw.command("CREATE emptybox")
    untagged, _ = await raw.command("SELECT emptybox")
    assert b"* 0 EXISTS" in untagged and not any(b"[UNSEEN" in line for line in untagged), untagged
    assert b"* FLAGS (" + base + b")" in untagged, untagged
    raw.writer.close()


async def test_after_enable_imap4rev2_and_qresync_the_rev2_forms_are_answered(imap: ImapHost) -> None:
    # imaptest's imap4rev2 mode logs in with ENABLE QRESYNC and ENABLE IMAP4REV2 but runs the same
    # scripts as IMAP4rev1, which expect * SEARCH, * n EXPUNGE and \Recent. Once these are enabled
    # the RFCs ask for other forms: ESEARCH for SEARCH (RFC 9051 §6.4.4, §7.3.4), VANISHED instead of
    # EXPUNGE (RFC 7162 §3.2.10), and no \Recent flag or RECENT response (RFC 9051 Appendix E).
    raw = await login(imap)
    for extension in ("QRESYNC", "IMAP4REV2"):
        _, done = await raw.command(f"ENABLE {extension}")
        assert b" OK " in done, done
    for number in range(1, 4):
        await append(raw, b"Subject: rev2 %d\r\n\r\nbody\r\n" % number)
    untagged, _ = await raw.command("SELECT INBOX")
    assert b"* 3 EXISTS" in untagged, untagged
    assert not any(b"RECENT" in line for line in untagged), untagged
    untagged, _ = await raw.command("FETCH 1:* FLAGS")
    assert len(untagged) == 3 and not any(b"\\Recent" in line for line in untagged), untagged
    untagged, _ = await raw.command("SEARCH SUBJECT rev2")
    assert untagged == [b'* ESEARCH (TAG "x%d") ALL 1:3' % raw.counter], untagged
    await raw.command("STORE 2 +FLAGS.SILENT (\\Deleted)")
    untagged, _ = await raw.command("EXPUNGE")
    assert untagged == [b"* VANISHED 2"], untagged
    untagged, done = await raw.command("MOVE 1 Trash")
    assert b" OK " in done, done
    assert b"* VANISHED 1" in untagged and not any(line.endswith(b"EXPUNGE") for line in untagged), untagged
    raw.writer.close()


QP_MULTIPART = (
    b'From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\nsum=3D=4g\r\n"
    b"--b--\r\n"
)


def test_quoted_printable_loses_transport_whitespace_and_soft_line_breaks() -> None:
    # RFC 2045 §6.7: trailing white space is deleted (rule 3), "=" ending a line, even with white
    # space after it, joins it to the next (rule 5), "=XX" is an octet, a stray "=" stays.
    assert mime.decode_quoted_printable(b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\n") == b"hello\r\nbar\r\nfoo\tbar\r\n"
    assert mime.decode_quoted_printable(b"foo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\n") == b"foo\t \tb\r\nfoo bar\r\n"
    assert mime.decode_quoted_printable(b"sum=3D=4g\nend=\n") == b"sum==4g\nend"


async def test_fetch_binary_decodes_quoted_printable_and_gives_a_multipart_message_whole(imap: ImapHost) -> None:
    # RFC 3516 §4.2: BINARY undoes the section's Content-Transfer-Encoding; a multipart message has
    # none (RFC 2045 §6.4), so BINARY[] and BINARY.SIZE[] are the message as stored, not UNKNOWN-CTE.
    raw = await login(imap)
    await append(raw, QP_MULTIPART)
    await raw.command("SELECT INBOX")
    untagged, done = await raw.command("FETCH 1 (BINARY.SIZE[] BINARY.PEEK[])")
    assert b" OK " in done, done
    assert untagged == [b"* 1 FETCH (BINARY.SIZE[] %d BINARY[] {%d}\r\n" % (len(QP_MULTIPART), len(QP_MULTIPART))
                        + QP_MULTIPART + b")"], untagged
    # The CRLF before the closing delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    decoded = b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nsum==4g"
    untagged, _ = await raw.command("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert untagged == [b"* 1 FETCH (BINARY.SIZE[1] %d BINARY[1] {%d}\r\n" % (len(decoded), len(decoded))
                        + decoded + b")"], untagged
    raw.writer.close()


def test_a_literal8_is_marked_as_such() -> None:
    command = parse_command([b"a APPEND INBOX ~{3}", b"\x00\x01\x02", b""])
    assert isinstance(command.args[1], Literal8) and command.args[1] == b"\x00\x01\x02"
    command = parse_command([b"a APPEND INBOX {3}", b"abc", b""])
    assert not isinstance(command.args[1], Literal8)


async def test_append_of_a_literal8_keeps_the_octets_for_binary_and_body_without_nul(imap: ImapHost) -> None:
    # RFC 3516: APPEND takes a literal8, and BINARY[] gives the content back decoded. peerage stores
    # a binary part as base64, so BODY[1] is a valid IMAP string too (no NUL, RFC 9051 §9 CHAR8)
    # and BINARY[1] gives back the very octets sent, bare LF and all (imaptest's append-binary).
    raw = await login(imap)
    untagged, _ = await raw.command("CAPABILITY")
    assert b" BINARY " in untagged[0], untagged
    content = b"\x00-\xe4\n\r\n\n"
    data = (b"From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + content)
    line = await append(raw, b"")  # an empty message first, so the literal8 one is message 2
    assert b" OK " in line, line
    raw.writer.write(b"a%d APPEND INBOX ~{%d+}\r\n" % (raw.counter, len(data)) + data + b"\r\n")
    await raw.writer.drain()
    line = await asyncio.wait_for(raw.reader.readline(), 10)
    raw.counter += 1
    assert b"OK [APPENDUID" in line, line
    await raw.command("SELECT INBOX")
    untagged, _ = await raw.command("FETCH 2 (BINARY.SIZE[1] BINARY.PEEK[1])")
    assert untagged == [b"* 2 FETCH (BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n" + content + b")"], untagged
    untagged, _ = await raw.command("FETCH 2 BODY.PEEK[1]")
    assert untagged == [b"* 2 FETCH (BODY[1] {14}\r\nAC3kCg0KCg==\r\n)"], untagged
    untagged, _ = await raw.command("FETCH 2 BODY.PEEK[HEADER.FIELDS (CONTENT-TRANSFER-ENCODING)]")
    assert b"Content-Transfer-Encoding: base64\r\n" in untagged[0], untagged
    raw.writer.close()


def test_only_binary_parts_are_reencoded_as_base64() -> None:
    message = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
        b"hi\r\n--b\r\nContent-Transfer-Encoding:\r\n binary\r\nContent-Type: application/x\r\n\r\n\x00\x01\n"
        b"--b--\r\nepilogue\r\n"
    )
    stored = mime.binary_parts_to_base64(message)
    assert stored.startswith(message[: message.index(b"hi\r\n--b\r\n") + 9]) and stored.endswith(b"--b--\r\nepilogue\r\n")
    assert b"\x00" not in stored and b"Content-Type: application/x\r\nContent-Transfer-Encoding: base64\r\n\r\nAAE=\r\n" in stored
    # The LF before the close delimiter is the delimiter's (RFC 2046 §5.1.1), not content.
    assert mime.binary_section(stored, (2,)) == b"\x00\x01" and mime.binary_section(stored, (1,)) == b"hi"
    # Text that is neither labelled binary nor holds NUL is left alone.
    assert mime.binary_parts_to_base64(b"Subject: x\r\n\r\nline\n") == b"Subject: x\r\n\r\nline\n"
