# imaplib's stubs type every response as a union of bytes, tuples and None; the tests index them.
# mypy: disable-error-code="assignment,operator,attr-defined,index,union-attr,return-value,arg-type"
"""IMAPClient (PyPI) against the IMAP service: SCRAM-SHA-256 and PLAIN, IDLE woken by local delivery
and by another session, CONDSTORE and QRESYNC resynchronisation after a parallel session's changes."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import threading
import time

from imapclient import IMAPClient

from peerage.identity.scram import scram_client_proof
from peerage.mail.mailbox import deliver
from tests.harness import async_wait_for
from tests.imap.conftest import PASSWORD, USER, ImapHost


def message(number: int) -> bytes:
    return (
        f"From: dave@example.net\r\nTo: alice@example.org\r\nSubject: note {number}\r\n"
        f"Message-ID: <n{number}@example.net>\r\n\r\nText {number}\r\n"
    ).encode()


def connect(imap: ImapHost) -> IMAPClient:
    client = IMAPClient(imap.address, port=993, ssl=True, ssl_context=imap.client_context(), timeout=20)
    client.login(USER, PASSWORD)
    return client


async def test_authenticate_scram_sha_256_and_plain(imap: ImapHost) -> None:
    def run() -> None:
        client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
        state: dict[str, bytes] = {}
        nonce = base64.b64encode(b"client-nonce-123").decode()

        def step(challenge: bytes) -> bytes:
            if "first" not in state:
                state["first"] = f"n={USER},r={nonce}".encode()
                return b"n,," + state["first"]
            if "server_first" not in state:
                state["server_first"] = challenge
                fields = dict(item.split("=", 1) for item in challenge.decode().split(","))
                without_proof = f"c=biws,r={fields['r']}".encode()
                auth_message = state["first"] + b"," + challenge + b"," + without_proof
                proof, signature = scram_client_proof(
                    "SHA-256", PASSWORD, base64.b64decode(fields["s"]), int(fields["i"]), auth_message
                )
                state["signature"] = b"v=" + base64.b64encode(signature)
                return without_proof + b",p=" + base64.b64encode(proof)
            assert challenge == state["signature"], "server signature does not verify"
            state["verified"] = b"yes"
            return b""

        typ, _ = client.authenticate("SCRAM-SHA-256", step)
        assert typ == "OK"
        assert state.get("verified") == b"yes"
        client.logout()

        plain = IMAPClient(imap.address, port=993, ssl=True, ssl_context=imap.client_context(), timeout=20)
        plain.plain_login(USER, PASSWORD)
        assert plain.list_folders()
        plain.logout()

        bad = IMAPClient(imap.address, port=993, ssl=True, ssl_context=imap.client_context(), timeout=20)
        try:
            bad.plain_login(USER, "not the password")
            raise AssertionError("a wrong PLAIN password was accepted")
        except Exception as exc:  # IMAPClient raises LoginError
            assert "AUTHENTICATIONFAILED" in str(exc) or "failed" in str(exc).lower()
        bad.shutdown()

    await asyncio.to_thread(run)


def scram_exchange(user: str, password: str, gs2_header: bytes, binding: bytes) -> tuple[object, dict[str, bytes]]:
    """An imaplib authenticate() callback running the client side of SCRAM-SHA-256(-PLUS)."""
    state: dict[str, bytes] = {}
    nonce = base64.b64encode(b"client-nonce-456").decode()

    def step(challenge: bytes) -> bytes:
        if "first" not in state:
            state["first"] = f"n={user},r={nonce}".encode()
            return gs2_header + state["first"]
        if "signature" not in state:
            fields = dict(item.split("=", 1) for item in challenge.decode().split(","))
            channel = base64.b64encode(gs2_header + binding).decode()
            without_proof = f"c={channel},r={fields['r']}".encode()
            auth_message = state["first"] + b"," + challenge + b"," + without_proof
            proof, signature = scram_client_proof(
                "SHA-256", password, base64.b64decode(fields["s"]), int(fields["i"]), auth_message
            )
            state["signature"] = b"v=" + base64.b64encode(signature)
            return without_proof + b",p=" + base64.b64encode(proof)
        state["verified"] = b"yes" if challenge == state["signature"] else b"no"
        return b""

    return step, state


async def test_authenticate_scram_sha_256_plus_with_tls_exporter(imap: ImapHost) -> None:
    from peerage.net.tls import tls_exporter

    def run() -> None:
        client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
        # Not listed by default ([auth] mail_advertise_plus), still accepted: see tests/auth.
        assert "AUTH=SCRAM-SHA-256-PLUS" not in client.capabilities
        binding = tls_exporter(client.sock)
        assert binding is not None
        step, state = scram_exchange(USER, PASSWORD, b"p=tls-exporter,,", binding)
        typ, _ = client.authenticate("SCRAM-SHA-256-PLUS", step)
        assert typ == "OK" and state["verified"] == b"yes"
        client.logout()

        # Wrong binding data (as a man in the middle would have) is refused.
        client = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
        step, state = scram_exchange(USER, PASSWORD, b"p=tls-exporter,,", b"\0" * 32)
        try:
            client.authenticate("SCRAM-SHA-256-PLUS", step)
            raise AssertionError("a wrong channel binding was accepted")
        except imaplib.IMAP4.error as exc:
            assert "AUTHENTICATIONFAILED" in str(exc)
        client.shutdown()

    await asyncio.to_thread(run)


async def test_special_use_and_namespace(imap: ImapHost) -> None:
    def run() -> None:
        client = connect(imap)
        caps = client.capabilities()
        for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"ESEARCH",
                    b"SORT", b"THREAD=REFERENCES", b"NAMESPACE", b"ENABLE", b"UNSELECT", b"LITERAL+"):
            assert cap in caps, cap
        uses = {name: flags for flags, _, name in client.list_folders()}
        assert b"\\Sent" in uses["Sent"] and b"\\Trash" in uses["Trash"] and b"\\Junk" in uses["Junk"]
        assert client.find_special_folder(b"\\Drafts") == "Drafts"
        namespace = client.namespace()
        assert namespace.personal[0][1] == "/"
        client.create_folder("Projects/2026")
        names = [name for _, _, name in client.list_folders()]
        assert "Projects" in names and "Projects/2026" in names
        client.rename_folder("Projects/2026", "Projects/Done")
        assert "Projects/Done" in [name for _, _, name in client.list_folders()]
        client.logout()

    await asyncio.to_thread(run)


async def test_idle_sees_local_delivery_and_other_sessions(imap: ImapHost) -> None:
    idle_started = threading.Event()
    seen: list[object] = []
    done = threading.Event()

    def idler() -> None:
        client = connect(imap)
        client.select_folder("INBOX")
        client.idle()
        idle_started.set()
        # Until both EXISTS and a FETCH came, within a bound of the clock: the other session logs in
        # and works meanwhile, which takes its time on a loaded machine.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                len([r for r in seen if r[1] == b"EXISTS"]) >= 2 and any(r[1] == b"FETCH" for r in seen)):
            seen.extend(client.idle_check(timeout=0.5))
        client.idle_done()
        client.logout()
        done.set()

    thread = threading.Thread(target=idler)
    thread.start()
    try:
        await async_wait_for(idle_started.is_set, timeout=30)
        uid = await deliver(imap.host, USER, message(1))
        assert uid == 1
        await async_wait_for(lambda: any(r[1] == b"EXISTS" for r in seen), timeout=30)

        def other() -> None:
            client = connect(imap)
            client.append("INBOX", message(2))
            client.select_folder("INBOX")
            client.add_flags([1], [b"\\Flagged"])
            client.logout()

        await asyncio.to_thread(other)
        await async_wait_for(done.is_set, timeout=70)
    finally:
        thread.join(timeout=70)
    exists = [r for r in seen if r[1] == b"EXISTS"]
    assert [r[0] for r in exists] == [1, 2]
    fetches = [r for r in seen if r[1] == b"FETCH"]
    assert fetches
    items = fetches[0][2]
    flags = dict(zip(items[::2], items[1::2], strict=True))[b"FLAGS"]
    assert b"\\Flagged" in flags


async def test_condstore_and_qresync_resync(imap: ImapHost) -> None:
    def run() -> None:
        client = connect(imap)
        for number in range(1, 11):
            client.append("INBOX", message(number))
        client.enable("QRESYNC")
        info = client.select_folder("INBOX")
        uidvalidity = info[b"UIDVALIDITY"]
        modseq = info[b"HIGHESTMODSEQ"]
        client.logout()

        other = connect(imap)
        other.select_folder("INBOX")
        other.add_flags([2, 3], [b"\\Seen"])
        other.delete_messages([5])
        other.expunge()
        other.append("INBOX", message(11))
        other.logout()

        client = connect(imap)
        client.enable("CONDSTORE")
        client.select_folder("INBOX")
        changed = client.fetch(list(range(1, 12)), ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
        uids_changed = sorted(changed)
        assert uids_changed == [2, 3, 11], uids_changed
        assert all(b"MODSEQ" in data for data in changed.values())
        client.logout()

        # QRESYNC: SELECT with the old state reports VANISHED (EARLIER) and the changed flags
        raw = imaplib.IMAP4_SSL(imap.address, 993, ssl_context=imap.client_context(), timeout=20)
        raw.login(USER, PASSWORD)
        raw._simple_command("ENABLE", "QRESYNC")
        typ, _ = raw._simple_command(
            "SELECT", "INBOX", f"(QRESYNC ({uidvalidity} {modseq} 1:10))"
        )
        assert typ == "OK"
        raw.state = "SELECTED"
        vanished = raw.untagged_responses.get("VANISHED")
        assert vanished == [b"(EARLIER) 5"], vanished
        fetched = b" ".join(f for f in raw.untagged_responses.get("FETCH", []) if isinstance(f, bytes))
        assert b"UID 2 " in fetched and b"UID 3 " in fetched and b"\\Seen" in fetched
        # UNCHANGEDSINCE with the old mod-sequence fails for the messages changed since (seq 2, 3)
        typ, data = raw._simple_command(
            "STORE", "1:3", f"(UNCHANGEDSINCE {modseq})", "+FLAGS", "(\\Answered)"
        )
        assert typ == "OK"
        assert data == [b"[MODIFIED 2:3] Conditional STORE failed"], data
        typ, data = raw.fetch("1:3", "(FLAGS)")
        answered = [line for line in data if b"\\Answered" in line]
        assert answered and all(line.startswith(b"1 ") for line in answered), answered
        raw.logout()

    await asyncio.to_thread(run)
