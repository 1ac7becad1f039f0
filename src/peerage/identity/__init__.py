"""Identity: addresses, accounts and the per-protocol secrets derived from one password."""
