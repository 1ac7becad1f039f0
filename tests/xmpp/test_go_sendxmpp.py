"""A non-Python client from Debian (go-sendxmpp) sends a message that a slixmpp client receives."""

from __future__ import annotations

import asyncio

from tests.harness import PeerageServer, require_binary
from tests.xmpp.conftest import PASSWORD, Client
from tests.xmpp.rawclient import RawClient

SERVER_ADDRESS = "127.0.1.5"
SERVER_USERS = ["alice@a.test", "bob@b.test"]
#: go-sendxmpp connects, authenticates, sends and disconnects in well under a second on loopback.
SEND_TIMEOUT = 30.0


async def _go_sendxmpp(*args: str, message: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        require_binary("go-sendxmpp"), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(message.encode()), SEND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def test_go_sendxmpp_starttls_message_reaches_slixmpp(xmpp_server: PeerageServer,
                                                            clients: list[Client]) -> None:
    bob = Client("bob@b.test/desk")
    clients.append(bob)
    await bob.login(SERVER_ADDRESS)
    code, output = await _go_sendxmpp("-u", "alice@a.test", "-p", PASSWORD, "-j", f"{SERVER_ADDRESS}:5222",
                                      "-n", "bob@b.test", message="hello from go-sendxmpp")
    assert code == 0, output
    message = await bob.next_message(timeout=15)
    assert message["body"].strip() == "hello from go-sendxmpp"
    assert message["from"].bare == "alice@a.test"


async def test_go_sendxmpp_direct_tls(xmpp_server: PeerageServer, clients: list[Client]) -> None:
    bob = Client("bob@b.test/desk2")
    clients.append(bob)
    await bob.login(SERVER_ADDRESS)
    code, output = await _go_sendxmpp("-t", "-u", "alice@a.test", "-p", PASSWORD, "-j", f"{SERVER_ADDRESS}:5223",
                                      "-n", "bob@b.test/desk2", message="over direct TLS")
    assert code == 0, output
    message = await bob.next_message(timeout=15)
    assert message["body"].strip() == "over direct TLS"


async def test_stanzas_sent_just_before_the_close_are_handled(xmpp_server: PeerageServer,
                                                             clients: list[Client]) -> None:
    """What go-sendxmpp does, in one write: initial presence (the server reads the offline queue, so
    the stanzas after it wait), three messages and ``</stream:stream>``. Every message was sent
    before the close, so every one is delivered, in order, and only then does the server close its
    side (RFC 6120 section 4.4)."""
    bob = Client("bob@b.test/desk3")
    clients.append(bob)
    await bob.login(SERVER_ADDRESS)
    for round_number in range(3):  # the close races the handling differently each time
        raw = RawClient(SERVER_ADDRESS, "a.test")
        await raw.login("alice", PASSWORD, resource=f"burst{round_number}")
        bodies = [f"burst {round_number}.{n}" for n in range(3)]
        await raw.send("<presence/>" + "".join(
            f"<message to='bob@b.test/desk3' type='chat' id='b{round_number}{n}'><body>{body}</body></message>"
            for n, body in enumerate(bodies)) + "</stream:stream>")
        closing = await raw.read_to_eof(timeout=30)
        await raw.close()
        assert "</stream:stream>" in closing, closing
        received = [(await bob.next_message(timeout=30))["body"] for _ in bodies]
        assert received == bodies
