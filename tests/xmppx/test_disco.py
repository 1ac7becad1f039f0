"""XEP-0030 items of the domain (the providers other modules register) and XEP-0157 contact addresses."""

from __future__ import annotations

from typing import Any

from tests.harness import PeerageServer
from tests.xmppx.conftest import ONE_ADDRESS, Client

SERVERINFO = "http://jabber.org/network/serverinfo"


def forms_of(info: Any) -> list[dict[str, list[str]]]:
    """The XEP-0128 forms of a disco#info result: var -> values."""
    forms = []
    for form in info.xml.iter("{jabber:x:data}x"):
        forms.append({field.get("var"): [value.text for value in field.iter("{jabber:x:data}value")]
                      for field in form.iter("{jabber:x:data}field")})
    return forms


async def test_contact_addresses_in_server_disco_info(one: PeerageServer, clients: list[Client]) -> None:
    client = await Client("alice@x1.test").login(ONE_ADDRESS)
    clients.append(client)
    info = await client.plugin["xep_0030"].get_info(jid="x2.test", timeout=10)
    serverinfo = [fields for fields in forms_of(info) if fields["FORM_TYPE"] == [SERVERINFO]]
    assert len(serverinfo) == 1
    fields = serverinfo[0]
    # Defaults follow the mail side's role addresses; "{domain}" becomes the domain asked.
    assert fields["abuse-addresses"] == ["mailto:abuse@x2.test"]
    assert fields["admin-addresses"] == ["mailto:postmaster@x2.test"]
    assert fields["support-addresses"] == ["xmpp:support@x2.test", "https://x2.test/help"]
    assert "security-addresses" not in fields  # empty lists are left out (XEP-0157 section 5)
    # A caps node query describes the feature set only, without the domain's forms.
    node_info = await client.plugin["xep_0030"].get_info(jid="x1.test", node="https://peerage.invalid/caps#x",
                                                         timeout=10)
    assert not forms_of(node_info)


async def test_domain_items_answer(one: PeerageServer, clients: list[Client]) -> None:
    client = await Client("bob@x1.test").login(ONE_ADDRESS)
    clients.append(client)
    items = await client.plugin["xep_0030"].get_items(jid="x1.test", timeout=10)
    # Registered by the upload module through Disco.add_items_provider, for each domain.
    assert ("upload.x1.test", None, "HTTP File Upload") in items["disco_items"]["items"]
    other = await client.plugin["xep_0030"].get_items(jid="x2.test", timeout=10)
    assert ("upload.x2.test", None, "HTTP File Upload") in other["disco_items"]["items"]
    assert ("upload.x1.test", None, "HTTP File Upload") not in other["disco_items"]["items"]
    # An account's items are its PEP nodes, not the domain's services.
    own = await client.plugin["xep_0030"].get_items(jid="bob@x1.test", timeout=10)
    assert all(jid.bare == "bob@x1.test" for jid, _, _ in own["disco_items"]["items"])
