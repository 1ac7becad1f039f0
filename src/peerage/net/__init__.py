"""Network base shared by every protocol: TLS, DNS, limits and listeners."""
