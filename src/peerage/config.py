"""Configuration: one TOML file into typed, frozen settings.

This module is in charge of reading `peerage.toml`, checking every key against the dataclasses below,
and turning relative paths into absolute ones (relative to the file's folder). An unknown key, a value
of the wrong type or a missing certificate file is a `ConfigError` whose message names the key (as
`[section] key`) and says how to fix it.

Each protocol owns one section dataclass here; adding a setting is adding a typed field with a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

DEFAULT_CONFIG_NAME = "peerage.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Where `peerage serve` writes runtime status (s2s levels, queue state) for the CLI to read; empty
    # means status.json in data_dir. Like every path here, a relative one is relative to this file.
    status_file: Path | None = None
    # Addresses (no port) every service listens on, each on its usual ports, for every `*_listen` key
    # not set in its own section. Empty keeps each service's own defaults (all addresses).
    listen: list[str] = field(default_factory=list)
    # Unprivileged account to switch to once every listener is bound (when started as root); empty
    # stays as started. `group` defaults to the user's primary group.
    user: str = ""
    group: str = ""
    # "json" writes one JSON object per log line (time, level, logger, message) for log collectors.
    log_format: Literal["text", "json"] = "text"
    # The host name SRV and MX records point to (`peerage dns`); empty means the domain itself.
    public_hostname: str = ""
    # Public addresses for the A/AAAA records `peerage dns` prints; empty leaves a placeholder.
    public_ipv4: str = ""
    public_ipv6: str = ""


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty means SQLite in the data folder. "postgresql+asyncpg://user:pw@host/db" selects PostgreSQL.
    url: str = ""


@dataclass(frozen=True)
class DnsConfig:
    # Empty means the system resolver configuration (/etc/resolv.conf).
    nameservers: list[str] = field(default_factory=list)
    port: int = 53
    timeout: float = 5.0
    # Upper bound on how long an answer is cached, whatever its TTL says (RFC 2308 suggests 1-3 hours
    # for negative answers; unbound's cache-max-ttl defaults to one day).
    cache_max_ttl: int = 3600


@dataclass(frozen=True)
class TlsConfig:
    # Trust anchors for verifying peers' certificates (XEP-0238 "trusted", MTA-STS, SIPS). Empty means
    # the system store.
    ca_file: Path | None = None


@dataclass(frozen=True)
class DomainConfig:
    name: str
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class LimitsConfig:
    # Prosody's default for c2s per-IP is unlimited; ejabberd's max_user_sessions is 10 per account.
    # 64 concurrent connections from one address covers a NAT'ed office while stopping a single host
    # from exhausting file descriptors.
    connections_per_ip: int = 64
    # Authentication failures allowed per window before the address or account is throttled.
    # fail2ban's default for Dovecot/Postfix is 5 failures in 10 minutes; we answer slower rather than ban.
    auth_failures_per_ip: int = 10
    auth_failures_per_account: int = 5
    auth_failure_window: float = 600.0
    # Idle connections are closed after this many seconds (Prosody's c2s_timeout is 300 for
    # unauthenticated streams; Dovecot's IMAP autologout is 30 minutes).
    idle_timeout_unauthenticated: float = 60.0
    idle_timeout: float = 1800.0
    # Seconds from connect to a successful login on IMAP, SMTP submission and SIP TCP/TLS flows; a
    # connection still anonymous then is closed however much it trickles (ejabberd's
    # negotiation_timeout is 30 s; Postfix's smtpd_timeout of 300 s is per read, so a slow drip
    # defeats it, which is why this is a total).
    auth_deadline: float = 60.0
    # Connections not yet authenticated, summed over every client protocol, before new ones are
    # refused (Dovecot's default_client_limit is 1000 per login service).
    max_unauthenticated: int = 1000


@dataclass(frozen=True)
class FederationDomainPolicy:
    level: Literal["permissive", "verified", "encrypted", "trusted"] | None = None
    # Speak only pre-1.0 dialback without stream features (XEP-0238 service Type 1).
    legacy: bool = False


@dataclass(frozen=True)
class FederationConfig:
    # XEP-0238 level required of every remote domain unless overridden in `domains`.
    level: Literal["permissive", "verified", "encrypted", "trusted"] = "encrypted"
    # Behave as an XEP-0238 Type 1 (pre-RFC 3920) server: no version='1.0', no features, dialback only.
    legacy: bool = False
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    domains: dict[str, FederationDomainPolicy] = field(default_factory=dict)
    # Seconds an outbound stanza may wait for a connection before the sender gets an error.
    connect_timeout: float = 30.0
    # Seconds an idle s2s connection stays open (Prosody closes idle s2s after 5 minutes... by
    # default it keeps them; ejabberd's s2s_timeout is 10 minutes).
    idle_timeout: float = 600.0
    # Offer and request bidirectional streams (XEP-0288), so one connection carries both directions.
    bidi: bool = True
    # Seconds an inbound s2s connection has, from its TCP accept, to authenticate (dialback or SASL
    # EXTERNAL) before it is closed with <connection-timeout/>, however slowly it keeps sending.
    # ejabberd's negotiation_timeout is 30 s; Prosody's s2s_timeout (whole setup) is 90 s.
    negotiation_timeout: float = 30.0


@dataclass(frozen=True)
class ContactConfig:
    """XEP-0157 contact addresses each hosted domain lists in its disco#info ("{domain}" is replaced)."""

    # RFC 2142 section 2 names abuse@ for reports of misuse; the mail service always delivers
    # abuse@ and postmaster@ of every hosted domain ([smtp] postmaster), so those are the defaults.
    abuse: list[str] = field(default_factory=lambda: ["mailto:abuse@{domain}"])
    admin: list[str] = field(default_factory=lambda: ["mailto:postmaster@{domain}"])
    feedback: list[str] = field(default_factory=list)
    sales: list[str] = field(default_factory=list)
    security: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    support: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UploadConfig:
    """XEP-0363 HTTP File Upload on upload.DOMAIN, files served by the web service."""

    enabled: bool = True
    # Largest file, in bytes: Prosody's mod_http_file_share http_file_share_size_limit (10 MiB).
    max_file_size: int = 10 * 1024 * 1024
    # Bytes one account may have stored (unexpired files and open slots): Prosody's
    # http_file_share_daily_quota default is ten times the size limit; here it bounds what is kept.
    quota: int = 100 * 1024 * 1024
    # Days a file is kept (Prosody's http_file_share_expires_after is one week).
    expire_days: float = 7.0
    # Slots one account may request per minute (Prosody and ejabberd have none beyond the quota; 30
    # lets a client send an album of pictures at once and stops a script asking for thousands).
    slots_per_minute: int = 30
    # Bytes all accounts together may have stored (unexpired files and open slots), 0 for no bound:
    # Prosody's http_file_share_global_quota, likewise unset by default, as the disk is the operator's.
    total_quota: int = 0


@dataclass(frozen=True)
class XmppWebSocketConfig:
    # XMPP over WebSocket (RFC 7395) at /xmpp-websocket on the web service ([web] https_listen), listed
    # in host-meta (XEP-0156); it carries the same sessions as c2s.
    enabled: bool = True
    # Origins (scheme://host[:port]) a browser page may connect from besides the hosted domains' own
    # names on the web service; ["*"] allows any. Clients that send no Origin (not browsers) are allowed
    # (RFC 6455 §10.2: Origin protects browser users; a native client can claim any).
    allowed_origins: list[str] = field(default_factory=list)
    # Seconds a token from GET /auth/xmpp-credentials stays valid (converse.js fetches one per connection).
    credential_lifetime: float = 300.0


@dataclass(frozen=True)
class XmppBoshConfig:
    # XMPP over BOSH (XEP-0124/XEP-0206) at /http-bind on the web service, for clients without
    # WebSocket; listed in host-meta (XEP-0156); the same sessions as c2s and WebSocket.
    enabled: bool = True
    # Longest a request is held waiting for data (the client's `wait` is capped to it); Prosody's
    # bosh_max_wait is 120, ejabberd's 120 too; 60 stays under common proxies' 60-120 s idle cut.
    max_wait: int = 60
    # Seconds a session may go with no request outstanding before it ends (XEP-0124 §7
    # `inactivity`; Prosody's bosh_max_inactivity is 60).
    inactivity: int = 60
    # Longest pause a client may ask for (XEP-0124 §10 `maxpause`: the session outlives a page
    # change); MongooseIM's max_pause is 120 too. 0 offers no pause.
    max_pause: int = 120


@dataclass(frozen=True)
class RegistrationConfig:
    """XEP-0077 in-band registration and XEP-0401 invitations (``peerage invite create``)."""

    # Anyone may create an account from a client. Off by default: open registration is what spam
    # bots look for (Prosody's allow_registration defaults to false too). Invitations work either way.
    enabled: bool = False
    # Accounts one IP address may register per hour (Prosody's mod_register_limits throttles by IP;
    # its registration_throttle_max is unset by default; ejabberd's registration_timeout is 600 s).
    per_ip_per_hour: int = 5
    # Days an invitation made without --expires stays valid (Snikket's invites last a week).
    invite_expire_days: float = 7.0


@dataclass(frozen=True)
class PushConfig:
    """XEP-0357 push notifications to the app servers clients register (Conversations, Monal, Siskin)."""

    enabled: bool = True
    # The summary form carries only the message count unless these are on: app servers are third
    # parties (Prosody's mod_cloud_notify push_notification_with_body/_with_sender default to false).
    include_sender: bool = False
    include_body: bool = False
    # Failed notifications in a row (errors or no answer) before a registration is disabled
    # (Prosody's mod_cloud_notify push_max_errors is 16).
    max_errors: int = 16
    # App servers one account may register (Prosody's push_max_devices is 5).
    max_registrations: int = 5


@dataclass(frozen=True)
class XmppConfig:
    enabled: bool = True
    c2s_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5222", "[::]:5222"])
    c2s_direct_tls_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5223", "[::]:5223"])
    s2s_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5269", "[::]:5269"])
    s2s_direct_tls_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5270", "[::]:5270"])
    # RFC 6120 §13.12 requires at least 10000 bytes; Prosody's c2s_stanza_size_limit is 256 KiB and
    # ejabberd's max_stanza_size is 256 KiB for c2s.
    max_stanza_size: int = 262144
    # Messages kept per offline user before new ones bounce (Prosody mod_offline has no cap; ejabberd's
    # max_user_offline_messages defaults to 5000).
    max_offline_messages: int = 5000
    # Days of MAM history kept (Prosody's archive_expires_after defaults to one week).
    archive_expires_days: int = 7
    # XEP-0313 one-to-one archive on or off (Prosody loads mod_mam only when listed in modules_enabled).
    archive_enabled: bool = True
    # Seconds a dropped XEP-0198 session waits for resumption (Prosody's smacks_hibernation_time is 600).
    sm_resumption_timeout: float = 300.0
    # Resources bound at once per account; one more is refused with resource-constraint (RFC 6120
    # §7.6.2.1). ejabberd's max_user_sessions defaults to 10; Prosody has no limit by default. A
    # provider wants a bound so one account cannot hold thousands of sessions.
    max_resources_per_account: int = 32
    federation: FederationConfig = field(default_factory=FederationConfig)
    contact: ContactConfig = field(default_factory=ContactConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    push: PushConfig = field(default_factory=PushConfig)
    websocket: XmppWebSocketConfig = field(default_factory=XmppWebSocketConfig)
    bosh: XmppBoshConfig = field(default_factory=XmppBoshConfig)


@dataclass(frozen=True)
class SipConfig:
    enabled: bool = True
    udp_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5060"])
    tcp_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5060"])
    tls_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:5061"])
    # The address advertised in Via/Record-Route when listening on a wildcard.
    advertised_host: str = ""
    # Kamailio's default maximum message size is 65535 bytes (BUF_SIZE); UDP cannot carry more.
    max_message_size: int = 65535
    # Per source IP, requests per second before a temporary ban, as Kamailio's pike module does.
    flood_requests_per_second: int = 200
    flood_ban_seconds: int = 300
    allow_domains: list[str] = field(default_factory=list)
    deny_domains: list[str] = field(default_factory=list)
    # Registration expiry bounds (RFC 3261 §10.2.8; Kamailio's registrar default max_expires is 3600).
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    # Digest algorithms offered in one 401/407, most preferred first (RFC 8760 §2.4). MD5 first: sipsak,
    # baresip and SIPp read only the first challenge and JsSIP knows only MD5 (see peerage.sip.digest).
    digest_algorithms: list[str] = field(default_factory=lambda: ["MD5", "SHA-256"])
    # User-Agent prefixes that get the SHA-256 challenge listed first (clients known to support it).
    digest_sha256_first_user_agents: list[str] = field(default_factory=list)
    # User-Agent prefixes that get the MD5 challenge alone: baresip 1.0 (libre) refuses a 401 that lists
    # any other algorithm, wherever it stands; JsSIP reads only the last challenge and knows only MD5.
    digest_md5_only_user_agents: list[str] = field(default_factory=lambda: ["baresip", "JsSIP"])
    # SIP over WebSocket (RFC 7118), subprotocol "sip": plain and TLS listeners (none by default;
    # browsers use wss, e.g. ["0.0.0.0:8443"]).
    ws_listen: list[str] = field(default_factory=list)
    wss_listen: list[str] = field(default_factory=list)
    # Seconds between CRLF keep-alives sent to UDP contacts behind NAT (0: none).  Kamailio's
    # nathelper natping_interval is off by default; deployments use 20-30 s, under the 30 s that the
    # shortest-lived NAT bindings last (RFC 4787 REQ-5 asks for 2 min, many boxes keep less).
    nat_ping_interval: int = 25
    # What the keep-alive to a UDP contact behind NAT is: "options" (an OPTIONS request, which every UA
    # answers, RFC 3261 §11, so a contact that stops answering is found dead: Kamailio nathelper's
    # sipping with usrloc keepalive_timeout) or "crlf" (four bytes no one answers, nathelper's natping).
    nat_ping_method: str = "options"
    # With "options": seconds a NAT'd UDP contact that does not use outbound may stay silent (no answer,
    # no request) before its binding is dropped (0: never). 120 s is four missed pings at 25 s, so one
    # lost datagram or a busy phone does not cost a registration (Kamailio's keepalive_timeout is set so).
    nat_ping_timeout: int = 120
    # RFC 5626 §4.4.1 Flow-Timer given to outbound UAs registering over UDP: they send a STUN keep-alive
    # at 80-100% of it, and a flow heard from for no longer than that (plus a little slack) is dead, its
    # registrations dropped. 25 s stays under the 30 s the shortest-lived NAT bindings last.
    udp_flow_timer: int = 25
    # Seconds requests may wait unread (the event loop running late, or UDP datagrams queueing in
    # the kernel, by their arrival stamps) before new INVITEs are refused with 503 and Retry-After
    # (RFC 3261 §21.5.4) instead of being answered late, until the backlog is read; 0 turns the
    # shedding off.  A non-INVITE request and its response both pass through the proxy's queue
    # and the caller retransmits after T1 = 500 ms (Timer E, §17.1.2.2): each may wait 250 ms at
    # most, and 200 ms leaves room for the work itself and a shared machine's scheduling delays.
    overload_delay: float = 0.2
    # Source addresses or networks (CIDR) whose requests may claim a hosted domain in From without a
    # 407 challenge: a PBX or gateway that authenticated its own users (Kamailio's allow_trusted()).
    # Every other request with a hosted-domain From must authenticate, even to a local callee.
    trusted_sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SmtpConfig:
    enabled: bool = True
    mx_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:25"])
    submission_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:587"])
    submissions_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:465"])
    # Postfix's message_size_limit defaults to 10240000 bytes; we follow it.
    max_message_size: int = 10240000
    # The name this server announces in EHLO and Received headers; empty means the first domain.
    hostname: str = ""
    # Postfix's maximal_queue_lifetime is 5 days, its delay_warning_time is off by default (4h in docs).
    queue_lifetime_hours: float = 120.0
    delay_warning_hours: float = 4.0
    # Port remote MTAs are contacted on; only tests change this.
    remote_port: int = 25
    # Per client IP: messages per minute accepted on the MX port.
    mx_messages_per_minute: int = 600
    # First retry delay of the outbound queue, doubled after each failure (Mox: 7.5 minutes).
    first_retry_seconds: float = 450.0
    # Local address outbound SMTP connections are made from; empty lets the system choose.
    source_address: str = ""
    # Extra processes sharing the MX port (SO_REUSEPORT) to spread SMTP sessions over CPUs; storage
    # stays in the main process. 0 keeps everything in one process. Not the core count by default:
    # per-IP connection caps and message rates are counted per process, so N workers would let one
    # client have N times the configured limits; and on 2 shared cores workers gained nothing reliable
    # (bench/RESULTS.md, smtp). Worth raising on a many-core MX that sees many sending IPs.
    mx_workers: int = 0
    # Outbound connections open at once to one destination domain (Postfix's
    # initial_destination_concurrency is 5).
    connections_per_domain: int = 5
    # The account that receives postmaster@ and abuse@ (RFC 5321 4.5.1, RFC 2142) of every hosted domain
    # that has no account of that name; empty means the first account created on this server.
    postmaster: str = ""
    # Seconds the MX port waits before its greeting; a client that talks first is refused, as Postfix's
    # postscreen (postscreen_greet_wait) does. An address that passed is not made to wait again for a day.
    # 0 turns the check off.
    greeting_delay_seconds: float = 1.0


@dataclass(frozen=True)
class ImapConfig:
    enabled: bool = True
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:143"])
    tls_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:993"])
    # Largest APPEND accepted (RFC 7889 APPENDLIMIT); the same as the SMTP size limit.
    append_limit: int = 10240000


@dataclass(frozen=True)
class SieveConfig:
    # Sieve filtering at local delivery (RFC 5228) and ManageSieve (RFC 5804) to edit the scripts.
    enabled: bool = True
    # RFC 5804 §1.8: port 4190, STARTTLS before authentication (the RFC defines no implicit-TLS port).
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:4190"])
    # Messages one account's scripts may redirect per hour (a token bucket; over it the message is
    # kept). Gmail caps forwarding rules by volume the same way; 60/h covers a person's mail.
    redirects_per_hour: int = 60


@dataclass(frozen=True)
class ReportsConfig:
    # DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports arriving at postmaster@ or abuse@
    # of a hosted domain are parsed into figures (`peerage mail reports`); the mail is delivered too.
    receive: bool = True
    # Send our own DMARC aggregate reports to the rua= addresses of the domains we receive mail from.
    send_dmarc: bool = True
    # Send our own TLS-RPT reports (RFC 8460): the TLS outcomes of our outbound sessions, daily, to the
    # rua= of each recipient domain's _smtp._tls record (mailto: only).
    send_tlsrpt: bool = True
    # The reporting interval. RFC 7489 ri= defaults to 86400 s and §7.2 requires daily reports to be
    # possible; only tests shorten it.
    interval_seconds: float = 86400.0
    # The report's org_name (the submitter); empty means the SMTP hostname.
    org_name: str = ""
    # Sender and contact address of our reports; empty means postmaster@ the first hosted domain.
    from_address: str = ""
    # Reports sent per hour at most (the rest wait for the next hour); Postfix-based reporters such as
    # OpenDMARC's opendmarc-reports send in one batch, which a provider spreads out on its own.
    max_per_hour: int = 600
    # Records per report, largest counts first (Google's reports stay well below this).
    max_rows: int = 10000
    # Days received reports and our counts are kept.
    keep_days: int = 90


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    # HTTPS with SNI per hosted domain; the web login, JMAP, webmail and discovery documents.
    https_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:443", "[::]:443"])
    # Plain HTTP: redirects to HTTPS and answers ACME HTTP-01 challenges (RFC 8555 §8.3).
    http_listen: list[str] = field(default_factory=lambda: ["0.0.0.0:80", "[::]:80"])
    # Largest request body (JMAP API calls, form posts). Fastmail and Cyrus advertise JMAP
    # maxSizeRequest of 10000000; nginx's client_max_body_size defaults to 1 MiB.
    max_request_size: int = 10000000
    # Largest JMAP upload (RFC 8620 maxSizeUpload); the same as the SMTP size limit by default.
    max_upload_size: int = 10240000
    # Seconds a client may take to send its request headers (nginx client_header_timeout is 60 s,
    # Apache mod_reqtimeout's header=20-40): slow-header clients otherwise hold connections forever.
    header_timeout: float = 20.0
    # Seconds a request body may take to arrive (nginx client_body_timeout: 60 s between reads).
    body_timeout: float = 60.0
    # Seconds an idle keep-alive connection stays open (nginx keepalive_timeout is 75 s).
    keepalive_timeout: float = 75.0
    # A web session ends this many seconds after login whatever its use (14 days), or after this
    # many seconds unused (one day), the way Roundcube's session_lifetime bounds idleness.
    session_lifetime: float = 1209600.0
    session_idle_timeout: float = 86400.0
    # Strict-Transport-Security max-age (RFC 6797); one year is what hstspreload.org asks for.
    hsts_max_age: int = 31536000
    # Contact for security.txt (RFC 9116); empty means mailto:security@ the domain asked for.
    security_contact: str = ""


@dataclass(frozen=True)
class AuthConfig:
    # Advertise SCRAM-*-PLUS on IMAP and SMTP submission. Off by default, as Postfix's submission
    # (whose SASL backends get no channel binding from smtpd) never lists it: clients such as neomutt
    # with gsasl pick -PLUS when listed and then fail for want of a binding. -PLUS is still accepted
    # when a client asks for it unlisted, and XMPP always lists it (XEP-0440 names the binding types).
    mail_advertise_plus: bool = False
    # SMTP AUTH LOGIN (over TLS only) for clients that know nothing else (older Outlook, many
    # printers and scanners); Dovecot and Postfix offer it for the same reason.
    smtp_login: bool = True
    # Shortest password `peerage user add` / `user passwd` accept (NIST SP 800-63B §5.1.1.2: at least
    # 8 characters, and check against lists of common passwords).
    password_min_length: int = 8
    # Successful password verifications remembered, so a client that logs in every minute does not pay
    # an argon2 hash each time (Dovecot's auth_cache_size / auth_cache_ttl, default off there; we keep
    # at most this many entries for cache_ttl seconds, and `user passwd` forgets an account's).
    cache_size: int = 10000
    cache_ttl: float = 3600.0


@dataclass(frozen=True)
class AcmeConfig:
    # ACME directory URL (RFC 8555 §7.1.1); empty: no ACME, certificates are the files [[domain]] names.
    # Let's Encrypt's is "https://acme-v02.api.letsencrypt.org/directory".
    directory: str = ""
    # Contact address for the account (expiry notices from the CA); empty sends none.
    email: str = ""
    # Trust anchors for the ACME server's own HTTPS (a private CA, Pebble in tests); empty: the system's.
    ca_file: Path | None = None
    # Renew this many days before expiry (Let's Encrypt suggests a third of the 90-day lifetime).
    renew_days: int = 30
    # Names below each domain the certificate also covers (XMPP rooms and uploads, mail autoconfig,
    # the MTA-STS policy host); each must resolve to this server for HTTP-01.
    names: list[str] = field(default_factory=lambda: ["conference", "upload", "autoconfig", "mta-sts"])
    # Seconds between expiry checks.
    check_interval: float = 43200.0
    # How the CA checks control of each name: "http-01" on port 80 (the web service's http_listen), or
    # "tls-alpn-01" (RFC 8737) on port 443 (the web service's https_listen), for hosts without port 80.
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"
    # In a cluster: seconds between a node's reads of the certificates another node stored (besides
    # the NATS announcement, which a node cut off at that moment misses), and its retry of a domain
    # whose ordering node stored none (docs/scaling.md).
    cluster_load_interval: float = 300.0


@dataclass(frozen=True)
class MetricsConfig:
    # Where Prometheus metrics (/metrics) and the health check (/health) are served, plain HTTP; empty
    # serves neither. Keep it on a private address: it is not behind a login. Not moved by
    # [server] listen. (9477 is free in Prometheus's port allocation list.)
    listen: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TurnConfig:
    # STUN/TURN servers handed to users (XEP-0215 and the web chat's ICE servers), as RFC 7064/7065 URIs:
    # "stun:turn.example.org", "turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349".
    # Empty: no external services are offered. peerage relays no media; coturn does (see peerage.turn).
    servers: list[str] = field(default_factory=list)
    # File holding the secret shared with coturn (its static-auth-secret, with use-auth-secret), one line,
    # readable by peerage's user only. Needed when servers lists turn: or turns:.
    secret_file: Path | None = None
    # Seconds a TURN credential stays valid (draft-uberti-behave-turn-rest's ttl; its example and
    # Prosody's mod_turn_external both use one day). XMPP clients get fresh ones pushed before expiry.
    credential_lifetime: int = 86400


@dataclass(frozen=True)
class ClusterConfig:
    # This node's name, unique within the cluster (letters, digits, '-' and '_'). Empty: no cluster,
    # one node on its own, exactly as without this section. Set: [database] url must be PostgreSQL.
    node: str = ""
    # The NATS servers the nodes route through ("nats://127.0.0.1:4222"); several for a NATS cluster.
    nats_urls: list[str] = field(default_factory=list)
    # Seconds between this node's heartbeats; a node not heard for node_timeout is dead and its
    # sessions leave the registry (MongooseIM's CETS drops a node after about as long).
    heartbeat_interval: float = 1.0
    node_timeout: float = 4.0

    @property
    def enabled(self) -> bool:
        return bool(self.node)


@dataclass(frozen=True)
class MucConfig:
    # XEP-0045 group chats on conference.DOMAIN for every hosted domain.
    enabled: bool = True
    # Who may create rooms: "local" (accounts of the hosted domains; Prosody's
    # restrict_room_creation = "local") or "anyone" (also users of other servers, Prosody's default).
    room_creation: str = "local"
    # Occupants per room (ejabberd's max_users is 200); a room's own maxusers may only lower it.
    max_occupants: int = 200
    # Messages per second per occupant and the burst allowed (Prosody mod_muc_limits: 0.5/s, 3).
    message_rate: float = 0.5
    message_burst: float = 3.0
    # Per account: rooms occupied at once (ejabberd's max_user_conferences, 100; over it:
    # resource-constraint), rooms owned, and rooms created per hour (over them: not-allowed).
    # Counted over every node of a cluster (peerage.cluster.muc).
    max_rooms_joined: int = 100
    max_rooms_owned: int = 100
    max_room_creations_per_hour: int = 20
    # New rooms archive their messages (XEP-0313) unless configured not to (Prosody's
    # muc_log_by_default = true).
    archive_by_default: bool = True
    # Days a room's archive is kept, apart from [xmpp] archive_expires_days (Prosody's
    # muc_log_expires_after defaults to one week); 0 keeps it until the room is destroyed.
    archive_expires_days: int = 7
    # Whether a member who has not chosen gets the room's messages at their own address while absent,
    # for their server to push (Prosody's mod_muc_offline_delivery, muc_offline_delivery_default is
    # false; Snikket turns it on). Members choose with the room's registration form.
    offline_delivery_default: bool = False


@dataclass(frozen=True)
class SocialConfig:
    # WebFinger, ActivityPub and the XMPP microblog under every account's address (peerage.social);
    # served by the web service, so [web] must be on too.
    enabled: bool = True
    # Whether a new account is discoverable (WebFinger, actor, profile) before its owner says so.
    # False: private by default, as an address that only chats and mails should not become a public
    # profile without consent (Mastodon's "suggest account to others" and discoverable flags are
    # opt-in too); `peerage social publish ADDRESS` or the account's own setting opts it in.
    discoverable_default: bool = False
    # Largest inbound activity body in bytes. Mastodon accepts 1 MiB on its inbox
    # (ActivityPub::InboxesController via the JSON parser limit); GoToSocial caps at 1 MiB too.
    max_activity_size: int = 1048576
    # Deepest JSON nesting accepted inbound. A Note with a quoted reply and tags nests about 6 deep;
    # Python's json has no limit of its own and recursion bombs crash parsers, so we refuse past 32.
    max_json_depth: int = 32
    # Seconds a signed request's Date (or RFC 9421 `created`) may be off from our clock. Mastodon
    # allows 12 hours back and 1 hour forward (EXPIRATION_WINDOW_LIMIT, CLOCK_SKEW_MARGIN); we take
    # the stricter one hour both ways, which every NTP-synced peer meets.
    signature_max_skew: float = 3600.0
    # Require signatures on GETs of actors and collections ("authorized fetch", Mastodon's
    # AUTHORIZED_FETCH / secure mode); the actor's key itself stays fetchable unsigned.
    authorized_fetch: bool = False
    # Seconds a fetched remote actor key stays cached before it is fetched again (Mastodon refreshes
    # actors after a day; a failed verification with a cached key refetches at once).
    key_cache_ttl: float = 86400.0
    # Delivery retries: first after `retry_base` seconds, doubling, for at most `retry_max_age`
    # seconds (Mastodon's Sidekiq retries deliveries 16 times over about 3 days; Postfix's
    # maximal_queue_lifetime is 5 days). A delivery older than that is dropped and logged.
    retry_base: float = 30.0
    retry_max_age: float = 259200.0
    # Concurrent deliveries to one remote host, and per second to it: a post to many followers on a
    # large instance must not flood it (Mastodon delivers to each inbox from a Sidekiq pool of 25
    # threads by default; we bound per host instead).
    per_host_concurrency: int = 4
    per_host_rate: float = 20.0
    # Fetch remote documents from private, loopback and link-local addresses. Off in production:
    # an actor URL pointing at 127.0.0.1 or 10.x would otherwise make us a request proxy into the
    # provider's own network (SSRF); Fedify and Mastodon refuse them by default too.
    allow_private_addresses: bool = False
    # Remote domains refused (defederated) from the start; `peerage social block` adds more live.
    blocked_domains: list[str] = field(default_factory=list)
    # Largest image attached to a post, in bytes (at most 4 per post, Mastodon's limit). Mastodon
    # took 10 MB images before 4.x (16 MB now); 10 MiB is also [xmpp.upload] max_file_size's default,
    # so a file uploaded from an XMPP client can be attached.
    max_attachment_size: int = 10485760
    # The XMPP side of the same identity (peerage.social.xmpp_bridge), when [xmpp] runs too: public
    # posts mirrored on the account's PEP node urn:xmpp:microblog:0 (XEP-0472/XEP-0277), and remote
    # actors as JIDs on the gateway service `<xmpp_gateway>.DOMAIN` (fred=mastodon.social@ap.DOMAIN)
    # for direct messages and their posts. "ap" is Libervia's ActivityPub gateway name too.
    xmpp_bridge: bool = True
    xmpp_gateway: str = "ap"


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    database: DatabaseConfig
    dns: DnsConfig
    tls: TlsConfig
    domains: dict[str, DomainConfig]
    limits: LimitsConfig
    xmpp: XmppConfig
    sip: SipConfig
    smtp: SmtpConfig
    imap: ImapConfig
    web: WebConfig = field(default_factory=WebConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    muc: MucConfig = field(default_factory=MucConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    social: SocialConfig = field(default_factory=SocialConfig)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def status_path(self) -> Path:
        return self.server.status_file or self.data_dir / "status.json"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_dir / 'peerage.db'}"

    def domain(self, name: str) -> DomainConfig | None:
        return self.domains.get(name.lower())


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "dns": DnsConfig,
    "tls": TlsConfig,
    "limits": LimitsConfig,
    "xmpp": XmppConfig,
    "sip": SipConfig,
    "smtp": SmtpConfig,
    "imap": ImapConfig,
    "web": WebConfig,
    "auth": AuthConfig,
    "metrics": MetricsConfig,
    "acme": AcmeConfig,
    "turn": TurnConfig,
    "cluster": ClusterConfig,
    "muc": MucConfig,
    "sieve": SieveConfig,
    "reports": ReportsConfig,
    "social": SocialConfig,
}


def default_config_path() -> Path:
    return Path(os.environ.get("PEERAGE_CONFIG", DEFAULT_CONFIG_NAME))


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate `path`. With `check_files`, certificate files must exist."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file; create one with `peerage init DOMAIN` "
            "or pass --config FILE (or set PEERAGE_CONFIG)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(raw, path, check_files=check_files)


def config_from_dict(raw: dict[str, Any], path: Path, *, check_files: bool = True) -> Config:
    base = path.parent
    known = {*_SECTIONS, "domain"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown section or key '{key}'; valid ones are: {', '.join(sorted(known))}"
            )
    sections = {
        name: _build(cls, raw.get(name, {}), f"[{name}]", path, base) for name, cls in _SECTIONS.items()
    }
    domains_raw = raw.get("domain", [])
    if not isinstance(domains_raw, list):
        raise ConfigError(f"{path}: 'domain' must be an array of tables: write [[domain]] sections")
    domains: dict[str, DomainConfig] = {}
    from peerage.identity.address import AddressError, normalize_domain

    for index, entry in enumerate(domains_raw):
        where = f"[[domain]] #{index + 1}"
        domain = _build(DomainConfig, entry, where, path, base)
        try:
            name = normalize_domain(domain.name)
        except AddressError as exc:
            raise ConfigError(f"{path}: {where} name: {exc}") from None
        if name in domains:
            raise ConfigError(f"{path}: {where}: domain '{name}' is configured twice")
        if (domain.cert is None) != (domain.key is None):
            raise ConfigError(f"{path}: {where} ({name}): set both 'cert' and 'key', or neither")
        if check_files:
            for attr in ("cert", "key"):
                file = getattr(domain, attr)
                if file is not None and not file.is_file():
                    raise ConfigError(
                        f"{path}: {where} ({name}) {attr}: file {file} does not exist; "
                        f"point '{attr}' at a PEM file or run `peerage domain add {name}` to create a "
                        "self-signed one"
                    )
        domains[name] = dataclasses.replace(domain, name=name)
    _inherit_listen(raw, sections, path)
    tls: TlsConfig = sections["tls"]
    if check_files and tls.ca_file is not None and not tls.ca_file.is_file():
        raise ConfigError(f"{path}: [tls] ca_file: file {tls.ca_file} does not exist")
    _check_cluster(sections["cluster"], sections["database"], path)
    return Config(path=path, domains=domains, **sections)


def _check_cluster(cluster: ClusterConfig, database: DatabaseConfig, path: Path) -> None:
    import re

    if not cluster.enabled:
        return
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cluster.node):
        raise ConfigError(f"{path}: [cluster] node: use 1-64 letters, digits, '-' or '_' (it names NATS subjects)")
    if not database.url.startswith("postgresql"):
        raise ConfigError(f"{path}: [cluster] needs PostgreSQL, shared by every node: set [database] url "
                          "to postgresql+asyncpg://USER@HOST/DB")
    if not cluster.nats_urls:
        raise ConfigError(f"{path}: [cluster] nats_urls: list the NATS servers, e.g. [\"nats://127.0.0.1:4222\"]")
    if cluster.node_timeout <= 2 * cluster.heartbeat_interval:
        raise ConfigError(f"{path}: [cluster] node_timeout must exceed two heartbeat_interval")


# Sections whose listeners are never moved by `[server] listen` (an operator's internal endpoints).
LISTEN_NOT_INHERITED = frozenset({"metrics"})


def _listen_fields(cls: type) -> list[str]:
    if cls is ServerConfig:  # its `listen` holds bare addresses
        return []
    return [f.name for f in dataclasses.fields(cls) if f.name.endswith("listen")]


def _inherit_listen(raw: dict[str, Any], sections: dict[str, Any], path: Path) -> None:
    """Check every `*_listen` spec, and fill unset ones from `[server] listen` on their default ports."""
    import ipaddress

    server: ServerConfig = sections["server"]
    hosts = []
    for index, host in enumerate(server.listen):
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ConfigError(
                f"{path}: [server] listen[{index}] = {host!r} is not an IP address; write one such as "
                "\"192.0.2.10\", \"0.0.0.0\" or \"::\" (no port: each service keeps its own)"
            ) from None
        hosts.append(f"[{bare}]" if ":" in bare else bare)
    for name, section in sections.items():
        for key in _listen_fields(type(section)):
            where = f"[{name}] {key}"
            if hosts and name not in LISTEN_NOT_INHERITED and key not in raw.get(name, {}):
                default = next(f for f in dataclasses.fields(type(section)) if f.name == key)
                factory: Any = default.default_factory
                ports = dict.fromkeys(parse_listen(spec)[1] for spec in factory())
                section = dataclasses.replace(section, **{key: [f"{h}:{p}" for p in ports for h in hosts]})
                sections[name] = section
            for index, spec in enumerate(getattr(section, key)):
                try:
                    parse_listen(spec)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: {where}[{index}]: {exc}") from None


def _build(cls: type, raw: Any, where: str, path: Path, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where} must be a table, not {type(raw).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{path}: {where} unknown key '{key}'; valid keys are: {', '.join(sorted(fields))}"
            )
        values[key] = _convert(hints[key], value, f"{where} {key}", path, base)
    for name, spec in fields.items():
        if name not in values and isinstance(spec.default, Path):
            values[name] = (base / spec.default).resolve()  # relative defaults live beside the file
        if (
            name not in values
            and spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{path}: {where} is missing the required key '{name}'")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str, path: Path, base: Path) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value == "" and type(None) in get_args(hint):
            return None
        return _convert(options[0], value, where, path, base)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{path}: {where} = {value!r} is not allowed; use one of: "
                + ", ".join(repr(c) for c in choices)
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {where} must be a list, e.g. [\"...\"]")
        (item,) = get_args(hint)
        return [_convert(item, v, f"{where}[{i}]", path, base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {where} must be a table")
        _, item = get_args(hint)
        return {str(k).lower(): _convert(item, v, f"{where}.{k}", path, base) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}", path, base)  # type: ignore[arg-type]
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {where} must be a file or folder path (a string)")
        return (base / value).resolve()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: {where} must be a whole number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{path}: {where} must not be negative")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: {where} must be a number, not {value!r}")
        if value < 0:
            raise ConfigError(f"{path}: {where} must not be negative")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {where} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{path}: {where}: unsupported setting type {hint!r}")


def parse_listen(spec: str) -> tuple[str, int]:
    """'0.0.0.0:5222' or '[::1]:5222' -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {spec!r} must be HOST:PORT, e.g. 0.0.0.0:5222 or [::]:5222")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {spec!r}: port {int(port)} is out of range: ports go up to 65535")
    host = host.strip("[]")
    return host, int(port)
