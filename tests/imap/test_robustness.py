"""Bad input over a real connection: BAD answers, refused literals, garbage, and other sessions
unaffected."""

from __future__ import annotations

import asyncio
import imaplib
import os
import re
from pathlib import Path

from tests.harness import async_wait_for
from tests.imap.conftest import PASSWORD, USER, ImapHost


async def open_session(imap: ImapHost) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(imap.address, 993, ssl=imap.client_context())
    greeting = await asyncio.wait_for(reader.readline(), 10)
    assert greeting.startswith(b"* OK")
    writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    await writer.drain()
    await read_until_tagged(reader, b"a")
    return reader, writer


async def read_until_tagged(reader: asyncio.StreamReader, tag: bytes) -> list[bytes]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line, "connection closed"
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


async def test_malformed_commands_get_bad_and_session_survives(imap: ImapHost) -> None:
    reader, writer = await open_session(imap)
    for index, junk in enumerate([b"FETCH 1 (FLAGS", b'SELECT "INBOX', b"BOGUSCOMMAND x", b"SEARCH OR SEEN",
                                  b"STORE 1 +FLAGS (\\Nonsense)", b"SELECT INBOX (QRESYNC)"]):
        tag = f"j{index}".encode()
        writer.write(tag + b" " + junk + b"\r\n")
        await writer.drain()
        lines = await read_until_tagged(reader, tag)
        assert lines[-1].startswith(tag + b" BAD"), lines
    writer.write(b"ok NOOP\r\n")
    await writer.drain()
    assert (await read_until_tagged(reader, b"ok"))[-1].startswith(b"ok OK")
    writer.close()


async def test_oversized_append_is_refused_without_reading_it(imap: ImapHost) -> None:
    reader, writer = await open_session(imap)
    limit = imap.host.config.imap.append_limit
    writer.write(b"big APPEND INBOX {%d}\r\n" % (limit + 1))
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    assert line.startswith(b"big NO [TOOBIG]"), line
    # A non-synchronising one: the server skips the bytes and the session continues.
    writer.write(b"big2 APPEND INBOX {%d+}\r\n" % (limit + 1))
    writer.write(b"x" * (limit + 1) + b"\r\nafter NOOP\r\n")
    await writer.drain()
    lines = await read_until_tagged(reader, b"after")
    assert lines[0].startswith(b"big2 NO [TOOBIG]") and lines[-1].startswith(b"after OK")
    writer.close()


async def test_garbage_does_not_affect_other_sessions(imap: ImapHost) -> None:
    victim_reader, victim_writer = await open_session(imap)
    for _ in range(5):
        reader, writer = await asyncio.open_connection(imap.address, 993, ssl=imap.client_context())
        await reader.readline()
        writer.write(os.urandom(3000) + b"\r\n" + os.urandom(500))
        await writer.drain()
        writer.close()
    plain_reader, plain_writer = await asyncio.open_connection(imap.address, 143)
    await plain_reader.readline()
    plain_writer.write(b"\x16\x03\x01garbage\r\n" * 30)
    await plain_writer.drain()
    # The server gives up on a client that sends only invalid commands.
    data = await asyncio.wait_for(plain_reader.read(), 10)
    assert b"BYE" in data
    victim_writer.write(b"v SELECT INBOX\r\n")
    await victim_writer.drain()
    assert (await read_until_tagged(victim_reader, b"v"))[-1].startswith(b"v OK")
    victim_writer.close()

    def still_serving() -> str:
        client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=10)
        typ, _ = client.login(USER, PASSWORD)
        client.logout()
        return typ

    assert await asyncio.to_thread(still_serving) == "OK"


_COMMANDS = ["FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH", "COPY", "MOVE", "UID MOVE",
             "EXPUNGE", "SELECT", "EXAMINE", "STATUS", "LIST", "SORT", "THREAD", "NOOP", "CREATE", "DELETE",
             "RENAME", "UNSELECT", "CLOSE", "APPEND", "ENABLE", "ID", "NAMESPACE", "CHECK", "LSUB", "IDLE"]
_ARGUMENTS = ["1", "1:*", "*", "2:3", "$", "INBOX", "Trash", '""', '"*"', "%", "(FLAGS)", "(BODY[])",
              "(BODY.PEEK[1.2.MIME])", "(BINARY[1])", "(BINARY.SIZE[2])", "(BODYSTRUCTURE ENVELOPE)", "+FLAGS",
              "-FLAGS.SILENT", "(\\Seen)", "(\\Deleted)", "ALL", "TEXT", "hello", "OR", "NOT", "UID", "(SUBJECT)",
              "UTF-8", "REFERENCES", "(MESSAGES UNSEEN)", "(CHANGEDSINCE 1)", "(UNCHANGEDSINCE 1)", "RETURN",
              "(SAVE)", "(MIN MAX)", "CONDSTORE", "QRESYNC", "IMAP4rev2", "(QRESYNC (1 1))", "NIL", "SINCE",
              "1-Jan-2020", "HEADER", "X"]
# Random commands per run: enough to reach every handler with odd arguments, bounded for CI time.
FUZZ_COMMANDS = 400


async def test_random_commands_never_hit_an_internal_error(imap: ImapHost) -> None:
    import random

    from tests.imap.test_extensions import Raw, append, login

    rng = random.Random(20261125)
    raw: Raw = await login(imap)
    for number in range(5):
        await append(raw, (
            f"Subject: s{number}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n"
        ).encode())
    answers = 0
    for _ in range(FUZZ_COMMANDS):
        command = rng.choice(_COMMANDS) + " " + " ".join(rng.choice(_ARGUMENTS) for _ in range(rng.randint(0, 4)))
        if command.startswith("IDLE"):
            raw.writer.write(b"i IDLE\r\n")
            await raw.writer.drain()
            assert (await asyncio.wait_for(raw.reader.readline(), 10)).startswith(b"+")
            raw.writer.write(b"DONE\r\n")
            await raw.writer.drain()
            while not (await asyncio.wait_for(raw.reader.readline(), 10)).startswith(b"i "):
                pass
            continue
        try:
            _, done = await raw.command(command)
        except AssertionError:  # closed after too many invalid commands in a row
            raw = await login(imap)
            continue
        answers += 1
        assert b"SERVERBUG" not in done, (command, done)
        assert re.match(rb"x\d+ (OK|NO|BAD)", done), (command, done)
    assert answers > FUZZ_COMMANDS // 2
    raw.writer.close()


async def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    from tests.imap.conftest import start_host, stop_host

    imap = await start_host(tmp_path, {"limits": {"connections_per_ip": 3}})
    opened = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(imap.address, 143)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"* OK")
            opened.append(writer)
        reader, writer = await asyncio.open_connection(imap.address, 143)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"* BYE")
        writer.close()
        opened.pop().close()

        async def admitted() -> bool:
            reader, writer = await asyncio.open_connection(imap.address, 143)
            line = await asyncio.wait_for(reader.readline(), 10)
            if line.startswith(b"* OK"):
                opened.append(writer)
                return True
            writer.close()
            return False

        await async_wait_for(admitted, timeout=10)
    finally:
        for writer in opened:
            writer.close()
        await stop_host(imap)
