"""[cluster]: absent means one node as before; set, it needs PostgreSQL and NATS URLs."""

from pathlib import Path

import pytest

from peerage.cluster.xmpp import parse_stanzas
from peerage.config import ConfigError, config_from_dict
from peerage.xmpp.stream import serialize

PG = "postgresql+asyncpg://peerage@127.0.0.1/peerage"


def test_without_the_section_there_is_no_cluster() -> None:
    config = config_from_dict({}, Path("/tmp/peerage.toml"), check_files=False)
    assert not config.cluster.enabled
    assert config.database_url.startswith("sqlite")


def test_cluster_needs_postgresql() -> None:
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        config_from_dict({"cluster": {"node": "n1", "nats_urls": ["nats://127.0.0.1:4222"]}},
                         Path("/tmp/peerage.toml"), check_files=False)


def test_cluster_needs_nats_and_a_sane_name_and_timeout() -> None:
    for cluster, message in (({"node": "n1"}, "nats_urls"),
                             ({"node": "n 1", "nats_urls": ["nats://h"]}, "node"),
                             ({"node": "n1", "nats_urls": ["nats://h"], "node_timeout": 1.0}, "node_timeout")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"cluster": cluster, "database": {"url": PG}}, Path("/tmp/p.toml"), check_files=False)
    config = config_from_dict({"cluster": {"node": "n1", "nats_urls": ["nats://h"]}, "database": {"url": PG}},
                              Path("/tmp/p.toml"), check_files=False)
    assert config.cluster.enabled and config.cluster.node == "n1"


def test_forwarded_stanzas_parse_back_and_bad_batches_are_refused() -> None:
    texts = ["<message to='a@b/c' type='chat'><body>x &amp; y</body></message>", "<presence from='x@y'/>"]
    parsed = parse_stanzas(texts)
    assert parsed is not None and [serialize(e) for e in parsed] == texts
    assert parse_stanzas(["<message><body>unclosed</message>"]) is None
    assert parse_stanzas(["<message/><stream:features/>"]) is None
