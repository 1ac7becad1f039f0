"""[cluster]: absent means one node as before; set, it needs PostgreSQL and NATS URLs."""

import json
from pathlib import Path

import pytest

from peerage.cluster.xmpp import pack_batch, pack_batch_1, parse_stanza, parse_stanzas, unpack_batch
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


def test_a_stanza_parses_back_with_the_kept_parser_after_a_bad_one() -> None:
    assert parse_stanza("<message><body>unclosed</message>") is None
    assert parse_stanza("<presence/><presence/>") is None
    for text in ("<presence from='x@y'><status>\u00e9t\u00e9</status></presence>", "<message to='a@b'/>"):
        parsed = parse_stanza(text)
        assert parsed is not None and serialize(parsed) == text
    assert parse_stanza(b"<iq type='get' id='1'/>") is not None


def test_delivery_batches_frame_any_jid_and_stanza_and_refuse_bad_lengths() -> None:
    items = [(0, "a@b/res with spaces\nand a newline", "<message><body>1 2\n3 \u00e9</body></message>"),
             (7, "c@d/e", "<presence/>")]
    data = pack_batch("n1", "abc", [(sid, to.encode(), text.encode()) for sid, to, text in items])
    assert unpack_batch(data) == ("n1", "abc", [(sid, to, text.encode()) for sid, to, text in items])
    assert unpack_batch(data[:-1]) is None  # a stanza cut short
    assert unpack_batch(data + b"x") is None  # bytes after the last item
    assert unpack_batch(data.replace(b" 2\n", b" 3\n", 1)) is None  # one item more than the lengths say
    assert unpack_batch(b"B2 n1 abc 1\n0 -5 8\nabc") is None  # a negative length
    assert unpack_batch(b"B2 n1 abc 1\n0 1\nabc") is None  # a number missing
    assert unpack_batch(b"B2 n1 abc 0\n\n") == ("n1", "abc", [])
    assert unpack_batch(b"garbage") is None
    # A batch of a node that still sends the earlier format (a line of lengths per stanza).
    earlier = b"B1 n2 x 2\n0 5 11\nc@d/e<presence/>4 3 2\na@b\xc3\xa9"
    assert unpack_batch(earlier) == ("n2", "x", [(0, "c@d/e", b"<presence/>"), (4, "a@b", "\u00e9".encode())])
    assert unpack_batch(b"B1 n1 abc 1\n0 -5 3\nabc") is None  # a negative length
    # What a node sends to one whose heartbeat does not announce B2: the earlier format, byte for byte.
    assert pack_batch_1("n2", "x", [(0, b"c@d/e", b"<presence/>"), (4, b"a@b", "\u00e9".encode())]) == earlier
    framed = pack_batch_1("n1", "abc", [(sid, to.encode(), text.encode()) for sid, to, text in items])
    assert unpack_batch(framed) == ("n1", "abc", [(sid, to, text.encode()) for sid, to, text in items])
    # A batch of a node that still sends JSON.
    old = json.dumps({"node": "n2", "inc": "x", "items": [[3, "c@d/e", "<presence/>"]]}).encode()
    assert unpack_batch(old) == ("n2", "x", [(3, "c@d/e", b"<presence/>")])
