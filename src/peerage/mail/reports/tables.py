"""Report tables.

``mailreport_received`` holds one row per DMARC aggregate or TLS-RPT report that reached a report
address (``kind`` tells which), unique per reporter and report id so a report sent twice is stored
once; ``mailreport_received_rows`` its records (DMARC: one per source IP and outcome; TLS-RPT: one per
policy and failure type). ``mailreport_dmarc_seen`` counts what our MX saw for From domains that
publish DMARC (RFC 7489 §7.2: the data of our own aggregate reports), one row per reporting interval and outcome;
``mailreport_sent`` remembers which of our reports went out, so a restart never sends one twice.
``mailreport_tls_seen`` and ``mailreport_tls_sent`` do the same for our TLS-RPT reports (RFC 8460):
the TLS outcomes of our outbound sessions per recipient domain, and the reports sent.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from peerage.store.schema import metadata

mailreport_received = Table(
    "mailreport_received",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # "dmarc" or "tlsrpt"
    Column("org_name", String(255), nullable=False),
    Column("report_id", String(255), nullable=False),
    Column("policy_domain", String(255), nullable=False),
    Column("begin", Float, nullable=False),
    Column("end", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("sender", String(320), nullable=False),  # envelope sender of the report message
    Column("messages", Integer, nullable=False),  # DMARC: messages; TLS-RPT: sessions
    Column("passed", Integer, nullable=False),  # DMARC: aligned pass; TLS-RPT: successful sessions
    Column("failed", Integer, nullable=False),
    Column("policy", Text, nullable=False),  # the published policy as the reporter saw it
    UniqueConstraint("kind", "org_name", "report_id", name="uq_mailreport_received_report"),
)
Index("ix_mailreport_received_domain", mailreport_received.c.policy_domain, mailreport_received.c.begin)

mailreport_received_rows = Table(
    "mailreport_received_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("report", Integer, ForeignKey("mailreport_received.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(255), nullable=False),  # DMARC: source IP; TLS-RPT: sending MTA IP
    Column("count", Integer, nullable=False),
    Column("disposition", String(64), nullable=False),  # DMARC: none/quarantine/reject; TLS-RPT: result type
    Column("dkim", String(16), nullable=False),  # DMARC policy-evaluated dkim (TLS-RPT: "")
    Column("spf", String(16), nullable=False),
    Column("header_from", String(255), nullable=False),  # TLS-RPT: receiving MX
    Column("detail", Text, nullable=False),  # auth_results / failure details, as JSON
)
Index("ix_mailreport_received_rows_report", mailreport_received_rows.c.report)

mailreport_dmarc_seen = Table(
    "mailreport_dmarc_seen",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("period", Float, nullable=False),  # start of the reporting interval (epoch seconds)
    Column("from_domain", String(255), nullable=False),
    Column("policy_domain", String(255), nullable=False),  # where the record was found
    Column("source_ip", String(64), nullable=False),
    Column("disposition", String(16), nullable=False),
    Column("dkim", String(8), nullable=False),  # aligned DKIM: pass/fail
    Column("spf", String(8), nullable=False),  # aligned SPF: pass/fail
    Column("auth", Text, nullable=False),  # JSON: the raw DKIM and SPF results (auth_results)
    Column("policy", Text, nullable=False),  # JSON: the record's tags as published
    Column("count", Integer, nullable=False),
    UniqueConstraint("period", "from_domain", "source_ip", "disposition", "dkim", "spf", "auth",
                     name="uq_mailreport_dmarc_seen_row"),
)
Index("ix_mailreport_dmarc_seen_period", mailreport_dmarc_seen.c.period)

mailreport_sent = Table(
    "mailreport_sent",
    metadata,
    Column("period", Float, primary_key=True),
    Column("policy_domain", String(255), primary_key=True),
    Column("sent_at", Float, nullable=False),
    Column("outcome", String(255), nullable=False),  # "queued to ...", or why it was not sent
)

# TLS-RPT (RFC 8460): what our outbound sessions met, per reporting interval and recipient domain.
# `key` is a digest of the session's policy and result, so one row counts every session alike.
mailreport_tls_seen = Table(
    "mailreport_tls_seen",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("period", Float, nullable=False),
    Column("policy_domain", String(255), nullable=False),
    Column("key", String(64), nullable=False),
    Column("session", Text, nullable=False),  # JSON: policy type, strings, mx patterns, result, hosts
    Column("count", Integer, nullable=False),
    UniqueConstraint("period", "key", name="uq_mailreport_tls_seen_row"),
)
Index("ix_mailreport_tls_seen_period", mailreport_tls_seen.c.period)

mailreport_tls_sent = Table(
    "mailreport_tls_sent",
    metadata,
    Column("period", Float, primary_key=True),
    Column("policy_domain", String(255), primary_key=True),
    Column("sent_at", Float, nullable=False),
    Column("outcome", String(255), nullable=False),
)
