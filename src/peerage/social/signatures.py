"""HTTP Signatures, both ways: draft-cavage-http-signatures-12 as Mastodon signs, and RFC 9421.

This module is in charge of signing outgoing requests (POSTs to inboxes, signed GETs for servers in
secure mode) and of checking the signature of incoming ones, without any I/O: fetching the signer's
key is the caller's business (``peerage.social.activitypub``), which passes it in.

- draft-cavage (§2): ``Signature: keyId=...,algorithm="rsa-sha256",headers="(request-target) host
  date digest",signature=...`` with ``Digest: SHA-256=...`` (RFC 3230), exactly the shape Mastodon's
  ``Request#sign!`` produces and its ``SignatureVerification`` requires; ``hs2019`` is accepted as the
  algorithm name too (draft-12 §2.3: the key decides; Fedify and Pleroma send it).
- RFC 9421 through the ``http-message-signatures`` library: ``@method``, ``@target-uri`` and, with a
  body, ``content-digest`` (RFC 9530) under the label ``sig1``, algorithm ``rsa-v1_5-sha256``, as
  Fedify's double-knocking sends it.

Freshness is checked here: a cavage signature must cover ``date`` (or ``(created)``) and a body must be
covered by its digest; the time must be within ``max_skew`` of our clock (Mastodon allows 12 h back and
1 h forward). Replay of one exact signature within that window is the caller's check (``replay_key``).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from http_message_signatures.resolvers import HTTPSignatureKeyResolver
from http_message_signatures.structures import CaseInsensitiveDict

# A Signature header longer than this is refused before parsing (a 4096-bit RSA signature is 684
# base64 characters; with a long keyId and header list 4 KiB is ample, and nginx's 8 KiB line
# limit is the outer bound).
MAX_SIGNATURE_HEADER = 4096
RFC9421_LABEL = "sig1"
_PARAM = re.compile(r'\s*([a-zA-Z]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


class SignatureError(Exception):
    """The request's signature is missing, malformed, stale or does not verify (answer 401)."""


def http_date(when: float | None = None) -> str:
    return email.utils.formatdate(when, usegmt=True)


def digest_header(body: bytes) -> str:
    """RFC 3230 instance digest, the form draft-cavage peers (Mastodon) require."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest (a Structured Field dictionary with a byte sequence)."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def check_body_digest(headers: Mapping[str, str], body: bytes) -> None:
    """A body must carry a matching Digest or Content-Digest (SHA-256 or SHA-512)."""
    digest = headers.get("digest")
    if digest:
        for part in digest.split(","):
            algo, _, value = part.strip().partition("=")
            algo = algo.lower()
            if algo in ("sha-256", "sha-512"):
                name = "sha256" if algo == "sha-256" else "sha512"
                if base64.b64encode(hashlib.new(name, body).digest()).decode("ascii") != value.strip():
                    raise SignatureError("Digest does not match the body")
                return
        raise SignatureError("Digest names no algorithm we check (SHA-256 or SHA-512)")
    content = headers.get("content-digest")
    if content:
        parsed = _sf_dictionary(content, "Content-Digest")
        for algo, (value, _params) in parsed.items():
            if algo in ("sha-256", "sha-512") and isinstance(value, bytes):
                if hashlib.new(algo.replace("-", ""), body).digest() != value:
                    raise SignatureError("Content-Digest does not match the body")
                return
        raise SignatureError("Content-Digest names no algorithm we check (sha-256 or sha-512)")
    raise SignatureError("a request with a body must carry Digest or Content-Digest")


def _sf_dictionary(value: str, name: str) -> dict[str, Any]:
    """An RFC 8941 dictionary: label -> (value, parameters)."""
    try:
        parsed = http_sf.parse(value.encode(), tltype="dictionary")
    except ValueError:
        raise SignatureError(f"{name} is not a structured dictionary") from None
    if not isinstance(parsed, dict):
        raise SignatureError(f"{name} is not a structured dictionary")
    return cast(dict[str, Any], parsed)


# --- draft-cavage -------------------------------------------------------------------------------


def _target(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.netloc, path


def sign_cavage(method: str, url: str, key: rsa.RSAPrivateKey, key_id: str, body: bytes | None = None,
                now: float | None = None, accept: str | None = None) -> dict[str, str]:
    """The headers of a request signed as Mastodon signs: Host, Date, (Digest), Signature."""
    host, path = _target(url)
    headers = {"host": host, "date": http_date(now)}
    names = ["(request-target)", "host", "date"]
    if accept is not None:
        headers["accept"] = accept
        names.append("accept")
    if body is not None:
        headers["digest"] = digest_header(body)
        names.append("digest")
    lines = [f"(request-target): {method.lower()} {path}"] + [f"{n}: {headers[n]}" for n in names[1:]]
    signature = key.sign("\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
    headers["signature"] = (f'keyId="{key_id}",algorithm="rsa-sha256",headers="{" ".join(names)}",'
                            f'signature="{base64.b64encode(signature).decode("ascii")}"')
    return {("Host" if k == "host" else k.title()): v for k, v in headers.items()}


@dataclass(frozen=True)
class SignedRequest:
    """What a request's signature claims, before the key is known."""

    scheme: str  # "cavage" or "rfc9421"
    key_id: str
    raw: str  # the signature value, for replay detection

    def replay_key(self) -> str:
        return "sig:" + hashlib.sha256(self.raw.encode()).hexdigest()


def parse(headers: Mapping[str, str]) -> SignedRequest:
    """Which scheme signs this request and with which key id; no cryptography yet."""
    if "signature-input" in headers:
        value = headers["signature-input"]
        if len(value) > MAX_SIGNATURE_HEADER or len(headers.get("signature", "")) > MAX_SIGNATURE_HEADER:
            raise SignatureError("Signature-Input too long")
        parsed = _sf_dictionary(value, "Signature-Input")
        for _label, (_members, params) in parsed.items():
            key_id = params.get("keyid")
            if isinstance(key_id, str):
                return SignedRequest("rfc9421", key_id, headers.get("signature", ""))
        raise SignatureError("Signature-Input names no keyid")
    header = headers.get("signature")
    if not header:
        raise SignatureError("the request is not signed (no Signature header)")
    params = _cavage_params(header)
    if "keyId" not in params or "signature" not in params:
        raise SignatureError("Signature lacks keyId or signature")
    return SignedRequest("cavage", params["keyId"], header)


def _cavage_params(value: str) -> dict[str, str]:
    if len(value) > MAX_SIGNATURE_HEADER:
        raise SignatureError("Signature header too long")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        params[match.group(1)] = match.group(2)
    return params


def verify(method: str, url: str, headers: Mapping[str, str], body: bytes | None,
           public_key: rsa.RSAPublicKey, *, now: float, max_skew: float) -> None:
    """Check the request's signature with `public_key`; raise SignatureError if it does not hold.

    `headers` must be case-insensitive (aiohttp's CIMultiDict). A body, when present, must be covered:
    by ``digest`` in cavage, by ``content-digest`` in RFC 9421, and match it.
    """
    signed = parse(headers)
    if body:
        check_body_digest(headers, body)
    if signed.scheme == "rfc9421":
        _verify_rfc9421(method, url, headers, body, public_key, now=now, max_skew=max_skew)
    else:
        _verify_cavage(method, url, headers, body, public_key, now=now, max_skew=max_skew)


def _verify_cavage(method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                   public_key: rsa.RSAPublicKey, *, now: float, max_skew: float) -> None:
    params = _cavage_params(headers["signature"])
    algorithm = params.get("algorithm", "hs2019").lower()
    if algorithm not in ("rsa-sha256", "hs2019"):
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}")
    names = params.get("headers", "date").lower().split()
    _host, path = _target(url)
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {path}")
        elif name in ("(created)", "(expires)"):
            field = params.get(name[1:-1])
            if field is None or not field.isdigit():
                raise SignatureError(f"{name} is covered but its parameter is missing")
            lines.append(f"{name}: {field}")
        elif name in headers:
            lines.append(f"{name}: {', '.join(v.strip() for v in _all(headers, name))}")
        else:
            raise SignatureError(f"the signature covers {name!r}, which the request lacks")
    # Mastodon requires (request-target) and date (or (created)), and digest on a POST with a body.
    if "(request-target)" not in names:
        raise SignatureError("the signature must cover (request-target)")
    if body and "digest" not in names:
        raise SignatureError("the signature must cover the Digest of a body")
    if "date" in names:
        try:
            when = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
        except (TypeError, ValueError):
            raise SignatureError("Date is not an HTTP date") from None
    elif "(created)" in names:
        when = float(params["created"])
    else:
        raise SignatureError("the signature must cover date or (created)")
    if abs(now - when) > max_skew:
        raise SignatureError("the signed Date is outside the accepted window")
    if "(expires)" in names and float(params["expires"]) < now:
        raise SignatureError("the signature has expired")
    try:
        signature = base64.b64decode(params["signature"], validate=True)
        public_key.verify(signature, "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, CryptoInvalidSignature):
        raise SignatureError("the signature does not verify with the signer's key") from None


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    return list(getall(name)) if getall is not None else [headers[name]]


# --- RFC 9421 -----------------------------------------------------------------------------------


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, private: rsa.RSAPrivateKey | None = None,
                 public: rsa.RSAPublicKey | None = None) -> None:
        self.key_id, self.private, self.public = key_id, private, public

    def resolve_public_key(self, key_id: str) -> rsa.RSAPublicKey:
        if key_id != self.key_id or self.public is None:
            raise HTTPMessageSignaturesException("unknown key")
        return self.public

    def resolve_private_key(self, key_id: str) -> rsa.RSAPrivateKey:
        assert self.private is not None and key_id == self.key_id
        return self.private


@dataclass
class _Message:
    method: str
    url: str
    headers: CaseInsensitiveDict


def sign_rfc9421(method: str, url: str, key: rsa.RSAPrivateKey, key_id: str, body: bytes | None = None,
                 now: float | None = None) -> dict[str, str]:
    """The headers of a request signed per RFC 9421: Host, Date, (Content-Digest), Signature(-Input)."""
    host, _path = _target(url)
    message = _Message(method.upper(), url, CaseInsensitiveDict({"Host": host, "Date": http_date(now)}))
    created = datetime.datetime.fromtimestamp(now, datetime.UTC) if now is not None else None
    signer = HTTPMessageSigner(signature_algorithm=algorithms.RSA_V1_5_SHA256, key_resolver=_Keys(key_id, key))
    # With a body the library adds Content-Digest (RFC 9530, sha-256) and covers it.
    signer.sign(message, key_id=key_id, created=created, label=RFC9421_LABEL,
                covered_component_ids=("@method", "@target-uri"), body=body)
    return dict(message.headers.items())


def _verify_rfc9421(method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                    public_key: rsa.RSAPublicKey, *, now: float, max_skew: float) -> None:
    signed = parse(headers)
    message = _Message(method.upper(), url, CaseInsensitiveDict(
        {k: v for k, v in headers.items()}))
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.RSA_V1_5_SHA256,
                                   key_resolver=_Keys(signed.key_id, public=public_key))
    required = ["@method", "@target-uri"] + (["content-digest"] if body else [])
    try:
        results = verifier.verify(message, max_age=datetime.timedelta(seconds=max_skew),
                                  require_components=required)
    except HTTPMessageSignaturesException as exc:
        raise SignatureError(f"the RFC 9421 signature does not hold: {exc}") from None
    for result in results:
        created = result.parameters.get("created")
        if not isinstance(created, int) or abs(now - created) > max_skew:
            raise SignatureError("the signature's created time is outside the accepted window")
