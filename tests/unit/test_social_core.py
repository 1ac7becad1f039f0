"""The sans-I/O social core: HTTP Signatures both ways, digests, JSON limits, Note rendering."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from peerage.social import core, signatures

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_ID = "https://a.example/users/alice#main-key"
URL = "https://b.example/users/bob/inbox"
BODY = b'{"type":"Create"}'


@pytest.mark.parametrize("sign", [signatures.sign_cavage, signatures.sign_rfc9421])
def test_signatures_verify_and_catch_tampering(sign: Any) -> None:
    headers = CIMultiDict(sign("POST", URL, KEY, KEY_ID, BODY))
    assert signatures.parse(headers).key_id == KEY_ID
    signatures.verify("POST", URL, headers, BODY, KEY.public_key(), now=time.time(), max_skew=3600)
    with pytest.raises(signatures.SignatureError):  # another body
        signatures.verify("POST", URL, headers, BODY + b" ", KEY.public_key(), now=time.time(), max_skew=3600)
    with pytest.raises(signatures.SignatureError):  # another target
        signatures.verify("POST", URL + "x", headers, BODY, KEY.public_key(), now=time.time(), max_skew=3600)
    with pytest.raises(signatures.SignatureError):  # another key
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signatures.verify("POST", URL, headers, BODY, other.public_key(), now=time.time(), max_skew=3600)
    with pytest.raises(signatures.SignatureError):  # stale
        signatures.verify("POST", URL, headers, BODY, KEY.public_key(), now=time.time() + 7200, max_skew=3600)


def test_cavage_is_shaped_as_mastodon_signs() -> None:
    headers = signatures.sign_cavage("POST", URL, KEY, KEY_ID, BODY, now=0)
    assert headers["Date"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert headers["Digest"] == "SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert f'keyId="{KEY_ID}"' in headers["Signature"]
    assert 'algorithm="rsa-sha256",headers="(request-target) host date digest"' in headers["Signature"]


def test_rfc9421_covers_method_target_and_content_digest() -> None:
    headers = signatures.sign_rfc9421("POST", URL, KEY, KEY_ID, BODY)
    assert headers["Signature-Input"].startswith('sig1=("@method" "@target-uri" "content-digest")')
    assert headers["Content-Digest"] == signatures.content_digest(BODY)


def test_a_cavage_signature_without_digest_cover_is_refused() -> None:
    headers = CIMultiDict(signatures.sign_cavage("POST", URL, KEY, KEY_ID))  # signed with no body
    headers["Digest"] = signatures.digest_header(BODY)
    with pytest.raises(signatures.SignatureError, match="Digest"):
        signatures.verify("POST", URL, headers, BODY, KEY.public_key(), now=time.time(), max_skew=3600)


def test_json_limits() -> None:
    assert core.json_depth('{"a": [1, {"b": "[[[["}]}') == 3
    deep = "[" * 40 + "]" * 40
    with pytest.raises(core.DocumentError):
        core.parse_document(deep.encode(), max_size=1000, max_depth=32)
    with pytest.raises(core.DocumentError) as too_big:
        core.parse_document(b"{}" + b" " * 2000, max_size=1000, max_depth=32)
    assert too_big.value.status == 413
    assert core.parse_document(json.dumps({"a": [[1]]}).encode(), max_size=1000, max_depth=32) == {"a": [[1]]}


def test_note_rendering_links_mentions_and_hashtags() -> None:
    mention = core.Mention("bob@b.example", "https://b.example/users/bob", "https://b.example/@bob")
    content, tags = core.render_note("Hi @bob@b.example & @eve@c.example #Peerage\n\n<b>", [mention],
                                     "https://a.example")
    assert '<a href="https://b.example/@bob" class="u-url mention">@<span>bob</span></a>' in content
    assert "@eve@c.example" in content  # unresolved mentions stay text
    assert 'href="https://a.example/tags/peerage"' in content
    assert "&lt;b&gt;" in content and content.count("<p>") == 2
    assert {"type": "Mention", "href": "https://b.example/users/bob", "name": "@bob@b.example"} in tags
    assert {"type": "Hashtag", "href": "https://a.example/tags/peerage", "name": "#peerage"} in tags
    assert core.plain_text(content).startswith("Hi @bob")


def test_blocked_domains_cover_subdomains() -> None:
    assert core.domain_blocked("social.evil.example", ["evil.example"])
    assert not core.domain_blocked("notevil.example", ["evil.example"])
