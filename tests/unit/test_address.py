"""Address normalisation (RFC 7622, PRECIS) and the refusal of relay-trick characters."""

import pytest

from peerage.identity.address import AddressError, normalize_domain, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice@example.org", "alice@example.org"),
        ("Alice@Example.ORG", "alice@example.org"),
        ("alice@example.org.", "alice@example.org"),
        ("sip:Bob@b.test", "bob@b.test"),
        ("xmpp:carol@c.test", "carol@c.test"),
        ("ÉLODIE@exemple.fr", "élodie@exemple.fr"),
        ("dan@BÜCHER.de", "dan@bücher.de"),
        ("first.last@x.test", "first.last@x.test"),
    ],
)
def test_normalises(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no-at-sign",
        "@example.org",
        "alice@",
        "a%b@example.org",  # percent hack
        "a!b@example.org",  # bang path
        '"a"@example.org',  # quoted local part
        "a b@example.org",
        "alice@1.2.3.4",
        "alice@[::1]",
        "alice@-bad.org",
        ".alice@example.org",
        "al..ice@example.org",
        ("x" * 65) + "@example.org",
        "alice@" + ("a" * 64) + ".org",
        "\u0007bell@example.org",
    ],
)
def test_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_domain_error_says_why() -> None:
    with pytest.raises(AddressError, match="label"):
        normalize_domain("exa_mple.org")
