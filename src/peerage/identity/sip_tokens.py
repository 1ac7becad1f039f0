"""Short-lived SIP digest secrets a logged-in web session hands to the browser's phone (JsSIP).

This module is in charge of minting them and of answering which HA1s they add to an account. A web
page must register over SIP WebSocket without asking for the password again, and without the account's
password reaching the page: ``GET /auth/sip-credentials`` calls ``issue`` and gives the page a random
token as its digest password. Only the token's HA1s are kept (RFC 3261 §22.4 / RFC 8760 H(A1), for the
local part and for the full address as username, MD5 and SHA-256), in memory, until they expire; the
token itself is never stored. ``AccountService.sip_ha1_all`` lists them after the account's own, so the
registrar and proxy accept them like an app password, and only for SIP.

Held in memory on purpose: a token outlives neither its lifetime nor a restart (the page then fetches a
new one when its registration is refused), and there is nothing on disk to steal. With several nodes, a
page registers with the node that issued its token (the web and SIP WSS listeners of one host).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerage.identity.address import Address
from peerage.identity.credentials import SIP_DIGEST_HASHES, sip_ha1

# A token lasts this long by default; the page fetches the next at 80% of its life (chatui/src/phone.js).
# It bounds how long a phone keeps registering after its web session was revoked from another browser
# (logging out of the page itself revokes its tokens at once): an hour, the longest registration
# [sip] max_expires allows by default, the same order as the XMPP token's.
DEFAULT_LIFETIME = 3600.0
# Live tokens per account: a token per open tab or browser, plus a refresh overlapping its predecessor.
# Beyond this the oldest goes (its page re-fetches when refused), so a script looping on the endpoint
# cannot grow memory or the digest check's work.
MAX_TOKENS_PER_ACCOUNT = 16
# 128 bits of randomness, URL-safe (the same strength as the web session tokens).
TOKEN_BYTES = 16


@dataclass(frozen=True)
class _Entry:
    expires: float
    ha1: dict[str, str]  # algorithm -> H(A1) with the local part as username
    ha1_full: dict[str, str]  # algorithm -> H(A1) with the full address as username
    web_session: str | None = None  # hash of the web session that asked for it


class SipTokens:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[str, list[_Entry]] = {}

    def issue(self, address: Address, lifetime: float = DEFAULT_LIFETIME, *,
              web_session: str | None = None) -> tuple[str, float]:
        """A new token for `address` (its SIP digest password) and its expiry (Unix time); `web_session`
        (the session token's hash) lets ``revoke_web_session`` end it with that session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires = self.clock() + lifetime
        entry = _Entry(expires,
                       {alg: sip_ha1(alg, address.local, address.domain, token) for alg in SIP_DIGEST_HASHES},
                       {alg: sip_ha1(alg, str(address), address.domain, token) for alg in SIP_DIGEST_HASHES},
                       web_session)
        live = self._live(str(address))
        live.append(entry)
        del live[:-MAX_TOKENS_PER_ACCOUNT]
        self._entries[str(address)] = live
        return token, expires

    def ha1s(self, account: str, algorithm: str, *, full: bool = False) -> Sequence[str]:
        """The live tokens' HA1s of `account` for `algorithm` (MD5 or SHA-256)."""
        live = self._live(account)
        if not live:
            self._entries.pop(account, None)
            return []
        algorithm = algorithm.upper()
        return [h for entry in live if (h := (entry.ha1_full if full else entry.ha1).get(algorithm))]

    def revoke(self, account: str) -> None:
        """Forget every token of `account` (its password changed, or it was deleted)."""
        self._entries.pop(account, None)

    def revoke_web_session(self, account: str, web_session: str) -> int:
        """Forget the tokens of `account` that the web session `web_session` was given; how many."""
        live = self._live(account)
        kept = [entry for entry in live if entry.web_session != web_session]
        self._entries[account] = kept
        return len(live) - len(kept)

    def _live(self, account: str) -> list[_Entry]:
        now = self.clock()
        return [entry for entry in self._entries.get(account, ()) if entry.expires > now]
