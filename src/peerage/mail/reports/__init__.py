"""DMARC aggregate (RFC 7489 §7.2) and SMTP TLS (RFC 8460) reports: received ones parsed and stored,
our own DMARC aggregate reports built and sent."""
