"""WebFinger (RFC 7033), host-meta lrdd, NodeInfo 2.1 and the ActivityPub actor of an opted-in account."""

from __future__ import annotations

import pytest

from tests.harness.ca import TestCA
from tests.harness.server import PeerageServer
from tests.social.conftest import ALPHA, client

pytestmark = pytest.mark.timeout(240)  # includes the module's server starts, on a loaded CI machine
ALICE = f"alice@{ALPHA}"


@pytest.mark.parametrize("resource", [f"acct:{ALICE}", f"xmpp:{ALICE}", f"sip:{ALICE}", f"mailto:{ALICE}",
                                      f"https://{ALPHA}/users/alice"])
async def test_webfinger_finds_the_account_by_any_of_its_uris(alpha: PeerageServer, social_ca: TestCA,
                                                              resource: str) -> None:
    async with client(social_ca) as http, http.get(
            f"https://{ALPHA}/.well-known/webfinger", params={"resource": resource}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/jrd+json")
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        jrd = await response.json(content_type=None)
    assert jrd["subject"] == f"acct:{ALICE}"
    assert {f"xmpp:{ALICE}", f"sip:{ALICE}", f"mailto:{ALICE}", f"https://{ALPHA}/users/alice"} <= set(jrd["aliases"])
    links = {link["rel"]: link for link in jrd["links"]}
    assert links["self"] == {"rel": "self", "type": "application/activity+json", "href": f"https://{ALPHA}/users/alice"}
    assert links["http://webfinger.net/rel/profile-page"]["href"] == f"https://{ALPHA}/@alice"
    assert "{uri}" in links["http://ostatus.org/schema/1.0/subscribe"]["template"]


@pytest.mark.parametrize("resource", [f"acct:carol@{ALPHA}", f"acct:nobody@{ALPHA}", f"xmpp:carol@{ALPHA}",
                                      "acct:alice@elsewhere.test", "ftp://x"])
async def test_accounts_that_did_not_opt_in_are_not_found(alpha: PeerageServer, social_ca: TestCA,
                                                          resource: str) -> None:
    async with client(social_ca) as http:
        async with http.get(f"https://{ALPHA}/.well-known/webfinger", params={"resource": resource}) as response:
            assert response.status == 404
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(f"https://{ALPHA}/users/carol", headers={"Accept": "application/activity+json"}) as r:
            assert r.status == 404
        async with http.get(f"https://{ALPHA}/.well-known/webfinger") as response:
            assert response.status == 400


async def test_host_meta_lrdd_and_nodeinfo(alpha: PeerageServer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        async with http.get(f"https://{ALPHA}/.well-known/host-meta") as response:
            text = await response.text()
        assert f'rel="lrdd" template="https://{ALPHA}/.well-known/webfinger?resource={{uri}}"' in text
        async with http.get(f"https://{ALPHA}/.well-known/nodeinfo") as response:
            links = (await response.json())["links"]
        assert links[0]["rel"] == "http://nodeinfo.diaspora.software/ns/schema/2.1"
        async with http.get(links[0]["href"]) as response:
            info = await response.json(content_type=None)
    assert info["version"] == "2.1" and info["software"]["name"] == "peerage"
    assert info["protocols"] == ["activitypub"]
    assert info["usage"]["users"]["total"] == 1  # alice opted in, carol did not


async def test_the_actor_carries_key_addresses_and_collections(alpha: PeerageServer, social_ca: TestCA) -> None:
    async with client(social_ca) as http:
        async with http.get(f"https://{ALPHA}/users/alice", headers={"Accept": "application/activity+json"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/activity+json")
            actor = await r.json(content_type=None)
        async with http.get(f"https://{ALPHA}/users/alice", headers={"Accept": "text/html"}) as r:
            page = await r.text()
            assert r.headers["Content-Type"].startswith("text/html")
            assert "Content-Security-Policy" in r.headers
        for name in ("outbox", "followers", "following", "featured"):
            async with http.get(actor[name], headers={"Accept": "application/activity+json"}) as r:
                collection = await r.json(content_type=None)
                assert collection["type"] == "OrderedCollection" and collection["id"] == actor[name]
    url = f"https://{ALPHA}/users/alice"
    assert actor["id"] == url and actor["type"] == "Person" and actor["preferredUsername"] == "alice"
    assert actor["publicKey"]["id"] == f"{url}#main-key" and actor["publicKey"]["owner"] == url
    assert actor["publicKey"]["publicKeyPem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert actor["endpoints"]["sharedInbox"] == f"https://{ALPHA}/inbox"
    assert {f"xmpp:{ALICE}", f"sip:{ALICE}"} <= set(actor["alsoKnownAs"])
    fields = {f["name"]: f["value"] for f in actor["attachment"] if f["type"] == "PropertyValue"}
    assert f"xmpp:{ALICE}" in fields["XMPP"] and f"sip:{ALICE}" in fields["SIP"]
    assert f"xmpp:{ALICE}" in page


def test_the_signing_key_is_a_private_file(alpha: PeerageServer) -> None:
    keys = list((alpha.data_dir / "social" / "keys" / ALPHA / "alice").glob("*.pem"))
    assert keys, "alice's key file was not created"
    assert all(k.stat().st_mode & 0o077 == 0 for k in keys)
    assert (alpha.data_dir / "social" / "keys" / ALPHA / "alice").stat().st_mode & 0o077 == 0


async def test_key_rotation_reaches_the_running_server(alpha: PeerageServer, social_ca: TestCA) -> None:
    async def key_id() -> str:
        async with client(social_ca) as http, http.get(
                f"https://{ALPHA}/users/carol", headers={"Accept": "application/activity+json"}) as response:
            assert response.status == 200
            return str((await response.json(content_type=None))["publicKey"]["id"])

    from tests.harness.waiting import async_wait_for

    alpha.cli("social", "publish", f"carol@{ALPHA}")
    try:
        assert (await key_id()).endswith("#main-key")
        output = alpha.cli("social", "rotate-key", f"carol@{ALPHA}").stdout
        new_name = output.split("signs with key ")[1].split()[0]
        # The running server notices within its 5 s sweep; bounded generously for a loaded machine.
        await async_wait_for(lambda: _ends_with(key_id, f"#{new_name}"), 60, "the new key in carol's actor")
        assert len(list((alpha.data_dir / "social" / "keys" / ALPHA / "carol").glob("*.pem"))) == 2
    finally:
        alpha.cli("social", "unpublish", f"carol@{ALPHA}")


async def _ends_with(key_id: object, suffix: str) -> bool:
    return str(await key_id()).endswith(suffix)  # type: ignore[operator]
