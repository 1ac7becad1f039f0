"""Outages: the remote server stops; stanzas queue, then arrive once it is back, or come back to the
sender as errors after the bound. Every stanza is counted: none lost, none duplicated."""

from __future__ import annotations

import re

import pytest

from tests.harness import async_wait_for
from tests.s2s.helpers import Federation, login, read_stanza, records, status

pytestmark = pytest.mark.slow

#: Seconds a stanza may wait for its connection ([xmpp.federation] connect_timeout in these tests).
#: Phase 1 needs the remote's restart to fit in it: a restart took 20 s on a busy machine, and an
#: 8 s bound bounced the queue before the remote came back.
BOUND = 30.0


@pytest.fixture(scope="module")
def pair(federation: Federation):
    sender = federation.server("home.s2s.test", "127.0.2.41", level="verified", users=("ann",),
                               federation={"connect_timeout": BOUND})
    remote = federation.server("away.s2s.test", "127.0.2.42", level="verified", users=("ben",),
                               federation={"connect_timeout": BOUND})
    federation.start_all([sender, remote])
    return sender, remote


async def test_queued_stanzas_arrive_after_restart_or_bounce_after_the_bound(pair) -> None:
    sender, remote = pair
    ann = await login(sender, "ann@home.s2s.test")
    try:
        # Establish the connection, then take the remote down.
        ben = await login(remote, "ben@away.s2s.test")
        await ann.send("<message to='ben@away.s2s.test' id='warm'><body>warm-up</body></message>")
        await read_stanza(ben, r"<message[^>]*id='warm'.*?</message>")
        await ben.close()
        remote.stop()

        # Phase 1: the remote comes back within the bound; every queued message arrives once.
        first = [f"q{i}" for i in range(20)]
        for stanza_id in first:
            await ann.send(f"<message to='ben@away.s2s.test' id='{stanza_id}'><body>{stanza_id}</body></message>")
        remote.start()
        # Ben logs in once the 20 stanzas are stored for him (the remote counts an inbound stanza
        # once it is delivered or stored), so the test does not depend on login/delivery timing.
        await async_wait_for(lambda: sum(r["stanzas"] for r in records(remote, "in", "home.s2s.test")) >= 20,
                             BOUND * 3, "the queued stanzas to reach the restarted server")
        ben = await login(remote, "ben@away.s2s.test")
        received = await read_stanza(ben, r"<message[^>]*id='q19'.*?</message>", timeout=BOUND * 3)
        await ben.send("<message to='ben@away.s2s.test' id='end1'><body>end</body></message>")
        received += await read_stanza(ben, r"<message[^>]*id='end1'.*?</message>")
        ids = re.findall(r"<message[^>]*id='(q\d+)'", received)
        assert sorted(ids, key=lambda s: int(s[1:])) == first, ids
        await ben.close()

        # Phase 2: the remote stays down; every message comes back as an error after the bound.
        remote.stop()
        second = [f"b{i}" for i in range(10)]
        for stanza_id in second:
            await ann.send(f"<message to='ben@away.s2s.test' id='{stanza_id}'><body>{stanza_id}</body></message>")
        # While the bound runs, the queue is visible in the status `peerage s2s status` prints.
        await async_wait_for(lambda: status(sender).get("queues", {}).get("home.s2s.test->away.s2s.test") == 10,
                             BOUND, "the queue in the s2s status")
        errors = await read_stanza(ann, r"<message[^>]*id='b9'[^>]*type='error'.*?</message>|"
                                        r"<message[^>]*type='error'[^>]*id='b9'.*?</message>",
                                   timeout=BOUND * 3)
        await ann.send("<message to='ann@home.s2s.test' id='end2'><body>end</body></message>")
        errors += await read_stanza(ann, r"<message[^>]*id='end2'.*?</message>")
        bounced = re.findall(r"<message[^>]*id='(b\d+)'", errors)
        assert sorted(bounced, key=lambda s: int(s[1:])) == second, bounced
        assert errors.count("remote-server-timeout") == len(second)
    finally:
        await ann.close()
