"""Outbound SMTP: deliver one message to the recipients of one remote domain.

This module is in charge of finding where a domain's mail goes (MX, then the domain's own A/AAAA as
RFC 5321 §5.1 says, honouring a null MX of RFC 7505), of choosing how much TLS to require (opportunistic
STARTTLS; verified TLS when the domain publishes an MTA-STS policy in enforce mode, tried first and
reported but not required in testing mode; a TLSA match when the MX publishes DANE records), and of
reporting a per-recipient outcome the queue can act on. Every TLS outcome of a session (success, or
the RFC 8460 §4.3 result type of its failure) is passed to ``on_tls`` for our TLS-RPT reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from peerage.mail.auth import dane
from peerage.mail.auth.mtasts import PolicyFetcher
from peerage.mail.smtp import downgrade

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.2 gives per-command timeouts of 5 minutes (DATA end: 10); Postfix uses 300 s for
# most and 600 s for the end of DATA. We keep the RFC's figure for the whole exchange of one command.
COMMAND_TIMEOUT_SECONDS = 300.0
# Postfix's smtp_quit_timeout is 300 s, but nothing depends on the answer to QUIT: we wait briefly and
# close (Exim does not wait for it at all).
QUIT_TIMEOUT_SECONDS = 10.0
# Postfix's smtp_connect_timeout is 30 s.
CONNECT_TIMEOUT_SECONDS = 30.0
# At most this many MX hosts are tried per attempt (Postfix's smtp_mx_address_limit is 5).
MAX_MX_TRIED = 5
# Connections open at once to one destination domain. Postfix starts a destination at
# initial_destination_concurrency = 5 and grows to default_destination_concurrency_limit = 20 only
# while deliveries succeed; Exim's remote_max_parallel is 2 per message. A peer that counts connections
# per client (Postfix's smtpd_client_connection_count_limit is 50, Exim's smtp_accept_max_per_host is
# often set to 10 or less) must never see us exceed its limit, so we keep Postfix's starting figure.
MAX_CONNECTIONS_PER_DESTINATION = 5

DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # DELIVERED, TEMPORARY or PERMANENT
    reply: str  # the remote reply or our explanation
    status: str  # enhanced status code, e.g. "5.1.1"
    remote_mta: str = ""
    tls: str = ""  # "none", "opportunistic", "mta-sts", "dane": what the connection reached
    tls_failed: bool = False  # the TLS handshake itself failed (opportunistic TLS may retry in clear)
    tls_result: str = ""  # RFC 8460 §4.3 result type of a TLS failure in this session
    local_ip: str = ""  # our end of the connection (TLS-RPT's sending-mta-ip)


@dataclass(frozen=True, slots=True)
class TlsSession:
    """One delivery session's TLS outcome, as RFC 8460 §4.4 reports it."""

    domain: str
    policy_type: str  # "sts", "tlsa" or "no-policy-found"
    policy_strings: tuple[str, ...]
    mx_patterns: tuple[str, ...]  # the MTA-STS policy's mx lines
    result_type: str  # "" for a successful TLS session
    mx_host: str
    receiving_ip: str
    sending_ip: str
    info: str = ""


def _certificate_failure(exc: BaseException) -> str:
    """The RFC 8460 §4.3.2.3 result type of a failed verified handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return "certificate-expired"
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return "certificate-host-mismatch"
        if code in (18, 19, 20, 21, 2):  # self-signed, untrusted or unknown issuer
            return "certificate-not-trusted"
    return "validation-failure"


def _status_of(code: int, message: str, default_class: str) -> str:
    first = message.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return first
    return f"{str(code)[0] if code else default_class}.0.0"


class Deliverer:
    """Delivers to remote domains. `dns` is `host.dns`; `client_context` builds TLS contexts."""

    def __init__(
        self,
        *,
        dns: Any,
        hostname: str,
        port: int = 25,
        ca_file: str | None = None,
        source_address: str | None = None,
        connections_per_destination: int = MAX_CONNECTIONS_PER_DESTINATION,
        resign: Callable[[bytes], Awaitable[bytes]] | None = None,
        on_tls: Callable[[TlsSession], None] | None = None,
    ) -> None:
        self.dns = dns
        self.hostname = hostname
        self.port = port
        self.ca_file = ca_file
        self.source_address = source_address
        self.mta_sts = PolicyFetcher(dns, ca_file)
        self.connections_per_destination = max(1, connections_per_destination)
        # A downgraded message no longer matches our own DKIM signature: this signs it again.
        self.resign = resign
        self.on_tls = on_tls
        # One semaphore per destination domain with a delivery in progress; dropped when idle.
        self._destinations: dict[str, tuple[asyncio.Semaphore, int]] = {}
        # Connections open right now, per destination domain (for tests and `peerage check`).
        self.open_connections: dict[str, int] = {}

    async def _mx_hosts(self, domain: str) -> list[str] | None:
        """MX targets in preference order; [] for a null MX; None when the domain does not exist."""
        try:
            answer = await self.dns.mx(domain)
        except Exception as exc:
            log.info("MX lookup for %s failed: %s", domain, exc)
            answer = []
        records: list[tuple[int, str]] = []
        for item in answer or []:
            if isinstance(item, tuple):
                preference, host = item[0], item[1]
            else:
                preference = getattr(item, "preference", 0)
                host = getattr(item, "exchange", None) or getattr(item, "host", None) or getattr(item, "target", "")
            records.append((int(preference), str(host).rstrip(".").lower()))
        records.sort(key=lambda r: r[0])
        if len(records) == 1 and records[0][1] in ("", "."):
            return []  # RFC 7505 null MX: the domain accepts no mail
        if records:
            return [host for _, host in records if host][:MAX_MX_TRIED]
        return [domain]  # RFC 5321 §5.1: no MX, the domain itself is the host

    async def _addresses(self, host: str) -> list[str]:
        found: list[str] = []
        for lookup in (self.dns.a, self.dns.aaaa):
            try:
                found.extend(str(a) for a in (await lookup(host)) or [])
            except Exception as exc:
                log.debug("address lookup for %s failed: %s", host, exc)
        return found

    async def _tlsa(self, mx_host: str) -> list[dane.Tlsa]:
        try:
            answer, secure = await self.dns.tlsa(f"_{self.port}._tcp.{mx_host}")
        except Exception:
            return []
        if not secure:
            # RFC 7672 §2.2: TLSA records from an unsigned or unvalidated zone are unusable.
            return []
        records = []
        for item in answer or []:
            if isinstance(item, tuple):
                records.append(dane.Tlsa(int(item[0]), int(item[1]), int(item[2]), bytes(item[3])))
            else:
                records.append(dane.Tlsa(int(item.usage), int(item.selector), int(item.mtype), bytes(item.data)))
        return dane.usable(records)

    async def deliver(
        self, domain: str, mail_from: str, recipients: list[str], data: bytes, *, smtputf8: bool = False
    ) -> dict[str, Outcome]:
        """Try every MX in turn; the first one that gives a definite answer decides. Never raises: any
        failure, ours or the peer's, is a temporary outcome for every recipient, so the queue backs off."""
        domain = domain.lower()
        semaphore, users = self._destinations.get(domain) or (asyncio.Semaphore(self.connections_per_destination), 0)
        self._destinations[domain] = (semaphore, users + 1)
        try:
            async with semaphore:
                return await self._deliver(domain, mail_from, recipients, data, smtputf8=smtputf8)
        except Exception as exc:
            log.exception("delivery to %s failed", domain)
            return dict.fromkeys(recipients, Outcome(TEMPORARY, f"delivery to {domain} failed: {exc!r}", "4.3.0"))
        finally:
            semaphore, users = self._destinations[domain]
            if users <= 1:
                del self._destinations[domain]
            else:
                self._destinations[domain] = (semaphore, users - 1)

    async def _deliver(
        self, domain: str, mail_from: str, recipients: list[str], data: bytes, *, smtputf8: bool
    ) -> dict[str, Outcome]:
        # RFC 6531 §3.4: SMTPUTF8 is needed when an envelope address or a header is not ASCII. A message
        # submitted with SMTPUTF8 that needs none of it travels without (nothing to downgrade).
        # A message whose body alone is 8-bit needs 8BITMIME, not SMTPUTF8.
        smtputf8 = downgrade.needs_smtputf8(mail_from, recipients, data)
        hosts = await self._mx_hosts(domain)
        if hosts == []:
            return dict.fromkeys(
                recipients, Outcome(PERMANENT, f"{domain} accepts no mail (null MX, RFC 7505)", "5.1.10")
            )
        policy = await self.mta_sts.policy(domain)
        enforce = policy is not None and policy.mode == "enforce"
        # RFC 8461 §5: in testing mode the policy is checked and failures reported, but not enforced.
        testing = policy is not None and policy.mode == "testing"
        if policy is None and domain in self.mta_sts.failures:
            # RFC 8460 §4.3.2.2: a policy announced in DNS that could not be fetched or read.
            result_type, info = self.mta_sts.failures[domain]
            self._note(TlsSession(domain, "sts", (), (), result_type, "", "", self.source_address or "", info))
        last = Outcome(TEMPORARY, f"no reachable mail server for {domain}", "4.4.1")
        for host in hosts or []:
            checked = enforce or testing
            if checked and policy is not None and not policy.matches(host):
                self._note(self._session_of(domain, policy, [], host, "", "validation-failure",
                                            f"MX {host} is not named by the MTA-STS policy"))
                if enforce:
                    last = Outcome(TEMPORARY, f"MX {host} is not allowed by the MTA-STS policy of {domain}", "4.7.5")
                    continue
                checked = False
            tlsa = await self._tlsa(host)
            for address in await self._addresses(host):
                outcome = await self._deliver_to(
                    host, address, mail_from, recipients, data, smtputf8=smtputf8, mta_sts=checked, tlsa=tlsa
                )
                self._note_outcome(domain, policy if checked else None, tlsa, host, address, outcome)
                if isinstance(outcome, Outcome) and outcome.tls_failed and testing and checked and not tlsa:
                    # The testing policy's failure is reported; the mail goes on with opportunistic TLS.
                    outcome = await self._deliver_to(
                        host, address, mail_from, recipients, data, smtputf8=smtputf8, mta_sts=False, tlsa=[]
                    )
                if isinstance(outcome, Outcome) and outcome.tls_failed and not enforce and not tlsa:
                    # RFC 7435 §3 (opportunistic security): a failed handshake with a server no policy
                    # protects falls back to a cleartext session, as Postfix's "may" level does.
                    outcome = await self._deliver_to(
                        host, address, mail_from, recipients, data, smtputf8=smtputf8, mta_sts=False, tlsa=[],
                        cleartext=True,
                    )
                if isinstance(outcome, dict):
                    return outcome
                last = outcome
        return dict.fromkeys(recipients, last)

    # --- TLS-RPT (RFC 8460) ----------------------------------------------------------------------

    def _note(self, session: TlsSession) -> None:
        if self.on_tls is not None:
            try:
                self.on_tls(session)
            except Exception:
                log.exception("recording a TLS result for TLS-RPT failed")

    def _session_of(self, domain: str, policy: Any, tlsa: list[dane.Tlsa], host: str, address: str,
                    result_type: str, info: str = "", sending_ip: str = "") -> TlsSession:
        if tlsa:
            strings = tuple(f"{t.usage} {t.selector} {t.mtype} {t.data.hex()}" for t in tlsa)
            return TlsSession(domain, "tlsa", strings, (), result_type, host, address,
                              sending_ip or self.source_address or "", info)
        if policy is not None:
            # RFC 8460 §4.4: the policy as the lines of the policy file.
            strings = ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {m}" for m in policy.mx),
                       f"max_age: {policy.max_age}")
            return TlsSession(domain, "sts", strings, tuple(policy.mx), result_type, host, address,
                              sending_ip or self.source_address or "", info)
        return TlsSession(domain, "no-policy-found", (), (), result_type, host, address,
                          sending_ip or self.source_address or "", info)

    def _note_outcome(self, domain: str, policy: Any, tlsa: list[dane.Tlsa], host: str, address: str,
                      outcome: dict[str, Outcome] | Outcome) -> None:
        """A session's TLS outcome. Sessions that never reached the TLS step (a refused connection, a
        421 greeting) are not TLS results and are not counted."""
        if isinstance(outcome, dict):
            first = next(iter(outcome.values()), None)
            if first is None:
                return
            if first.tls == "none":
                # No STARTTLS offered (a policy would have refused the session before this).
                self._note(self._session_of(domain, policy, tlsa, host, address, "starttls-not-supported",
                                            "the MX did not offer STARTTLS", first.local_ip))
            else:
                self._note(self._session_of(domain, policy, tlsa, host, address, "", "", first.local_ip))
        elif outcome.tls_result:
            self._note(self._session_of(domain, policy, tlsa, host, address, outcome.tls_result, outcome.reply[:200],
                                        outcome.local_ip))

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        if verify:
            context = ssl.create_default_context(cafile=self.ca_file)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _deliver_to(
        self,
        host: str,
        address: str,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        *,
        smtputf8: bool,
        mta_sts: bool,
        tlsa: list[dane.Tlsa],
        cleartext: bool = False,
    ) -> dict[str, Outcome] | Outcome:
        """One connection. A dict is a definite answer per recipient; a single Outcome means 'try the
        next host'."""
        client = aiosmtplib.SMTP(
            hostname=address,
            port=self.port,
            local_hostname=self.hostname,
            source_address=(self.source_address, 0) if self.source_address else None,
            timeout=COMMAND_TIMEOUT_SECONDS,
            start_tls=False,
            use_tls=False,
        )
        tls_level = "none"
        domain = recipients[0].rpartition("@")[2].lower() if recipients else host
        self.open_connections[domain] = self.open_connections.get(domain, 0) + 1
        try:
            return await self._session(
                client, host, address, mail_from, recipients, data,
                smtputf8=smtputf8, mta_sts=mta_sts, tlsa=tlsa, cleartext=cleartext,
            )
        except Exception as exc:
            # Whatever went wrong (a reply we could not parse, an encoding error, a bug), the
            # connection is closed and the attempt counts as a temporary failure of this host.
            log.warning("delivery to %s [%s] failed: %r", host, address, exc)
            return Outcome(TEMPORARY, f"{host} [{address}]: {exc!r}", "4.4.0", host, tls_level)
        finally:
            with contextlib.suppress(Exception):
                client.close()
            left = self.open_connections.get(domain, 1) - 1
            if left > 0:
                self.open_connections[domain] = left
            else:
                self.open_connections.pop(domain, None)

    async def _session(
        self,
        client: aiosmtplib.SMTP,
        host: str,
        address: str,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        *,
        smtputf8: bool,
        mta_sts: bool,
        tlsa: list[dane.Tlsa],
        cleartext: bool,
    ) -> dict[str, Outcome] | Outcome:
        tls_level = "none"
        local_ip = ""
        try:
            await client.connect(timeout=CONNECT_TIMEOUT_SECONDS)
            transport = client.transport
            sockname = transport.get_extra_info("sockname") if transport else None
            local_ip = str(sockname[0]) if sockname else ""
            await client.ehlo()
            if client.supports_extension("starttls") and not cleartext:
                verify = mta_sts and not tlsa
                try:
                    await client.starttls(tls_context=self._tls_context(verify), server_hostname=host)
                except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                    client.close()
                    cause = exc.__cause__ if isinstance(exc, aiosmtplib.SMTPException) and exc.__cause__ else exc
                    result = _certificate_failure(cause) if verify else "validation-failure"
                    return Outcome(TEMPORARY, f"{host}: TLS handshake failed: {exc}", "4.7.5", host, tls_failed=True,
                                   tls_result=result, local_ip=local_ip)
                tls_level = "mta-sts" if verify else "opportunistic"
                if tlsa:
                    transport = client.transport
                    ssl_object = transport.get_extra_info("ssl_object") if transport else None
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                    if not der or not dane.matches(der, tlsa):
                        await client.quit()
                        # RFC 8460 §4.3.2.1: no record of the RRset matched.
                        return Outcome(TEMPORARY, f"{host}: certificate does not match its TLSA records", "4.7.5", host,
                                       tls_result="tlsa-invalid", local_ip=local_ip)
                    tls_level = "dane"
                await client.ehlo()
            elif mta_sts or tlsa:
                await client.quit()
                return Outcome(TEMPORARY, f"{host} does not offer STARTTLS, which its domain requires", "4.7.4", host,
                               tls_result="starttls-not-supported", local_ip=local_ip)
            options = ["SMTPUTF8"] if smtputf8 and client.supports_extension("smtputf8") else []
            results: dict[str, Outcome] = {}
            envelope = {r: r for r in recipients}
            if smtputf8 and not options:
                # RFC 6531 §3.2: without the extension an internationalized message must not be sent as
                # it is; we send its RFC 6857 ASCII form where there is one and refuse the rest with
                # the RFC 6533 §3 codes: X.6.7 for an address with no ASCII form, X.6.9 for a message.
                try:
                    downgraded = downgrade.plan(mail_from, recipients, data)
                except downgrade.CannotDowngrade as exc:
                    await _quietly_quit(client)
                    status = "5.6.7" if not mail_from.isascii() else "5.6.9"
                    return dict.fromkeys(recipients, Outcome(
                        PERMANENT, f"{host} does not offer SMTPUTF8 (RFC 6531) and the message cannot be "
                        f"downgraded: {exc}", status, host, tls_level, local_ip=local_ip))
                for recipient in downgraded.refused:
                    results[recipient] = Outcome(
                        PERMANENT, f"{host} does not offer SMTPUTF8 (RFC 6531), needed for the non-ASCII "
                        f"address {recipient}", "5.6.7", host, tls_level, local_ip=local_ip)
                if not downgraded.recipients:
                    await _quietly_quit(client)
                    return results
                envelope = downgraded.recipients
                mail_from = downgraded.mail_from
                if downgraded.data is not None:
                    data = downgraded.data
                    if self.resign is not None:
                        data = await self.resign(data)
                log.info("%s does not offer SMTPUTF8: sending the RFC 6857 downgraded form", host)
            # RFC 6531 §3.3: with SMTPUTF8 the envelope travels as UTF-8.
            encoding = "utf-8" if options else "ascii"
            if client.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            try:
                await client.mail(mail_from, options=options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                kind = PERMANENT if exc.code >= 500 else TEMPORARY
                await _quietly_quit(client)
                return results | dict.fromkeys(
                    envelope,
                    Outcome(kind, f"{exc.code} {exc.message}", _status_of(exc.code, exc.message, "4"), host, tls_level,
                                local_ip=local_ip),
                )
            accepted: list[str] = []
            for recipient in envelope:
                try:
                    await client.rcpt(envelope[recipient], encoding=encoding)
                    accepted.append(recipient)
                except aiosmtplib.SMTPResponseException as exc:
                    kind = PERMANENT if exc.code >= 500 else TEMPORARY
                    results[recipient] = Outcome(
                        kind, f"{exc.code} {exc.message}", _status_of(exc.code, exc.message, "4"), host, tls_level,
                        local_ip=local_ip,
                    )
            if accepted:
                try:
                    response = await client.data(data)
                    for recipient in accepted:
                        results[recipient] = Outcome(
                            DELIVERED, f"{response.code} {response.message}", "2.0.0", host, tls_level,
                            local_ip=local_ip,
                        )
                except aiosmtplib.SMTPResponseException as exc:
                    kind = PERMANENT if exc.code >= 500 else TEMPORARY
                    for recipient in accepted:
                        results[recipient] = Outcome(
                            kind, f"{exc.code} {exc.message}", _status_of(exc.code, exc.message, "4"), host, tls_level,
                            local_ip=local_ip,
                        )
            await _quietly_quit(client)
            return results
        except aiosmtplib.SMTPResponseException as exc:
            await _quietly_quit(client)
            if exc.code >= 500 and exc.code != 554:
                return Outcome(TEMPORARY, f"{host}: {exc.code} {exc.message}", "4.4.2", host)
            return Outcome(TEMPORARY, f"{host}: {exc.code} {exc.message}", "4.4.2", host)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            client.close()
            return Outcome(TEMPORARY, f"{host} [{address}]: {exc}", "4.4.1", host)


async def _quietly_quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit(timeout=QUIT_TIMEOUT_SECONDS)
    except Exception:
        client.close()
