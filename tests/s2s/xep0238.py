"""The XEP-0238 section 2 service types and the section 3 "Connection Success" table, as data.

Rows are the initiating service, columns the receiving one (XEP-0238 section 3).
"""

from __future__ import annotations

from peerage.xmpp.federation import CertificateKind, Level, ServerProfile

#: Type -> (policy word, certificate kind, legacy): XEP-0238 section 2 "Example Servers".
TYPES: dict[int, tuple[str, CertificateKind, bool]] = {
    1: ("verified", CertificateKind.NONE, True),          # Verified Only, no certificate, XMPP 0.9
    2: ("verified", CertificateKind.SELF_SIGNED, False),  # Verified Acceptable, self-signed
    3: ("verified", CertificateKind.CA_ISSUED, False),    # Verified Acceptable, CA-issued
    4: ("encrypted", CertificateKind.SELF_SIGNED, False), # Encrypted Required, self-signed
    5: ("encrypted", CertificateKind.CA_ISSUED, False),   # Encrypted Required, CA-issued
    6: ("trusted", CertificateKind.CA_ISSUED, False),     # Trusted Required, CA-issued, no dialback
}

TABLE = """
V V V U U U
V V E E U U
V V E E E T
U E E E E U
U E T E T T
U U T U T T
"""

EXPECTED: dict[tuple[int, int], str] = {
    (row + 1, column + 1): letter
    for row, line in enumerate(TABLE.strip().splitlines())
    for column, letter in enumerate(line.split())
}


def profile(service_type: int) -> ServerProfile:
    word, certificate, legacy = TYPES[service_type]
    return ServerProfile(Level.from_name(word), certificate, legacy)


def format_matrix(cells: dict[tuple[int, int], str]) -> str:
    lines = ["initiator \\ receiver  " + "  ".join(str(c) for c in range(1, 7))]
    for row in range(1, 7):
        lines.append(f"Type {row}                " + "  ".join(cells.get((row, c), "?") for c in range(1, 7)))
    return "\n".join(lines)
