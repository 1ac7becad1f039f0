"""The XEP-0238 federation policy: which remote domains we talk to, and at what level.

This module is in charge of every trust decision of server-to-server XMPP, and of nothing else (no
sockets, no asyncio). It answers:

- which level a remote domain must reach (``FederationPolicy.for_domain``): the configured default,
  a per-domain override, the allow and deny lists, and the legacy (pre-1.0, XEP-0238 Type 1) mode;
- each choice a stream makes while it is negotiated (``ServerProfile`` and the ``*_starttls``,
  ``*_certificate``, ``*_sasl_external`` and ``*_dialback`` functions below), used as is by
  ``peerage.xmpp.s2s`` on real connections;
- which level two servers will reach, given both sides' configuration (``predict_level``), which is the
  same decisions played out without a network. The XEP-0238 section 3 table is its unit test.

Levels (XEP-0238 section 1). A connection records the level it *reached*:

- ``T`` trusted: TLS, and both sides authenticated by certificates from the local trust list (the
  initiator by SASL EXTERNAL, XEP-0178; the receiver by its server certificate);
- ``E`` encrypted: TLS (the certificate may be self-signed), identity weakly verified by dialback;
- ``V`` verified: dialback (XEP-0220) over an unencrypted stream;
- ``P`` permissive: accepted without any verification (only a permissive receiver does this);
- ``U`` unsuccessful: no level both sides accept; stanzas bounce.

How the XEP-0238 section 3 table comes out of these rules (rows initiate, columns receive)::

          1  2  3  4  5  6
      1   V  V  V  U  U  U
      2   V  V  E  E  U  U
      3   V  V  E  E  E  T
      4   U  E  E  E  E  U
      5   U  E  T  E  T  T
      6   U  U  T  U  T  T

Five rules, each one a function below, make every cell; the table is not symmetric and the comments
at each rule say which asymmetric cells it explains:

1. Opportunistic TLS needs an authenticated receiver (``initiator_starttls``). An initiator that does
   not itself require encryption (Types 2 and 3) upgrades an optional STARTTLS only when the
   receiver's certificate verifies against the trust list; against a self-signed receiver it falls
   back to a clear stream. So 2->3 and 3->3 are E (Type 3 has a CA certificate) while 2->2 and 3->2 are
   V. A *required* STARTTLS is always taken, whatever the certificate: 2->4 and 3->4 are E.
2. Certificates are presented by those who stand behind them (``presents_certificate``). An initiator
   shows its certificate when it is CA-issued or when it requires encryption itself; a Verified-level
   server with a self-signed certificate (Type 2) authenticates by dialback only.
3. An Encrypted-level receiver that holds a CA-issued certificate (Type 5) asks every peer for a
   certificate, self-signed or not (``requires_peer_certificate``: XEP-0238 section 1 defines encrypted
   federation as "the peer presents a digital certificate"). Rules 2 and 3 make 2->5 U (Type 2 shows
   none) while 5->2 is E, and 4->5 E (Type 4 shows its self-signed one).
4. SASL EXTERNAL is offered only on mutually authenticated TLS (``receiver_offers_sasl_external``): the
   peer's certificate verifies for its domain *and* the receiver's own certificate is CA-issued,
   since a Trusted connection must be trusted in both directions. So 5->2 and 5->4 are E, not T.
5. A Verified-level initiator prefers dialback when the receiver also offers it
   (``initiator_uses_sasl_external``); an Encrypted- or Trusted-level one prefers SASL EXTERNAL. So
   3->5 is E while 5->3 is T, and 3->3 is E while 5->5 is T; 3->6 is T only because Type 6 offers no
   dialback at all (it "does not support Server Dialback").

The rest follows from the levels themselves: a pre-1.0 peer (Type 1) cannot do TLS, so nobody who
requires encryption reaches it (x->1 and 1->x are U for Types 4-6); Type 6 requires T.

Where the XEP's prose flows disagree with its own table (the 2->5 flow ends in success, the 3->5 flow
in SASL EXTERNAL), peerage follows the table, which the acceptance test reproduces cell for cell.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Level(enum.IntEnum):
    """A federation level; higher is stronger. ``letter`` is what logs and status show."""

    UNSUCCESSFUL = 0
    PERMISSIVE = 1
    VERIFIED = 2
    ENCRYPTED = 3
    TRUSTED = 4

    @property
    def letter(self) -> str:
        return _LETTERS[self]

    @classmethod
    def from_name(cls, name: str) -> Level:
        """'permissive' | 'verified' | 'encrypted' | 'trusted' (the configuration words)."""
        try:
            return _BY_NAME[name.lower()]
        except KeyError:
            raise ValueError(f"unknown federation level {name!r}; use permissive, verified, "
                             "encrypted or trusted") from None

    @classmethod
    def from_letter(cls, letter: str) -> Level:
        for level, text in _LETTERS.items():
            if text == letter:
                return level
        raise ValueError(f"unknown level letter {letter!r}")


_LETTERS = {Level.UNSUCCESSFUL: "U", Level.PERMISSIVE: "P", Level.VERIFIED: "V",
            Level.ENCRYPTED: "E", Level.TRUSTED: "T"}
_BY_NAME = {"permissive": Level.PERMISSIVE, "verified": Level.VERIFIED,
            "encrypted": Level.ENCRYPTED, "trusted": Level.TRUSTED}


class CertificateKind(enum.Enum):
    """What a server can show in TLS: nothing, a self-signed certificate, or one from a trusted CA."""

    NONE = "none"
    SELF_SIGNED = "self-signed"
    CA_ISSUED = "ca-issued"


@dataclass(frozen=True)
class ServerProfile:
    """What one side of a connection requires and holds, towards one peer domain."""

    required: Level
    certificate: CertificateKind
    #: Speaks only pre-1.0 streams: no version='1.0', no stream features, no TLS, dialback only.
    legacy: bool = False

    @property
    def has_certificate(self) -> bool:
        return self.certificate is not CertificateKind.NONE

    @property
    def ca_issued(self) -> bool:
        return self.certificate is CertificateKind.CA_ISSUED


# --- the decisions, one per negotiation step -----------------------------------------------------

def receiver_offers_starttls(receiver: ServerProfile) -> bool:
    """RFC 6120 section 5.3.1: offered by every 1.0 server that has a certificate to show."""
    return not receiver.legacy and receiver.has_certificate


def receiver_requires_starttls(receiver: ServerProfile) -> bool:
    """Encrypted and Trusted receivers refuse anything before TLS (``<required/>``)."""
    return receiver.required >= Level.ENCRYPTED


def offers_dialback(server: ServerProfile) -> bool:
    """Dialback is spoken by everyone but Trusted-only servers (XEP-0238 Type 6 does not support it:
    a dialback-verified peer could never reach the level it requires)."""
    return server.legacy or server.required < Level.TRUSTED


def requires_peer_certificate(receiver: ServerProfile) -> bool:
    """Rule 3: Trusted receivers need a certificate to authenticate the peer at all; an Encrypted
    receiver that itself holds a CA-issued certificate asks every peer to present one (it may be
    self-signed), which is XEP-0238's definition of encrypted federation. This is what makes 2->5 U
    while 4->5 is E."""
    if receiver.required >= Level.TRUSTED:
        return True
    return receiver.required == Level.ENCRYPTED and receiver.ca_issued


def presents_certificate(initiator: ServerProfile) -> bool:
    """Rule 2: a certificate is shown as a TLS client when it is CA-issued or when the initiator
    requires encryption; a Verified-level server with a self-signed one relies on dialback."""
    if not initiator.has_certificate or initiator.legacy:
        return False
    return initiator.ca_issued or initiator.required >= Level.ENCRYPTED


class TlsChoice(enum.Enum):
    """What an initiator does with the receiver's STARTTLS offer."""

    NO = "no"                    # stay on a clear stream
    REQUIRED = "required"        # negotiate TLS; a failure fails the connection
    IF_AUTHENTICATED = "if-authenticated"  # negotiate; if the receiver's certificate does not
    #                                        verify, reconnect without TLS (rule 1)


def initiator_starttls(initiator: ServerProfile, offered: bool, required_by_receiver: bool) -> TlsChoice:
    """Rule 1. STARTTLS is mandatory when either side requires encryption; otherwise it is used only
    if it buys authentication, so 2->2 and 3->2 stay V while 2->3 and 3->3 reach E."""
    if initiator.legacy or not offered:
        return TlsChoice.NO
    if required_by_receiver or initiator.required >= Level.ENCRYPTED:
        return TlsChoice.REQUIRED
    return TlsChoice.IF_AUTHENTICATED


def receiver_offers_sasl_external(receiver: ServerProfile, peer_certificate_verified: bool) -> bool:
    """Rule 4 (XEP-0178 section 3): EXTERNAL only when the peer's certificate verified for the domain it
    claims, and only if our own certificate is CA-issued (a Trusted connection is mutual)."""
    return peer_certificate_verified and receiver.ca_issued


def initiator_uses_sasl_external(initiator: ServerProfile, external_offered: bool,
                                 dialback_offered: bool) -> bool:
    """Rule 5: Encrypted- and Trusted-level initiators take EXTERNAL when offered; Verified-level ones
    keep to dialback unless the receiver offers nothing else (3->5 E, 5->3 T, 3->6 T)."""
    if not external_offered:
        return False
    return initiator.required >= Level.ENCRYPTED or not dialback_offered


def accepts_receiver_certificate(initiator: ServerProfile, verified: bool) -> bool:
    """A Trusted-level initiator needs the receiver's certificate to verify; others accept any (the
    identity is then established by dialback)."""
    return verified or initiator.required < Level.TRUSTED


def level_reached(encrypted: bool, authenticated_by: str) -> Level:
    """The level of an established connection: how it is protected and how the peer was
    authenticated ('sasl-external', 'dialback' or 'none' for permissive acceptance)."""
    if authenticated_by == "sasl-external":
        return Level.TRUSTED
    if authenticated_by == "dialback":
        return Level.ENCRYPTED if encrypted else Level.VERIFIED
    return Level.PERMISSIVE


@dataclass(frozen=True)
class Prediction:
    level: Level
    reason: str


def predict_level(initiator: ServerProfile, receiver: ServerProfile) -> Prediction:
    """The level an initiator and a receiver reach, played out with the rules above."""
    if initiator.legacy or receiver.legacy:
        who = "the initiator" if initiator.legacy else "the receiver"
        if initiator.required >= Level.ENCRYPTED:
            return Prediction(Level.UNSUCCESSFUL, f"{who} speaks pre-1.0 XMPP without TLS, and the "
                                                  "initiator requires encryption")
        if receiver.required >= Level.ENCRYPTED:
            return Prediction(Level.UNSUCCESSFUL, f"{who} speaks pre-1.0 XMPP without TLS, and the "
                                                  "receiver requires encryption")
        return Prediction(Level.VERIFIED, f"{who} speaks pre-1.0 XMPP: dialback on a clear stream")

    offered = receiver_offers_starttls(receiver)
    required = receiver_requires_starttls(receiver)
    choice = initiator_starttls(initiator, offered, required)
    if required and not offered:
        return Prediction(Level.UNSUCCESSFUL, "the receiver requires TLS but has no certificate")
    if choice is TlsChoice.NO and initiator.required >= Level.ENCRYPTED:
        return Prediction(Level.UNSUCCESSFUL, "the initiator requires TLS and the receiver offers none")
    receiver_verified = receiver.ca_issued
    if choice is TlsChoice.IF_AUTHENTICATED and not receiver_verified:
        choice = TlsChoice.NO  # rule 1: the fallback to a clear stream
    if choice is TlsChoice.NO:
        if receiver.required >= Level.ENCRYPTED:
            return Prediction(Level.UNSUCCESSFUL, "the receiver requires TLS")
        return Prediction(Level.VERIFIED, "dialback on a clear stream (TLS optional and the receiver's "
                                          "certificate is not CA-issued)")
    if not accepts_receiver_certificate(initiator, receiver_verified):
        return Prediction(Level.UNSUCCESSFUL, "the initiator requires a CA-issued certificate and the "
                                              "receiver's is self-signed")
    shown = presents_certificate(initiator)
    if requires_peer_certificate(receiver) and not shown:
        return Prediction(Level.UNSUCCESSFUL, "the receiver requires a client certificate and the "
                                              "initiator presents none")
    peer_verified = shown and initiator.ca_issued
    external = receiver_offers_sasl_external(receiver, peer_verified)
    dialback = offers_dialback(receiver)
    if receiver.required >= Level.TRUSTED and not external:
        return Prediction(Level.UNSUCCESSFUL, "the receiver requires SASL EXTERNAL and the initiator's "
                                              "certificate is not CA-issued")
    if initiator_uses_sasl_external(initiator, external, dialback):
        return Prediction(Level.TRUSTED, "TLS with CA-issued certificates on both sides, SASL EXTERNAL")
    if initiator.required >= Level.TRUSTED:
        return Prediction(Level.UNSUCCESSFUL, "the initiator requires SASL EXTERNAL and the receiver "
                                              "does not offer it")
    if not dialback:
        return Prediction(Level.UNSUCCESSFUL, "no authentication method in common")
    return Prediction(Level.ENCRYPTED, "TLS then dialback")


# --- the configured policy ----------------------------------------------------------------------

@dataclass(frozen=True)
class DomainPolicy:
    """What this server requires of one remote domain."""

    required: Level
    legacy: bool
    allowed: bool
    why_refused: str = ""


@dataclass(frozen=True)
class FederationPolicy:
    """Default level, per-domain overrides, allow and deny lists (``[xmpp.federation]``)."""

    default: Level = Level.ENCRYPTED
    legacy: bool = False
    allow: frozenset[str] = field(default_factory=frozenset)
    deny: frozenset[str] = field(default_factory=frozenset)
    overrides: Mapping[str, tuple[Level | None, bool]] = field(default_factory=dict)

    @classmethod
    def build(cls, default: str, *, legacy: bool = False, allow: Iterable[str] = (),
              deny: Iterable[str] = (), overrides: Mapping[str, tuple[str | None, bool]] | None = None
              ) -> FederationPolicy:
        return cls(
            default=Level.from_name(default), legacy=legacy,
            allow=frozenset(d.lower().rstrip(".") for d in allow),
            deny=frozenset(d.lower().rstrip(".") for d in deny),
            overrides={d.lower().rstrip("."): (Level.from_name(lv) if lv else None, lg)
                       for d, (lv, lg) in (overrides or {}).items()},
        )

    @classmethod
    def from_config(cls, federation: object) -> FederationPolicy:
        """From ``peerage.config.FederationConfig``."""
        domains = getattr(federation, "domains", {}) or {}
        return cls.build(
            getattr(federation, "level", "encrypted"), legacy=getattr(federation, "legacy", False),
            allow=getattr(federation, "allow", []), deny=getattr(federation, "deny", []),
            overrides={name: (p.level, p.legacy) for name, p in domains.items()},
        )

    def for_domain(self, domain: str) -> DomainPolicy:
        domain = domain.lower().rstrip(".")
        level, legacy = self.overrides.get(domain, (None, self.legacy))
        required = level if level is not None else self.default
        if _listed(domain, self.deny):
            return DomainPolicy(required, legacy, False, f"{domain} is on the deny list")
        if self.allow and not _listed(domain, self.allow):
            return DomainPolicy(required, legacy, False, f"{domain} is not on the allow list")
        return DomainPolicy(required, legacy or self.legacy, True)

    def profile(self, domain: str, certificate: CertificateKind) -> ServerProfile:
        """Our side of a connection with ``domain``."""
        policy = self.for_domain(domain)
        return ServerProfile(policy.required, certificate, policy.legacy)


def _listed(domain: str, names: frozenset[str]) -> bool:
    """Exact match, or a parent domain listed as ``*.example.org`` or ``.example.org``."""
    if domain in names:
        return True
    parts = domain.split(".")
    for index in range(1, len(parts)):
        parent = ".".join(parts[index:])
        if f"*.{parent}" in names or f".{parent}" in names:
            return True
    return False
