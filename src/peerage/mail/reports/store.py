"""Report storage: received reports, what our MX saw for DMARC domains, and which reports we sent.

This module is in charge of the database side of reports (tables in peerage.mail.reports.tables):
saving a parsed report once, counting DMARC outcomes and our outbound TLS outcomes (TLS-RPT) per
reporting interval, claiming an interval's report for sending (so two nodes or a restart never send it twice), the operator's summary, and
pruning what is older than the retention.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from peerage.mail.reports.parse import Report
from peerage.mail.reports.tables import (
    mailreport_dmarc_seen,
    mailreport_received,
    mailreport_received_rows,
    mailreport_sent,
    mailreport_tls_seen,
    mailreport_tls_sent,
)


@dataclass(frozen=True, slots=True)
class ReportKind:
    """One kind of report we send: the table of what was counted per interval and policy domain
    (`seen`) and the table where each (interval, domain) report is claimed and its outcome kept
    (`sent`). Both have `period` and `policy_domain` columns; `sent` has `sent_at` and `outcome`."""

    name: str  # as log lines name the report
    seen: Table
    sent: Table


# RFC 7489 §7.2 aggregate reports, and RFC 8460 TLS reports.
DMARC_REPORTS = ReportKind("DMARC aggregate", mailreport_dmarc_seen, mailreport_sent)
TLS_REPORTS = ReportKind("TLS", mailreport_tls_seen, mailreport_tls_sent)


@dataclass(frozen=True, slots=True)
class Seen:
    """One DMARC evaluation by our MX, as it goes into an aggregate report."""

    from_domain: str
    policy_domain: str
    source_ip: str
    disposition: str
    dkim: str
    spf: str
    auth: dict[str, Any]
    policy: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"from_domain": self.from_domain, "policy_domain": self.policy_domain, "source_ip": self.source_ip,
                "disposition": self.disposition, "dkim": self.dkim, "spf": self.spf, "auth": self.auth,
                "policy": self.policy}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Seen:
        return cls(str(value["from_domain"]), str(value["policy_domain"]), str(value["source_ip"]),
                   str(value["disposition"]), str(value["dkim"]), str(value["spf"]), dict(value["auth"]),
                   {str(k): str(v) for k, v in dict(value["policy"]).items()})


class ReportStore:
    def __init__(self, db: Any) -> None:
        self.db = db

    async def save(self, report: Report, sender: str, now: float | None = None) -> bool:
        """Store a received report; False when the same reporter's report id is already stored."""
        now = time.time() if now is None else now
        table = mailreport_received
        try:
            async with self.db.begin() as conn:
                result = await conn.execute(insert(table).values(
                    kind=report.kind, org_name=report.org_name, report_id=report.report_id,
                    policy_domain=report.policy_domain, begin=report.begin, end=report.end, received_at=now,
                    sender=sender[:320], messages=report.messages, passed=report.passed, failed=report.failed,
                    policy=json.dumps(report.policy, sort_keys=True),
                ))
                report_key = result.inserted_primary_key[0]
                if report.rows:
                    await conn.execute(insert(mailreport_received_rows), [
                        {"report": report_key, "source": row.source[:255], "count": row.count,
                         "disposition": row.disposition[:64], "dkim": row.dkim[:16], "spf": row.spf[:16],
                         "header_from": row.header_from[:255], "detail": json.dumps(row.detail, sort_keys=True)}
                        for row in report.rows
                    ])
        except IntegrityError:
            return False
        return True

    async def record(self, period: float, seen: Seen, count: int = 1) -> None:
        table = mailreport_dmarc_seen
        key = and_(table.c.period == period, table.c.from_domain == seen.from_domain,
                   table.c.source_ip == seen.source_ip, table.c.disposition == seen.disposition,
                   table.c.dkim == seen.dkim, table.c.spf == seen.spf,
                   table.c.auth == json.dumps(seen.auth, sort_keys=True))
        for _ in range(2):
            try:
                async with self.db.begin() as conn:
                    changed = await conn.execute(update(table).where(key).values(count=table.c.count + count))
                    if changed.rowcount:
                        return
                    await conn.execute(insert(table).values(
                        period=period, from_domain=seen.from_domain, policy_domain=seen.policy_domain,
                        source_ip=seen.source_ip, disposition=seen.disposition, dkim=seen.dkim, spf=seen.spf,
                        auth=json.dumps(seen.auth, sort_keys=True), policy=json.dumps(seen.policy, sort_keys=True),
                        count=count))
                    return
            except IntegrityError:
                continue  # another delivery inserted the row first: add to it

    async def due(self, kind: ReportKind, before: float, limit: int) -> list[tuple[float, str]]:
        """(period, policy domain) pairs whose interval ended before `before` and have no report yet."""
        seen, sent = kind.seen, kind.sent
        query = (
            select(seen.c.period, seen.c.policy_domain).distinct()
            .select_from(seen.outerjoin(sent, and_(sent.c.period == seen.c.period,
                                                   sent.c.policy_domain == seen.c.policy_domain)))
            .where(seen.c.period < before, sent.c.period.is_(None))
            .order_by(seen.c.period, seen.c.policy_domain).limit(limit)
        )
        async with self.db.begin() as conn:
            return [(float(p), str(d)) for p, d in (await conn.execute(query)).all()]

    async def rows(self, period: float, policy_domain: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The interval's rows for one policy domain, largest counts first, and how many there are."""
        table = mailreport_dmarc_seen
        where = and_(table.c.period == period, table.c.policy_domain == policy_domain)
        async with self.db.begin() as conn:
            total = int((await conn.execute(select(func.count()).select_from(table).where(where))).scalar() or 0)
            found = (await conn.execute(select(table).where(where).order_by(table.c.count.desc()).limit(limit))).all()
        return [dict(r._mapping) for r in found], total

    async def claim(self, kind: ReportKind, period: float, policy_domain: str, outcome: str,
                    now: float | None = None) -> bool:
        """Mark the interval's report as handled; False when someone did already."""
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(kind.sent).values(
                    period=period, policy_domain=policy_domain, sent_at=time.time() if now is None else now,
                    outcome=outcome[:255]))
        except IntegrityError:
            return False
        return True

    async def set_outcome(self, kind: ReportKind, period: float, policy_domain: str, outcome: str) -> None:
        table = kind.sent
        async with self.db.begin() as conn:
            await conn.execute(update(table).where(table.c.period == period, table.c.policy_domain == policy_domain)
                               .values(outcome=outcome[:255]))

    async def sent(self, kind: ReportKind, since: float) -> list[dict[str, Any]]:
        """Our reports of this kind for intervals from `since` on, with their outcomes."""
        table = kind.sent
        async with self.db.begin() as conn:
            found = (await conn.execute(select(table).where(table.c.period >= since)
                                        .order_by(table.c.period, table.c.policy_domain))).all()
        return [dict(r._mapping) for r in found]

    async def received(self, since: float, domain: str | None = None) -> list[dict[str, Any]]:
        table = mailreport_received
        query = select(table).where(table.c.received_at >= since)
        if domain:
            query = query.where(table.c.policy_domain == domain.lower())
        async with self.db.begin() as conn:
            found = (await conn.execute(query.order_by(table.c.begin, table.c.id))).all()
        return [dict(r._mapping) for r in found]

    async def failing_sources(self, report_ids: list[int], limit: int = 10) -> list[dict[str, Any]]:
        """Across the given reports: the sources with the most failing messages (DMARC: neither DKIM nor
        SPF aligned; TLS-RPT: every failure row)."""
        if not report_ids:
            return []
        rows, reports = mailreport_received_rows, mailreport_received
        failing = (rows.c.dkim != "pass") & (rows.c.spf != "pass")
        query = (
            select(reports.c.kind, reports.c.policy_domain, rows.c.source, rows.c.disposition, rows.c.header_from,
                   func.sum(rows.c.count).label("count"))
            .select_from(rows.join(reports, reports.c.id == rows.c.report))
            .where(rows.c.report.in_(report_ids), failing)
            .group_by(reports.c.kind, reports.c.policy_domain, rows.c.source, rows.c.disposition, rows.c.header_from)
            .order_by(func.sum(rows.c.count).desc()).limit(limit)
        )
        async with self.db.begin() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]

    # --- TLS-RPT (RFC 8460): our outbound sessions' TLS outcomes, and our reports -------------------

    async def record_tls(self, period: float, policy_domain: str, session: dict[str, Any], count: int = 1) -> None:
        table = mailreport_tls_seen
        text = json.dumps(session, sort_keys=True)
        key = hashlib.sha256(f"{policy_domain}\0{text}".encode()).hexdigest()
        where = and_(table.c.period == period, table.c.key == key)
        for _ in range(2):
            try:
                async with self.db.begin() as conn:
                    changed = await conn.execute(update(table).where(where).values(count=table.c.count + count))
                    if changed.rowcount:
                        return
                    await conn.execute(insert(table).values(period=period, policy_domain=policy_domain, key=key,
                                                            session=text, count=count))
                    return
            except IntegrityError:
                continue

    async def tls_rows(self, period: float, policy_domain: str, limit: int) -> list[tuple[dict[str, Any], int]]:
        table = mailreport_tls_seen
        async with self.db.begin() as conn:
            found = (await conn.execute(
                select(table.c.session, table.c.count)
                .where(table.c.period == period, table.c.policy_domain == policy_domain)
                .order_by(table.c.count.desc()).limit(limit))).all()
        return [(json.loads(text), int(count)) for text, count in found]

    async def prune(self, before: float) -> None:
        async with self.db.begin() as conn:
            old = select(mailreport_received.c.id).where(mailreport_received.c.end < before)
            await conn.execute(delete(mailreport_received_rows).where(mailreport_received_rows.c.report.in_(old)))
            await conn.execute(delete(mailreport_received).where(mailreport_received.c.end < before))
            await conn.execute(delete(mailreport_dmarc_seen).where(mailreport_dmarc_seen.c.period < before))
            await conn.execute(delete(mailreport_sent).where(mailreport_sent.c.period < before))
            await conn.execute(delete(mailreport_tls_seen).where(mailreport_tls_seen.c.period < before))
            await conn.execute(delete(mailreport_tls_sent).where(mailreport_tls_sent.c.period < before))
