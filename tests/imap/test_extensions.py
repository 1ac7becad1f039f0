"""Extensions over a raw TLS connection, answer by answer: ENABLE IMAP4rev2, ID, UIDPLUS, ESEARCH,
SORT, THREAD=REFERENCES, UNSELECT, LITERAL+, APPENDLIMIT, STATUS and CONDSTORE's STORE."""

from __future__ import annotations

import asyncio
import re

from tests.imap.conftest import PASSWORD, USER, ImapHost


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    async def command(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        self.counter += 1
        tag = f"x{self.counter}".encode()
        data = text.encode() if isinstance(text, str) else text
        self.writer.write(tag + b" " + data + b"\r\n")
        await self.writer.drain()
        untagged: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line, "connection closed"
            match = re.search(rb"\{(\d+)\}\r\n$", line)
            if match:
                line += await asyncio.wait_for(self.reader.readexactly(int(match.group(1))), 10)
                line += await asyncio.wait_for(self.reader.readline(), 10)
            if line.startswith(tag + b" "):
                return untagged, line.rstrip()
            untagged.append(line.rstrip())


async def login(imap: ImapHost) -> Raw:
    reader, writer = await asyncio.open_connection(imap.address, 993, ssl=imap.client_context())
    await reader.readline()
    raw = Raw(reader, writer)
    _, done = await raw.command(f'LOGIN {USER} "{PASSWORD}"')
    assert b"OK" in done
    return raw


def message(subject: str, message_id: str, references: str = "", date: str = "01 Nov 2026 10:00:00") -> bytes:
    extra = f"References: {references}\r\nIn-Reply-To: {references.split()[-1]}\r\n" if references else ""
    return (
        f"From: {subject[0].lower()}@example.net\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        f"Date: Sun, {date} +0000\r\n{extra}\r\nhello\r\n"
    ).encode()


async def append(raw: Raw, data: bytes) -> bytes:
    raw.writer.write(b"a%d APPEND INBOX {%d+}\r\n" % (raw.counter, len(data)) + data + b"\r\n")
    await raw.writer.drain()
    while True:
        line = await asyncio.wait_for(raw.reader.readline(), 10)
        if line.startswith(b"a%d " % raw.counter):
            raw.counter += 1
            return line


async def test_enable_imap4rev2_uidplus_and_esearch(imap: ImapHost) -> None:
    raw = await login(imap)
    untagged, done = await raw.command("ENABLE IMAP4rev2")
    assert untagged == [b"* ENABLED IMAP4rev2"]
    untagged, done = await raw.command('ID ("name" "test")')
    assert untagged[0].startswith(b'* ID ("name" "peerage"')
    for number in range(1, 6):
        line = await append(raw, message(f"Topic {number}", f"<t{number}@x>"))
        assert re.match(rb"a\d+ OK \[APPENDUID \d+ %d\]" % number, line), line
    untagged, done = await raw.command("SELECT INBOX")
    assert b"* 5 EXISTS" in untagged and not any(b"RECENT" in line for line in untagged)
    assert any(line.startswith(b"* LIST () \"/\" INBOX") for line in untagged), untagged
    untagged, done = await raw.command("SEARCH RETURN (MIN MAX COUNT) FROM t")
    assert untagged == [b'* ESEARCH (TAG "x%d") MIN 1 MAX 5 COUNT 5' % raw.counter]
    untagged, done = await raw.command("UID SEARCH SUBJECT \"topic 3\"")
    assert untagged == [b'* ESEARCH (TAG "x%d") UID ALL 3' % raw.counter]
    untagged, done = await raw.command('SEARCH RETURN (SAVE) OR SUBJECT "topic 2" SUBJECT "topic 5"')
    assert untagged == [] and b"OK" in done
    untagged, done = await raw.command("FETCH $ (UID)")
    assert untagged == [b"* 2 FETCH (UID 2)", b"* 5 FETCH (UID 5)"]
    untagged, done = await raw.command("UID SEARCH RETURN (COUNT) $")
    assert untagged == [b'* ESEARCH (TAG "x%d") UID COUNT 2' % raw.counter]
    untagged, done = await raw.command("UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    assert untagged == []
    untagged, done = await raw.command("UID EXPUNGE 4")
    assert untagged == [b"* 4 EXPUNGE"]
    untagged, done = await raw.command("UID COPY 1:3 Trash")
    assert re.search(rb"\[COPYUID \d+ 1:3 1:3\]", done), done
    untagged, done = await raw.command("STATUS INBOX (MESSAGES UIDNEXT UNSEEN DELETED SIZE HIGHESTMODSEQ)")
    assert re.match(rb"\* STATUS INBOX \(MESSAGES 4 UIDNEXT 6 UNSEEN 4 DELETED 1 SIZE \d+ HIGHESTMODSEQ \d+\)",
                    untagged[0]), untagged
    untagged, done = await raw.command("UNSELECT")
    assert done.endswith(b"OK UNSELECT completed")
    untagged, done = await raw.command("FETCH 1 FLAGS")
    assert b"BAD" in done
    raw.writer.close()


async def test_sort_and_thread_references(imap: ImapHost) -> None:
    raw = await login(imap)
    await append(raw, message("Banana", "<a@x>", date="01 Nov 2026 10:00:00"))
    await append(raw, message("Re: Banana", "<b@x>", "<a@x>", date="01 Nov 2026 11:00:00"))
    await append(raw, message("Apple", "<c@x>", date="01 Nov 2026 09:00:00"))
    await append(raw, message("Re: Re: Banana", "<d@x>", "<a@x> <b@x>", date="01 Nov 2026 12:00:00"))
    await append(raw, message("Re: Banana", "<e@x>", "<a@x>", date="01 Nov 2026 13:00:00"))
    await raw.command("SELECT INBOX")
    untagged, _ = await raw.command("SORT (SUBJECT DATE) UTF-8 ALL")
    assert untagged == [b"* SORT 3 1 2 4 5"]
    untagged, _ = await raw.command("SORT (REVERSE DATE) UTF-8 ALL")
    assert untagged == [b"* SORT 5 4 2 1 3"]
    untagged, _ = await raw.command("UID SORT (SIZE) UTF-8 SUBJECT apple")
    assert untagged == [b"* SORT 3"]
    untagged, _ = await raw.command("THREAD REFERENCES UTF-8 ALL")
    assert untagged == [b"* THREAD (3)(1 (2 4)(5))"], untagged
    # A reply without References joins its thread by base subject (RFC 5256 step 5).
    await append(raw, message("Re: Apple", "<f@x>", date="01 Nov 2026 14:00:00"))
    await raw.command("NOOP")
    untagged, _ = await raw.command("UID THREAD REFERENCES UTF-8 ALL")
    assert untagged == [b"* THREAD (3 6)(1 (2 4)(5))"], untagged
    _, done = await raw.command("SORT (BOGUS) UTF-8 ALL")
    assert b"BAD" in done
    raw.writer.close()


async def test_literal_plus_appendlimit_and_conditional_store(imap: ImapHost) -> None:
    raw = await login(imap)
    untagged, _ = await raw.command("CAPABILITY")
    limit = imap.host.config.imap.append_limit
    assert b"APPENDLIMIT=%d" % limit in untagged[0] and b"LITERAL+" in untagged[0]
    # LITERAL+ inside a command other than APPEND
    untagged, done = await raw.command(b"CREATE {6+}\r\nFolder")
    assert done.endswith(b"OK CREATE completed")
    untagged, done = await raw.command("LIST \"\" \"Fol*\"")
    assert untagged == [b'* LIST (\\HasNoChildren) "/" Folder']
    await append(raw, message("One", "<1@x>"))
    untagged, _ = await raw.command("SELECT INBOX (CONDSTORE)")
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(untagged)).group(1))  # type: ignore[union-attr]
    untagged, done = await raw.command(f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Seen)")
    # This IMAP4rev1 session selected INBOX first after the APPEND: the message is \Recent here.
    assert untagged == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % (modseq + 1)]
    untagged, done = await raw.command(f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert done.endswith(b"OK [MODIFIED 1] Conditional STORE failed")
    untagged, _ = await raw.command(f"FETCH 1 (FLAGS) (CHANGEDSINCE {modseq})")
    assert untagged == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % (modseq + 1)]
    untagged, _ = await raw.command(f"SEARCH MODSEQ {modseq + 1}")
    assert untagged == [b"* SEARCH 1 (MODSEQ %d)" % (modseq + 1)]
    raw.writer.close()


async def test_compress_deflate(imap: ImapHost) -> None:
    import zlib

    raw = await login(imap)
    untagged, _ = await raw.command("CAPABILITY")
    assert b"COMPRESS=DEFLATE" in untagged[0]
    _, done = await raw.command("COMPRESS DEFLATE")
    assert done.endswith(b"OK DEFLATE active")
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    decompressor = zlib.decompressobj(-15)
    body = b"Subject: squeezed\r\n\r\n" + b"compressible text " * 500 + b"\r\n"
    wire = b"c1 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\nc2 SELECT INBOX\r\nc3 FETCH 1 (BODY[])\r\n"
    raw.writer.write(compressor.compress(wire) + compressor.flush(zlib.Z_SYNC_FLUSH))
    await raw.writer.drain()
    received = b""
    while b"\r\nc3 " not in received:
        chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
        assert chunk, "connection closed"
        received += decompressor.decompress(chunk)
    assert b"c1 OK [APPENDUID" in received and b"c2 OK [READ-WRITE]" in received
    assert body in received
    raw.writer.close()


async def test_mailbox_names_utf8_in_rev2_and_modified_utf7_in_rev1(imap: ImapHost) -> None:
    rev2 = await login(imap)
    await rev2.command("ENABLE IMAP4rev2")
    _, done = await rev2.command('CREATE "Entwürfe/Ärger"'.encode())
    assert b"OK" in done
    untagged, _ = await rev2.command('LIST "" "Entw*"')
    assert untagged == ['* LIST (\\HasChildren) "/" "Entwürfe"'.encode(),
                        '* LIST (\\HasNoChildren) "/" "Entwürfe/Ärger"'.encode()]
    rev1 = await login(imap)
    untagged, _ = await rev1.command('LIST "" "Entw*"')
    assert untagged == [b'* LIST (\\HasChildren) "/" Entw&APw-rfe',
                        b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/&AMQ-rger']
    untagged, done = await rev1.command("SELECT Entw&APw-rfe/&AMQ-rger")
    assert b"OK [READ-WRITE]" in done
    rev1.writer.close()
    rev2.writer.close()
