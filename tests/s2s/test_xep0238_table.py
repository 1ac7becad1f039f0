"""XEP-0238 section 3 "Connection Success", reproduced cell for cell with real peerage servers.

Six servers are configured as the XEP's service Types 1 to 6 (policy and certificate kind from its
section 2 table; Type 1 speaks only pre-1.0 dialback). The diagonal ("Type N to Type N" is, in the
XEP, typeN.lit to example.lit of the same type) uses a second server of the same type. For each of
the 36 ordered pairs a user on the initiating domain sends a ping iq to a user on the receiving
domain; both servers' reported level for that connection must equal the table's cell.
"""

from __future__ import annotations

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import FEDERATION_TIMEOUT, Federation, best_level, login
from tests.s2s.xep0238 import EXPECTED, TYPES, format_matrix

pytestmark = pytest.mark.slow


def domain(service_type: int, twin: bool = False) -> str:
    return f"{'twin' if twin else 'type'}{service_type}.lit"


@pytest.fixture(scope="module")
def typed_servers(federation: Federation):
    servers = {}
    for service_type, (level, certificate, legacy) in TYPES.items():
        kind = "ca" if certificate.value == "ca-issued" else "self"
        for twin in (False, True):
            address = f"127.0.2.{(20 if twin else 10) + service_type}"
            servers[(service_type, twin)] = federation.server(
                domain(service_type, twin), address, level=level, certificate=kind, legacy=legacy)
    federation.start_all(list(servers.values()))
    return servers


async def test_connection_success_table(typed_servers) -> None:
    clients = {t: await login(typed_servers[(t, False)], f"user@{domain(t)}") for t in TYPES}
    try:
        for initiator in TYPES:
            for receiver in TYPES:
                target = domain(receiver, twin=initiator == receiver)
                await clients[initiator].send(
                    f"<iq type='get' id='ping-{initiator}-{receiver}' to='user@{target}'>"
                    "<ping xmlns='urn:xmpp:ping'/></iq>")

        def cell(initiator: int, receiver: int) -> tuple[str | None, str | None]:
            source = typed_servers[(initiator, False)]
            sink = typed_servers[(receiver, initiator == receiver)]
            return (best_level(source, "out", domain(receiver, initiator == receiver)),
                    best_level(sink, "in", domain(initiator)))

        def settled() -> bool:
            return all(None not in cell(i, r) for i in TYPES for r in TYPES)

        await async_wait_for(settled, FEDERATION_TIMEOUT * 2, "every connection attempt to finish")
        initiator_view = {(i, r): cell(i, r)[0] or "?" for i in TYPES for r in TYPES}
        receiver_view = {(i, r): cell(i, r)[1] or "?" for i in TYPES for r in TYPES}
        print("\nXEP-0238 connection success, as the initiating servers report it:\n"
              + format_matrix(initiator_view))
        print("as the receiving servers report it:\n" + format_matrix(receiver_view))
        assert initiator_view == EXPECTED
        assert receiver_view == EXPECTED
    finally:
        for client in clients.values():
            await client.close()
