"""What the inbox refuses, with the status Mastodon gives, and with nothing stored: forged signatures,
stale Dates, replays, oversized and deeply nested JSON, and activities from a blocked domain."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from peerage.social import keys, signatures
from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.harness.waiting import async_wait_for
from tests.social.conftest import ALPHA, BETA, PASSWORD, client

pytestmark = pytest.mark.timeout(240)  # includes the module's server starts, on a loaded CI machine
INBOX = f"https://{ALPHA}/users/alice/inbox"
BOB_URL = f"https://{BETA}/users/bob"


def bob_key(beta: PeerageServer) -> keys.AccountKey:
    key = keys.load(beta.data_dir, f"bob@{BETA}", "main-key")
    assert key is not None
    return key


def note(text: str = "hello") -> dict[str, Any]:
    token = secrets.token_hex(6)
    note_id = f"{BOB_URL}/statuses/{token}"
    return {"@context": "https://www.w3.org/ns/activitystreams", "id": f"{note_id}/activity", "type": "Create",
            "actor": BOB_URL, "to": [f"https://{ALPHA}/users/alice"],
            "object": {"id": note_id, "type": "Note", "attributedTo": BOB_URL, "content": text,
                       "to": [f"https://{ALPHA}/users/alice"]}}


async def post(social_ca: TestCA, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with client(social_ca) as http, http.post(
            INBOX, data=body, headers={"Content-Type": "application/activity+json", **headers}) as response:
        return response.status, await response.text()


async def alice_inbox(social_ca: TestCA) -> list[str]:
    auth = {"Authorization": f"Basic {__import__('base64').b64encode(f'alice@{ALPHA}:{PASSWORD}'.encode()).decode()}"}
    async with client(social_ca) as http, http.get(INBOX, headers={**auth, "Accept": "application/activity+json"}) as r:
        assert r.status == 200
        # Only what came from beta: the interop peers may still deliver to alice meanwhile.
        return [item["id"] for item in (await r.json(content_type=None))["orderedItems"]
                if str(item.get("id", "")).startswith(BOB_URL)]


@pytest.mark.parametrize("scheme", ["cavage", "rfc9421"])
async def test_a_well_signed_direct_note_is_accepted_once(alpha: PeerageServer, beta: PeerageServer,
                                                          social_ca: TestCA, scheme: str) -> None:
    key = bob_key(beta)
    activity = note(f"signed with {scheme}")
    body = json.dumps(activity).encode()
    sign = signatures.sign_cavage if scheme == "cavage" else signatures.sign_rfc9421
    status, text = await post(social_ca, body, sign("POST", INBOX, key.private_key, f"{BOB_URL}#main-key", body))
    assert status == 202, text
    assert activity["id"] in await alice_inbox(social_ca)
    # The same activity signed again later (a sender's retry): acknowledged, not stored twice. Within
    # the same second both schemes give the very same signature, which is a replay.
    await asyncio.sleep(1.1)
    status, _ = await post(social_ca, body, sign("POST", INBOX, key.private_key, f"{BOB_URL}#main-key", body))
    assert status == 202
    assert (await alice_inbox(social_ca)).count(activity["id"]) == 1


async def test_refusals(alpha: PeerageServer, beta: PeerageServer, social_ca: TestCA) -> None:
    key = bob_key(beta)
    key_id = f"{BOB_URL}#main-key"
    before = await alice_inbox(social_ca)

    # Unsigned.
    body = json.dumps(note()).encode()
    assert (await post(social_ca, body, {}))[0] == 401
    # Forged: signed by another key under bob's key id.
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (await post(social_ca, body, signatures.sign_cavage("POST", INBOX, forger, key_id, body)))[0] == 401
    assert (await post(social_ca, body, signatures.sign_rfc9421("POST", INBOX, forger, key_id, body)))[0] == 401
    # A body changed after signing (the Digest no longer matches).
    headers = signatures.sign_cavage("POST", INBOX, key.private_key, key_id, body)
    assert (await post(social_ca, body.replace(b"hello", b"HELLO"), headers))[0] == 401
    # Stale and future Dates, both schemes.
    for offset in (-7200, 7200):
        stale = json.dumps(note()).encode()
        for sign in (signatures.sign_cavage, signatures.sign_rfc9421):
            status, text = await post(social_ca, stale, sign("POST", INBOX, key.private_key, key_id, stale,
                                                             now=time.time() + offset))
            assert status == 401, text
    # A replay of one exact signed request (a different activity would be new; the same request is not).
    replayed = json.dumps(note("replayed")).encode()
    headers = signatures.sign_cavage("POST", INBOX, key.private_key, key_id, replayed)
    assert (await post(social_ca, replayed, headers))[0] == 202
    assert (await post(social_ca, replayed, headers))[0] == 401
    # Signed by bob, but claiming to be someone else.
    impostor = note()
    impostor["actor"] = f"https://{BETA}/users/someone-else"
    impostor_body = json.dumps(impostor).encode()
    assert (await post(social_ca, impostor_body, signatures.sign_cavage(
        "POST", INBOX, key.private_key, key_id, impostor_body)))[0] == 401
    # Oversized (over [social] max_activity_size, 1 MiB): refused before it is read.
    big = json.dumps(note("x" * 1_100_000)).encode()
    assert (await post(social_ca, big, signatures.sign_cavage("POST", INBOX, key.private_key, key_id, big)))[0] == 413
    # Nested deeper than [social] max_json_depth.
    deep_activity = note()
    nested: Any = "bottom"
    for _ in range(100):
        nested = [nested]
    deep_activity["object"]["deep"] = nested
    deep = json.dumps(deep_activity).encode()
    status, text = await post(social_ca, deep, signatures.sign_cavage("POST", INBOX, key.private_key, key_id, deep))
    assert status == 400 and "deeper" in text
    # An id longer than any URL column, and an activity whose object has the wrong shape.
    long_id = note()
    long_id["id"] = f"{BOB_URL}/{'x' * 2100}"
    long_body = json.dumps(long_id).encode()
    assert (await post(social_ca, long_body, signatures.sign_cavage(
        "POST", INBOX, key.private_key, key_id, long_body)))[0] == 400
    odd = note()
    odd["object"]["tag"] = "not-a-list"
    odd["object"]["to"] = 42
    odd_body = json.dumps(odd).encode()
    odd_status, _ = await post(social_ca, odd_body, signatures.sign_cavage(
        "POST", INBOX, key.private_key, key_id, odd_body))
    assert odd_status in (202, 400)  # read as far as it makes sense, or refused: never a 500
    # Not JSON.
    assert (await post(social_ca, b"{nope", signatures.sign_cavage("POST", INBOX, key.private_key, key_id,
                                                                   b"{nope")))[0] == 400

    after = await alice_inbox(social_ca)
    # Only the first copy of the "replayed" request (and the odd-shaped one, if it was accepted).
    assert len(after) == len(before) + 1 + (odd_status == 202)


async def test_a_blocked_domain_is_refused_live(alpha: PeerageServer, beta: PeerageServer,
                                                social_ca: TestCA) -> None:
    key = bob_key(beta)
    assert "blocked" in alpha.cli("social", "block", BETA).stdout
    try:
        assert BETA in alpha.cli("social", "blocks").stdout

        sent: list[str] = []

        async def refused() -> bool:
            activity = note("from a blocked domain")
            sent.append(activity["id"])
            body = json.dumps(activity).encode()
            status, _ = await post(social_ca, body, signatures.sign_cavage(
                "POST", INBOX, key.private_key, f"{BOB_URL}#main-key", body))
            return status == 403

        await async_wait_for(refused, 15, "the block to take effect on the running server")
        assert sent[-1] not in await alice_inbox(social_ca)  # the refused one left nothing
    finally:
        assert "unblocked" in alpha.cli("social", "unblock", BETA).stdout

    async def accepted() -> bool:
        body = json.dumps(note("after the unblock")).encode()
        status, _ = await post(social_ca, body, signatures.sign_cavage(
            "POST", INBOX, key.private_key, f"{BOB_URL}#main-key", body))
        return status == 202

    await async_wait_for(accepted, 15, "the unblock to take effect (later tests federate with beta)")
