"""MailService: the mail side of a peerage host.

This module is in charge of wiring the mail pieces to the host: it opens the SMTP listeners (MX on 25,
submission on 587 and 465), runs the outbound queue, offers the shared operations the SMTP handlers
need (authenticate an arriving message, DKIM-sign a submitted one, accept a message durably), and
starts the IMAP listeners when the IMAP service is part of this build. With `[smtp] mx_workers`, the
MX sessions run in worker processes (see `peerage.mail.smtp.channel`) and this process stores what
they accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peerage.config import parse_listen
from peerage.mail.auth import dkim
from peerage.mail.auth.dnsquery import CacheMiss, SyncLookup, cache_only
from peerage.mail.auth.results import AuthenticationResults, authenticate_async
from peerage.mail.auth.spf import SpfResult
from peerage.mail.auth.spf import check as spf_check
from peerage.mail.smtp import channel
from peerage.mail.smtp.client import Deliverer, Outcome
from peerage.mail.smtp.delivery import LocalDelivery
from peerage.mail.smtp.headers import with_return_path
from peerage.mail.smtp.queue import OutboundQueue
from peerage.mail.smtp.schedule import Schedule
from peerage.mail.smtp.server import REPORT_ADDRESSES, MxHandler, SubmissionHandler, make_server_factory
from peerage.net.limits import RateLimiter

log = logging.getLogger(__name__)

SECONDS_PER_MINUTE = 60.0
# How long "this account exists" is believed without asking the database again. Postfix's proxymap
# and address-verify caches trade the same freshness for speed; a deleted account may receive mail
# for this long, which then waits in its (orphaned) mailbox.
RECIPIENT_CACHE_SECONDS = 10.0
RECIPIENT_CACHE_ENTRIES = 10000
# How long stopping waits for the listeners to close once every session was told 421.
STOP_SECONDS = 3.0
# Role addresses every hosted domain has, whether or not an account of that name exists: RFC 5321
# §4.5.1 requires postmaster; RFC 2142 §2 names abuse for reports of misuse (DMARC and TLS-RPT
# aggregate reports arrive at the addresses `peerage dns` publishes, which are postmaster@).
ROLE_ADDRESSES = REPORT_ADDRESSES
# How often the report loop looks for finished intervals (and prunes once a day).
REPORT_TICK_SECONDS = 300.0
# DMARC results are counted in memory and written at most this often (or at this many distinct rows):
# one database write per message cost the MX about 40 % of its throughput (bench/smtp). A crash loses
# at most this many seconds of counts, which an aggregate report can bear.
DMARC_FLUSH_SECONDS = 5.0
DMARC_FLUSH_ROWS = 500


class MailService:
    def __init__(self) -> None:
        self.host: Any = None
        self.servers: list[asyncio.base_events.Server] = []
        self.queue: OutboundQueue | None = None
        self.imap: Any = None
        self.sieve: Any = None
        self.managesieve: Any = None
        self._keys: dict[str, dkim.DomainKeys | None] = {}
        self._known_recipients: dict[str, float] = {}
        self._postmaster: tuple[str | None, float] | None = None
        self.smtp_sessions: set[Any] = set()
        self.greeting_passes: dict[str, float] = {}
        # Set in an MX worker process: accepted messages travel to the main process to be stored.
        self.worker_channel: channel.WorkerChannel | None = None
        self.workers: channel.WorkerPool | None = None
        self.reports: Any = None  # peerage.mail.reports.store.ReportStore, in the main process
        self.reporter: Any = None
        self._report_task: asyncio.Task[None] | None = None
        self._dmarc_pending: dict[tuple[float, str], int] = {}
        self._dmarc_since = 0.0
        # TLS-RPT: our outbound sessions' TLS outcomes, counted in memory and written by the report
        # loop (at most a few seconds of counts are lost in a crash, as with DMARC's).
        self.tls_reporter: Any = None
        self._tls_pending: dict[tuple[float, str, str], int] = {}

    # --- shared state the handlers use ---------------------------------------------------------------

    @property
    def domains(self) -> list[str]:
        return list(self.host.config.domains)

    def is_hosted(self, domain: str) -> bool:
        return bool(self.host.accounts.is_local_domain(domain))

    async def recipient_exists(self, address: str) -> bool:
        """Whether a local account exists; positive answers are cached for a few seconds, since one
        busy sender asks about the same recipients again and again."""
        now = time.monotonic()
        expires = self._known_recipients.get(address)
        if expires is not None and expires > now:
            return True
        exists = bool(await self.host.accounts.exists(address))
        if exists:
            if len(self._known_recipients) >= RECIPIENT_CACHE_ENTRIES:
                self._known_recipients.clear()
            self._known_recipients[address] = now + RECIPIENT_CACHE_SECONDS
        return exists

    async def route_recipient(self, address: str) -> str | None:
        """The account a hosted address is delivered to, or None when there is none.

        postmaster@ (RFC 5321 §4.5.1) and abuse@ (RFC 2142 §2) exist on every hosted domain: an account
        of that name gets its own mail, otherwise `[smtp] postmaster` does (default: the first account
        created on this server). The role names are matched without regard to case, as RFC 5321 asks
        for postmaster."""
        if await self.recipient_exists(address):
            return address
        local, _, domain = address.rpartition("@")
        if local.lower() not in ROLE_ADDRESSES or not self.is_hosted(domain):
            return None
        return await self.postmaster_account()

    async def postmaster_account(self) -> str | None:
        configured = self.host.config.smtp.postmaster
        if configured:
            return str(configured)
        now = time.monotonic()
        if self._postmaster is not None and self._postmaster[1] > now:
            return self._postmaster[0]
        from sqlalchemy import select

        from peerage.store.schema import accounts

        async with self.host.store.begin() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.address).order_by(accounts.c.created_at, accounts.c.address).limit(1)
                )
            ).first()
        found = str(row[0]) if row is not None else None
        self._postmaster = (found, now + RECIPIENT_CACHE_SECONDS)
        return found

    def start_spf(self, ip: str, mail_from: str, helo: str) -> asyncio.Future[SpfResult]:
        """Begin the SPF check at MAIL FROM, so it runs while the client sends recipients and data.
        When every answer it needs is cached it completes at once, without a thread."""
        with cache_only():
            try:
                result = spf_check(ip, mail_from, helo, self.lookup)
            except CacheMiss:
                pass
            else:
                done: asyncio.Future[SpfResult] = asyncio.get_running_loop().create_future()
                done.set_result(result)
                return done
        return asyncio.ensure_future(asyncio.to_thread(spf_check, ip, mail_from, helo, self.lookup))

    async def authenticate(
        self, data: bytes, ip: str, mail_from: str, helo: str, spf_task: asyncio.Future[SpfResult] | None = None
    ) -> AuthenticationResults | None:
        try:
            spf_result = await spf_task if spf_task is not None else None
            return await authenticate_async(data, ip, mail_from, helo, self.lookup, self.host.dns, spf_result)
        except Exception:
            log.exception("message authentication failed for a message from %s", ip)
            return None

    def keys(self, domain: str) -> dkim.DomainKeys | None:
        domain = domain.lower()
        if domain not in self._keys:
            self._keys[domain] = dkim.load_keys(self.host.config.data_dir, domain) if self.is_hosted(domain) else None
        return self._keys[domain]

    async def _shared_keys(self, domain: str) -> dkim.DomainKeys | None:
        """In a cluster: the keys of `domain` every node signs with, from the database (made once)."""
        domain = domain.lower()
        if domain not in self._keys:
            self._keys[domain] = (await dkim.shared_keys(self.host.cluster.keys, domain, create=True,
                                                         data_dir=self.host.config.data_dir)
                                  if self.is_hosted(domain) else None)
        return self._keys[domain]

    async def sign(self, domain: str, data: bytes) -> bytes:
        if getattr(self.host, "cluster", None) is not None:
            keys = await self._shared_keys(domain)
        else:
            keys = self.keys(domain)
        if keys is None:
            return data
        try:
            return await asyncio.to_thread(dkim.sign, data, keys)
        except Exception:
            log.exception("DKIM signing for %s failed; sending unsigned", domain)
            return data

    async def resign(self, data: bytes) -> bytes:
        """Replace our own DKIM signatures on a message we rewrote (the SMTPUTF8 downgrade): the
        DKIM-Signature fields of hosted domains are dropped and the message is signed again for the
        first such domain. Signatures of other domains are left as they are (they no longer verify,
        as RFC 6857 §5 warns)."""
        fields = dkim.strip_own_signatures(data, self.is_hosted)
        if fields is None:
            return data
        domain, stripped = fields
        return await self.sign(domain, stripped)

    async def deliver_local(self, address: str, data: bytes, folder: str = "INBOX", *, mail_from: str | None = None) -> None:
        """Put a message for a local address into its mailbox. Mail arriving for INBOX passes the
        account's Sieve script first (peerage.mail.sieve.delivery); other folders (DMARC quarantine
        to Junk) are stored as they are. With the envelope sender known this is the final delivery
        of RFC 5321 §4.4, which puts the reverse-path in front as Return-Path ("<>" for the null
        sender); a Return-Path the message arrived with is dropped, as Postfix's cleanup does."""
        if mail_from is not None:
            data = with_return_path(data, mail_from)
        if self.sieve is not None and folder == "INBOX" and mail_from is not None:
            await self.sieve.deliver(self.local.owner_of(address), address, data, mail_from)
            return
        await self.local.deliver(address, data, folder)

    async def accept(
        self,
        *,
        mail_from: str,
        local: list[str],
        remote: list[str],
        data: bytes,
        prefix: Callable[[str], bytes],
        folder: str,
        smtputf8: bool,
        report: bool = False,
        dmarc: dict[str, Any] | None = None,
    ) -> None:
        """Make the message durable for every recipient; raise if that cannot be done.

        `prefix(recipient)` gives the trace fields (Received, Authentication-Results) for one copy.
        In an MX worker process, the message goes to the main process, which stores it and answers.
        """
        request = channel.Delivery(
            mail_from=mail_from,
            local=[(rcpt, prefix(rcpt)) for rcpt in local],
            remote=list(remote),
            remote_prefix=prefix(remote[0] if len(remote) == 1 else "") if remote else b"",
            folder=folder,
            smtputf8=smtputf8,
            data=data,
            report=report,
            dmarc=dmarc,
        )
        if self.worker_channel is not None:
            await self.worker_channel.deliver(request)
        else:
            await self.store_delivery(request)

    async def store_delivery(self, request: channel.Delivery) -> None:
        """Local recipients get the message in their mailbox at once (atomic per recipient); if one of
        those fails, it and the ones after it go through the queue instead. Remote ones are queued."""
        assert self.queue is not None
        pending = list(request.local)
        while pending:
            rcpt, trace = pending[0]
            try:
                await self.deliver_local(rcpt, trace + request.data, request.folder, mail_from=request.mail_from)
            except Exception:
                log.exception("direct delivery to %s failed; queueing", rcpt)
                break
            pending.pop(0)
        for rcpt, trace in pending:
            await self.queue.enqueue(request.mail_from, [rcpt], trace + request.data, smtputf8=request.smtputf8)
        if request.remote:
            await self.queue.enqueue(
                request.mail_from, request.remote, request.remote_prefix + request.data, smtputf8=request.smtputf8
            )
        if request.dmarc is not None:
            await self.note_dmarc(request.dmarc)
        if request.report and self.reports is not None and self.host.config.reports.receive:
            await self._read_reports(request.mail_from, request.data)

    async def note_dmarc(self, seen: dict[str, Any]) -> None:
        """Count one DMARC evaluation for our aggregate reports, in memory; written in batches. Never
        fails the delivery. In an MX worker process only accepted mail reaches the main process, so
        rejected mail is not counted there."""
        if self.reports is None or self.reporter is None:
            return
        import json

        key = (self.reporter.period_of(time.time()), json.dumps(seen, sort_keys=True))
        if not self._dmarc_pending:
            self._dmarc_since = time.monotonic()
        self._dmarc_pending[key] = self._dmarc_pending.get(key, 0) + 1
        if (len(self._dmarc_pending) >= DMARC_FLUSH_ROWS
                or time.monotonic() - self._dmarc_since >= DMARC_FLUSH_SECONDS):
            await self.flush_dmarc()

    async def flush_dmarc(self) -> None:
        if not self._dmarc_pending or self.reports is None:
            return
        import json

        from peerage.mail.reports.store import Seen

        pending, self._dmarc_pending = self._dmarc_pending, {}
        for (period, text), count in pending.items():
            try:
                await self.reports.record(period, Seen.from_json(json.loads(text)), count)
            except Exception:
                log.exception("counting a DMARC result for the aggregate report failed")

    def note_tls(self, session: Any) -> None:
        """Count one outbound session's TLS outcome (peerage.mail.smtp.client.TlsSession) for our
        TLS-RPT reports (RFC 8460), in memory."""
        if self.tls_reporter is None or not self.host.config.reports.send_tlsrpt:
            return
        import json

        record = {"policy_type": session.policy_type, "policy_strings": list(session.policy_strings),
                  "mx_patterns": list(session.mx_patterns), "result_type": session.result_type,
                  "mx_host": session.mx_host, "receiving_ip": session.receiving_ip,
                  "sending_ip": session.sending_ip, "info": session.info}
        key = (self.tls_reporter.period_of(time.time()), session.domain, json.dumps(record, sort_keys=True))
        if len(self._tls_pending) < DMARC_FLUSH_ROWS * 10 or key in self._tls_pending:
            self._tls_pending[key] = self._tls_pending.get(key, 0) + 1

    async def flush_tls(self) -> None:
        if not self._tls_pending or self.reports is None:
            return
        import json

        pending, self._tls_pending = self._tls_pending, {}
        for (period, domain, text), count in pending.items():
            try:
                await self.reports.record_tls(period, domain, json.loads(text), count)
            except Exception:
                log.exception("counting a TLS result for the TLS report failed")

    async def _read_reports(self, sender: str, data: bytes) -> None:
        from peerage.mail.reports.parse import BadReport, reports_in

        try:
            found = await asyncio.to_thread(reports_in, data)
        except BadReport as exc:
            log.warning("a report from %s was not read: %s", sender or "<>", exc)
            return
        except Exception:
            log.exception("a report from %s could not be read", sender or "<>")
            return
        for report in found:
            stored = await self.reports.save(report, sender)
            log.info("%s report %s from %s for %s: %d messages, %d failed%s", report.kind, report.report_id,
                     report.org_name, report.policy_domain, report.messages, report.failed,
                     "" if stored else " (already stored)")

    def _start_reports(self) -> None:
        from peerage.mail.reports.outgoing import AggregateReporter
        from peerage.mail.reports.store import ReportStore
        from peerage.mail.reports.tlsrpt import TlsReporter

        config = self.host.config.reports
        assert self.queue is not None
        queue = self.queue
        self.reports = ReportStore(self.host.store)

        async def enqueue(mail_from: str, recipients: list[str], data: bytes) -> None:
            await queue.enqueue(mail_from, recipients, data)

        async def txt(name: str) -> list[Any]:
            return list(await self.host.dns.txt(name))

        from_address = config.from_address or f"postmaster@{self.domains[0] if self.domains else self.hostname}"
        self.reporter = AggregateReporter(
            self.reports, txt=txt, enqueue=enqueue, sign=self.sign, org_name=config.org_name or self.hostname,
            from_address=from_address, hostname=self.hostname, interval=config.interval_seconds,
            max_per_hour=config.max_per_hour, max_rows=config.max_rows,
        )
        self.tls_reporter = TlsReporter(
            self.reports, txt=txt, enqueue=enqueue, sign=self.sign, org_name=config.org_name or self.hostname,
            from_address=from_address, hostname=self.hostname, interval=config.interval_seconds,
            max_per_hour=config.max_per_hour,
        )
        if config.send_dmarc or config.send_tlsrpt:
            self._report_task = asyncio.get_running_loop().create_task(self._report_loop())

    async def _report_loop(self) -> None:
        config = self.host.config.reports
        tick = min(REPORT_TICK_SECONDS, DMARC_FLUSH_SECONDS, max(0.5, config.interval_seconds / 4))
        pruned = 0.0
        while True:
            try:
                await self.flush_dmarc()
                await self.flush_tls()
                if config.send_dmarc:
                    await self.reporter.run_once()
                if config.send_tlsrpt:
                    await self.tls_reporter.run_once()
                now = time.time()
                if now - pruned > 86400.0:
                    await self.reports.prune(now - config.keep_days * 86400.0)
                    pruned = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the report loop failed; trying again later")
            await asyncio.sleep(tick)

    # --- life cycle --------------------------------------------------------------------------------

    def _prepare(self, host: Any) -> None:
        """State the handlers need, in the main process and in MX workers alike."""
        self.host = host
        config = host.config
        self.local = LocalDelivery(host)
        if config.sieve.enabled:
            from peerage.mail.sieve.delivery import SieveDelivery

            self.sieve = SieveDelivery(host, self)
        smtp = config.smtp
        self.hostname = smtp.hostname or config.server.public_hostname or (self.domains[0] if self.domains else "localhost")
        self.connections = host.limits.connections
        per_minute = max(smtp.mx_messages_per_minute, 1)
        self.mx_rate = RateLimiter(per_minute / SECONDS_PER_MINUTE, per_minute)
        self.lookup = SyncLookup(list(config.dns.nameservers), config.dns.port, config.dns.timeout)

    async def start(self, host: Any) -> None:
        self._prepare(host)
        if host.config.web.enabled:
            # JMAP and the mail discovery documents, served by the web service (which starts later).
            from peerage.mail.jmap import register as register_jmap

            register_jmap(host, self)
        if host.config.smtp.enabled:
            await self._start_smtp()
        if host.config.imap.enabled:
            await self._start_imap()
        if host.config.sieve.enabled and host.config.sieve.listen:
            from peerage.mail.sieve.managesieve import ManageSieveService

            self.managesieve = ManageSieveService()
            await self.managesieve.start(host)

    async def start_worker(self, host: Any, socket_path: Path, before_ready: Callable[[], Any] | None = None) -> None:
        """Run as an MX worker process: SMTP sessions here, storage in the main process.

        `before_ready` runs once the MX port is bound and before the worker says it is ready (and so
        before any session): the privilege drop."""
        self._prepare(host)
        self.worker_channel = channel.WorkerChannel(socket_path)
        await self.worker_channel.open()
        smtp = host.config.smtp
        tls_context = host.tls.server_context() if host.tls.available else None
        factory = make_server_factory(
            MxHandler(self), hostname=self.hostname, tls_context=tls_context, max_size=smtp.max_message_size,
            greeting_delay=smtp.greeting_delay_seconds,
        )
        loop = asyncio.get_running_loop()
        inherited = [int(fd) for fd in os.environ.get(channel.MX_FDS_ENV, "").split(",") if fd]
        if inherited:  # the main process bound the MX sockets
            for fd in inherited:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                self.servers.append(await loop.create_server(factory, sock=sock))
        else:
            for spec in smtp.mx_listen:
                address, port = parse_listen(spec)
                server = await loop.create_server(factory, address, port, reuse_address=True, reuse_port=True)
                self.servers.append(server)
        if before_ready is not None:
            before_ready()
        self.worker_channel.send_ready()

    async def _start_smtp(self) -> None:
        config = self.host.config
        smtp = config.smtp
        # `peerage init` creates each domain's DKIM keys; a domain added to the configuration later
        # gets them here, so outgoing mail is never left unsigned. A cluster keeps them in its
        # database, made by the first node that starts (peerage.cluster.blobs.SharedKeys).
        for domain in self.domains:
            if getattr(self.host, "cluster", None) is not None:
                await self._shared_keys(domain)
            else:
                await asyncio.to_thread(dkim.generate_keys, config.data_dir, domain)
        self.deliverer = Deliverer(
            dns=self.host.dns,
            hostname=self.hostname,
            port=smtp.remote_port,
            ca_file=str(config.tls.ca_file) if config.tls.ca_file else None,
            source_address=smtp.source_address or None,
            connections_per_destination=smtp.connections_per_domain,
            resign=self.resign,
            on_tls=self.note_tls,
        )
        schedule = Schedule(
            first_retry=smtp.first_retry_seconds,
            lifetime=smtp.queue_lifetime_hours * 3600.0,
            delay_warning=smtp.delay_warning_hours * 3600.0,
        )
        self.queue = OutboundQueue(
            store=self.host.store,
            spool_dir=config.data_dir / "queue",
            schedule=schedule,
            is_local=self.is_hosted,
            deliver_local=self.deliver_local,
            deliver_remote=self._deliver_remote,
            reporting_mta=self.hostname,
        )
        if getattr(self.host, "cluster", None) is not None:
            self.host.cluster.attach_queue(self.queue)  # peerage.cluster: one queue for every node
        await self.queue.recover()
        self.local.start()
        tls_context = self.host.tls.server_context() if self.host.tls.available else None
        loop = asyncio.get_running_loop()
        mx = MxHandler(self)
        submission = SubmissionHandler(self)
        plans: list[tuple[str, list[str], Callable[[], Any], Any]] = [
            ("smtp", smtp.mx_listen, make_server_factory(mx, hostname=self.hostname, tls_context=tls_context,
                                                         max_size=smtp.max_message_size,
                                                         greeting_delay=smtp.greeting_delay_seconds), None),
        ]
        if tls_context is not None:
            plans.append(("submission", smtp.submission_listen, make_server_factory(
                submission, hostname=self.hostname, tls_context=tls_context, max_size=smtp.max_message_size,
                submission=True), None))
            plans.append(("submissions", smtp.submissions_listen, make_server_factory(
                submission, hostname=self.hostname, tls_context=tls_context, max_size=smtp.max_message_size,
                submission=True, implicit_tls=True), tls_context))
        else:
            log.warning("no certificate configured: SMTP submission (587/465) is disabled, MX has no STARTTLS")
        if smtp.mx_workers > 0:
            # The workers own the MX port; this process stores what they accept.
            plans = [plan for plan in plans if plan[0] != "smtp"]
            self.workers = channel.WorkerPool(config.data_dir / "run" / "mx.sock", self.store_delivery)
            await self.workers.start(smtp.mx_workers, config.path, [parse_listen(spec) for spec in smtp.mx_listen])
            for spec in smtp.mx_listen:
                address, port = parse_listen(spec)
                log.info("listening smtp on %s:%d (%d worker processes)", address, port, smtp.mx_workers)
        for proto, listens, factory, ssl_context in plans:
            for spec in listens:
                address, port = parse_listen(spec)
                server = await loop.create_server(factory, address, port, ssl=ssl_context, reuse_address=True)
                self.servers.append(server)
                log.info("listening %s on %s:%d", proto, address, port)
        self.queue.start()
        self._start_reports()

    async def _deliver_remote(
        self, domain: str, mail_from: str, recipients: list[str], data: bytes, smtputf8: bool
    ) -> dict[str, Outcome]:
        if not mail_from:
            # A DSN we generate: sign it with our own name's keys when we have them.
            data = await self.sign(self.hostname, data)
        return await self.deliverer.deliver(domain, mail_from, recipients, data, smtputf8=smtputf8)

    async def _start_imap(self) -> None:
        from peerage.mail.imap.service import ImapService  # loaded only when IMAP is enabled

        self.imap = ImapService()
        await self.imap.start(self.host)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush_dmarc()
        with contextlib.suppress(Exception):
            await self.flush_tls()
        if self._report_task is not None:
            self._report_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._report_task
            self._report_task = None
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        if self.imap is not None:
            await self.imap.stop()
            self.imap = None
        if self.managesieve is not None:
            await self.managesieve.stop()
            self.managesieve = None
        for server in self.servers:
            server.close()
        for session in list(self.smtp_sessions):
            session.shut_down()
        for server in self.servers:
            # uvloop's wait_closed waits for every connection; a closed one may still be draining.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), STOP_SECONDS)
        self.servers.clear()
        if self.queue is not None:
            await self.queue.stop()
        await self.local.stop()
        if self.worker_channel is not None:
            await self.worker_channel.close()
