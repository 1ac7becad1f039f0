"""Mail: SMTP exchange and submission (`smtp/`), message authentication (`auth/`), the mailbox store
(`mailbox/`) and IMAP access (`imap/`)."""
