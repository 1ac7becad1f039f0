"""SMTP: the inbound MX and submission listeners, the outbound client, the durable queue and DSNs."""
