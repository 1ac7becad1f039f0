"""The group-chat service's place in the server: its DNS records and the domains it follows."""

from __future__ import annotations

from pathlib import Path

from peerage.cli import xmpp_dns_records
from peerage.config import load_config
from tests.muc.memory import MucHarness, memory_engine


def test_dns_records_name_the_conference_service(tmp_path: Path) -> None:
    path = tmp_path / "peerage.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\n\n[[domain]]\nname = "x.test"\n')
    records = xmpp_dns_records(load_config(path, check_files=False), "x.test")
    assert "_xmpp-server._tcp.conference.x.test. 3600 IN SRV 5 0 5269 x.test." in records
    assert "_xmpps-server._tcp.conference.x.test. 3600 IN SRV 5 0 5270 x.test." in records
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\n\n[muc]\nenabled = false\n\n[[domain]]\nname = "x.test"\n')
    assert not [r for r in xmpp_dns_records(load_config(path, check_files=False), "x.test") if "conference" in r]


async def test_a_domain_added_by_reload_gets_its_conference_service() -> None:
    engine = await memory_engine()
    try:
        harness = MucHarness(engine)
        router = harness.router
        assert router.is_hosted("conference.a.test") and not router.is_hosted("conference.new.test")
        router.hosted_domains = {"a.test", "new.test"}
        harness.ctx.events.fire("xmpp-hosted-domains", set(router.hosted_domains))
        assert router.is_hosted("conference.new.test")
        assert router.certificate_domain("conference.new.test") == "new.test"
        router.hosted_domains = {"new.test"}
        harness.ctx.events.fire("xmpp-hosted-domains", set(router.hosted_domains))
        assert not router.is_hosted("conference.a.test")
    finally:
        await engine.dispose()
