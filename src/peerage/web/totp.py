"""The optional second factor: TOTP (RFC 6238, 30-second steps, 6 digits, HMAC-SHA-1).

This module is in charge of enrolment (a new base32 secret, enforced only after the user proves with a
first code that their authenticator holds it), of checking codes with one step of clock drift either
way (RFC 6238 §5.2 recommends at most one), and of refusing a code, or an older one, already used
(§5.2: "the verifier MUST NOT accept the second attempt of the same OTP").
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pyotp
from sqlalchemy import delete, insert, select, update

from peerage.web.tables import web_totp

STEP = 30
DIGITS = 6
# Steps of clock drift accepted either side of now (RFC 6238 §5.2).
DRIFT_STEPS = 1
ISSUER = "peerage"


@dataclass(frozen=True)
class Factor:
    account: str
    secret: str
    enabled: bool
    last_step: int


async def load(store: Any, account: str) -> Factor | None:
    async with store.begin() as conn:
        row = (await conn.execute(select(web_totp).where(web_totp.c.account == account))).first()
    return None if row is None else Factor(row.account, row.secret, bool(row.enabled), row.last_step)


async def begin(store: Any, account: str) -> str:
    secret = pyotp.random_base32()
    async with store.begin() as conn:
        await conn.execute(delete(web_totp).where(web_totp.c.account == account))
        await conn.execute(insert(web_totp).values(account=account, secret=secret, enabled=False, last_step=0))
    return secret


async def enable(store: Any, account: str) -> None:
    async with store.begin() as conn:
        await conn.execute(update(web_totp).where(web_totp.c.account == account).values(enabled=True))


async def disable(store: Any, account: str) -> None:
    async with store.begin() as conn:
        await conn.execute(delete(web_totp).where(web_totp.c.account == account))


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code `code` is (within the drift window), or None."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    generator = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    stamp = time.time() if now is None else now
    current = int(stamp // STEP)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(generator.at(step * STEP), code):
            return step
    return None


async def verify(store: Any, factor: Factor, code: str, now: float | None = None) -> bool:
    step = matching_step(factor.secret, code.strip(), now)
    if step is None or step <= factor.last_step:
        return False
    async with store.begin() as conn:
        # Only one of two concurrent uses of the same code wins the update.
        result = await conn.execute(update(web_totp).where(web_totp.c.account == factor.account,
                                                          web_totp.c.last_step < step).values(last_step=step))
    return bool(result.rowcount)


def provisioning_uri(secret: str, account: str) -> str:
    """The otpauth:// URI authenticator apps read from a QR code."""
    return (f"otpauth://totp/{quote(ISSUER)}:{quote(account)}?secret={secret}&issuer={quote(ISSUER)}"
            f"&algorithm=SHA1&digits={DIGITS}&period={STEP}")
