"""Message authentication: DKIM signing and verification, SPF, DMARC, MTA-STS and DANE, each a thin
layer over a well-kept library, with every DNS lookup going through the configured nameservers."""
