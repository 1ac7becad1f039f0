"""Password policy for passwords an operator sets (`peerage user add`, `user passwd`).

This module is in charge of refusing passwords that a guesser tries first, with an error that says
why and what to do. NIST SP 800-63B §5.1.1.2 asks for at least 8 characters, no composition rules,
and a check against lists of commonly used or compromised passwords; that is what is done here:

- at least ``min_length`` characters (``[auth] password_min_length``, 8), counted after PRECIS
  OpaqueString preparation, and not only white space;
- not one of the commonest passwords of public breach lists (``data/common-passwords.txt``), compared
  case-insensitively and with digits and punctuation stripped from both ends (``Password1!``);
- not the account's own address or local part.

Passwords checked over the wire at login are not subject to it (they were set earlier).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from peerage.identity.credentials import PasswordError

DEFAULT_MIN_LENGTH = 8


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("peerage.identity").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _core(password: str) -> str:
    return password.lower().strip("0123456789!@#$%^&*()_+-=.,;:?~ ")


def check_password(password: str, *, address: str = "", min_length: int = DEFAULT_MIN_LENGTH) -> None:
    """Raise PasswordError (its message for people) if ``password`` may not be set."""
    if not password.strip():
        raise PasswordError("the password is empty or only white space; choose a passphrase of a few words")
    if len(password) < min_length:
        raise PasswordError(
            f"the password has {len(password)} characters; use at least {min_length} "
            "(a few unrelated words make a strong one that is easy to type)"
        )
    lowered = password.lower()
    common = common_passwords()
    if lowered in common or _core(password) in common:
        raise PasswordError("that password is among the most common ones and is guessed first; choose another")
    local = address.split("@", 1)[0].lower()
    if address and (lowered == address.lower() or (local and _core(password) == local)):
        raise PasswordError("the password must not be the address or its user name; choose another")
