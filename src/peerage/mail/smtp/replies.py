"""Sans-I/O SMTP replies with enhanced status codes (RFC 3463, advertised per RFC 2034).

This module is in charge of making every reply peerage sends carry an enhanced status code once
ENHANCEDSTATUSCODES is advertised, including the engine's own replies that lack one.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}(?: |$)")
_BASIC = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)

# RFC 2034 §3: the greeting (220 before EHLO), the EHLO response and 334 challenges carry no
# enhanced code; every other reply does.
_EXEMPT_CODES = frozenset({"220", "334", "354"})

# Default enhanced code for a basic reply code when the engine did not give one (RFC 3463 §3.1 and
# Postfix's choices for the same replies).
_DEFAULT_ENHANCED = {
    "211": "2.0.0", "214": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5",
    "252": "2.5.0", "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0",
    "534": "5.7.9", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "551": "5.1.6", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}


def with_enhanced_code(reply: str, *, ehlo_done: bool = True) -> str:
    """Return `reply` with an enhanced status code inserted when it has none."""
    if _HAS_ENHANCED.match(reply):
        return reply
    match = _BASIC.match(reply)
    if not match:
        return reply
    code, separator, text = match.groups()
    if code in _EXEMPT_CODES or (code == "250" and not ehlo_done):
        return reply
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None:
        enhanced = f"{code[0]}.0.0" if code[0] in "245" else None
    if enhanced is None:
        return reply
    return f"{code}{separator}{enhanced} {text}"
