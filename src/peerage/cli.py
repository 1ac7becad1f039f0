"""The `peerage` command line: init, user, serve, dns, and the operator tools of each protocol.

This module is in charge of parsing arguments, loading the configuration, and turning every expected
failure (bad configuration, unknown user, port in use) into one clear line on stderr and exit code 1.
The work itself lives in the modules it calls.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from peerage.config import Config, ConfigError, default_config_path, load_config

log = logging.getLogger("peerage")

INIT_TEMPLATE = """\
# peerage configuration. Every key not written here takes its built-in default;
# see README.md ("Configuration reference") for all of them.

[server]
data_dir = "data"
log_level = "info"
{listen}
[[domain]]
name = "{domain}"
cert = "certs/{domain}.crt"
key = "certs/{domain}.key"

# [database]
# url = "postgresql+asyncpg://peerage:secret@localhost/peerage"

# [xmpp.federation]
# level = "encrypted"   # permissive | verified | encrypted | trusted (XEP-0238)
"""


class CliError(Exception):
    pass


def _run(coro_factory: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_factory())  # type: ignore[arg-type]


def _config(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    return load_config(args.config or default_config_path(), check_files=check_files)


def _read_password(args: argparse.Namespace, address: str) -> str:
    source = getattr(args, "password_file", None)
    if source == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    elif source:
        try:
            password = Path(source).read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise CliError(f"--password-file {source}: no such file; nothing was changed") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--password-file {source}: cannot read it ({exc}); nothing was changed") from None
    else:
        password = getpass.getpass(f"Password for {address}: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the passwords differ; nothing was changed")
    if not password:
        raise CliError("the password is empty; nothing was changed")
    return password


# --- init ----------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from peerage.identity.address import normalize_domain
    from peerage.net.tls import generate_self_signed

    domain = normalize_domain(args.domain)
    for address in args.listen or []:
        _check_address(address)
    folder = Path(args.dir or ".").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "peerage.toml"
    if config_path.exists():
        raise CliError(f"{config_path} already exists; add a domain with `peerage --config {config_path} domain add "
                       f"{domain}`, or choose another --dir")
    cert, key = folder / "certs" / f"{domain}.crt", folder / "certs" / f"{domain}.key"
    if not cert.exists():
        generate_self_signed(domain, cert, key)
    config_path.write_text(INIT_TEMPLATE.format(domain=domain, listen=_listen_line(args.listen)), encoding="utf-8")
    config = load_config(config_path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o700)
    _generate_domain_keys(config, domain)
    _run(lambda: _migrate(config))
    print(f"Created {config_path}")
    print(f"  data folder  {config.data_dir}")
    print(f"  certificate  {cert} (self-signed; replace it with a CA-issued one for federation)")
    print("Next steps:")
    print(f"  peerage --config {config_path} user add alice@{domain}")
    print(f"  peerage --config {config_path} dns {domain}      # records to publish")
    print(f"  peerage --config {config_path} serve")
    return 0


def _check_address(address: str) -> None:
    import ipaddress

    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise CliError(f"--listen {address}: not an IP address (write one such as 192.0.2.10 or ::1, no port)") from None


def _listen_line(addresses: list[str] | None) -> str:
    if not addresses:
        return (
            "# Addresses every service listens on (each on its usual ports); unset, all of this host's.\n"
            '# listen = ["192.0.2.10", "2001:db8::10"]\n'
        )
    quoted = ", ".join(f'"{a}"' for a in addresses)
    return f"# Addresses every service listens on, each on its usual ports.\nlisten = [{quoted}]\n"


def _generate_domain_keys(config: Config, domain: str) -> None:
    """Keys other protocols need per domain (DKIM, RFC 6376): a cluster's in its database."""
    from peerage.mail.auth import dkim

    if config.cluster.enabled:
        from peerage.cluster.blobs import with_keys

        with_keys(config.database_url, lambda rows: dkim.shared_keys(rows, domain, create=True,
                                                                     data_dir=config.data_dir), migrate=True)
        return
    dkim.generate_keys(config.data_dir, domain)


async def _migrate(config: Config) -> None:
    from peerage.store import Store

    store = Store(config.database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


# --- user ----------------------------------------------------------------------------------------


async def _with_accounts(config: Config, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from peerage.identity.accounts import AccountService
    from peerage.store import Store

    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.database_url)
    try:
        await store.migrate()
        return await action(AccountService(store, config.domains,
                                           password_min_length=config.auth.password_min_length))
    finally:
        await store.close()


def cmd_invite(args: argparse.Namespace) -> int:
    """`peerage invite create`: a XEP-0401 invitation URI (peerage.xmpp.features.register)."""
    from peerage.identity.address import normalize_domain, parse_address
    from peerage.store import Store
    from peerage.xmpp.features.register import create_invitation, invitation_uri

    config = _config(args, check_files=False)
    inviter = str(parse_address(args.inviter)) if args.inviter else None
    domain = normalize_domain(args.domain) if args.domain else (
        inviter.partition("@")[2] if inviter else next(iter(config.domains), ""))
    if domain not in config.domains:
        raise CliError(f"{domain or 'no domain'} is not hosted here; the configured domains are: "
                       f"{', '.join(config.domains)}")
    days = args.expires_days if args.expires_days is not None else config.xmpp.registration.invite_expire_days

    async def create() -> str:
        if inviter is not None and not await _with_accounts(config, lambda acc: acc.exists(inviter)):
            raise CliError(f"{inviter} is not an account here; create it with `peerage user add {inviter}`")
        store = Store(config.database_url)
        try:
            await store.migrate()
            return await create_invitation(store.engine, domain, inviter, days * 86400)
        finally:
            await store.close()

    token = _run(create)
    if args.web:
        if not config.web.enabled or not config.web.https_listen:
            raise CliError("the web service is off ([web] enabled): there is no invitation page to link to")
        from peerage.xmpp.features.invite_page import landing_url

        port = int(config.web.https_listen[0].rpartition(":")[2])
        print(landing_url(domain, token, "" if port == 443 else f":{port}"))
    else:
        print(invitation_uri(domain, inviter, token))
    print(f"Single use, valid for {days:g} days: open it in an XMPP client (Conversations, Gajim, Dino ...) "
          f"to create an account on {domain}" + (f" with {inviter} as a contact." if inviter else "."), file=sys.stderr)
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from peerage.identity.address import parse_address

    config = _config(args, check_files=False)
    if args.user_command == "list":
        if args.domain is not None:
            from peerage.identity.address import normalize_domain

            args.domain = normalize_domain(args.domain)
            if args.domain not in config.domains:
                raise CliError(
                    f"{args.domain} is not hosted here; the configured domains are: {', '.join(config.domains)}"
                )
        for address in _run(lambda: _with_accounts(config, lambda acc: acc.list(args.domain))):
            print(address)
        return 0
    address = str(parse_address(args.address))
    if args.user_command in ("export", "import"):
        return _user_transfer(config, address, args)
    if args.user_command == "add":
        password = _read_password(args, address)
        _run(lambda: _with_accounts(config, lambda acc: acc.add(address, password)))
        print(f"Created {address}: the same password logs in to chat (XMPP), calls (SIP) and mail.")
    elif args.user_command == "passwd":
        password = _read_password(args, address)
        _run(lambda: _with_accounts(config, lambda acc: acc.passwd(address, password)))
        print(f"Changed the password of {address}.")
    elif args.user_command == "del":
        _run(lambda: _with_accounts(config, lambda acc: acc.delete(address)))
        print(f"Deleted {address}.")
    return 0


def _user_transfer(config: Config, address: str, args: argparse.Namespace) -> int:
    from peerage.ops.export import export_account, import_account

    async def action(accounts: Any) -> dict[str, int]:
        if not await accounts.exists(address):
            raise CliError(f"{address} does not exist; create it first with `peerage user add {address}`")
        if args.user_command == "export":
            return await export_account(accounts.store, config, address, Path(args.dir), args.format)
        try:
            return await import_account(accounts.store, config, address, Path(args.dir))
        except ValueError as exc:
            raise CliError(str(exc)) from None

    counts = _run(lambda: _with_accounts(config, action))
    verb = "Exported" if args.user_command == "export" else "Imported"
    print(f"{verb} {address}: {counts['messages']} messages in {counts['folders']} folders, "
          f"{counts['roster']} roster items, {counts['archive']} archived messages, "
          f"{'a' if counts['vcard'] else 'no'} vCard")
    if args.user_command == "import" and counts["roster"]:
        # A running server caches the rosters of online accounts: its reload re-reads the ones
        # whose stored version moved and pushes the imported items to their clients.
        try:
            _announce(config, "online clients were sent the imported roster items", "")
        except CliError as error:
            print(f"  the import is stored, but the running server did not reload: {error}", file=sys.stderr)
    return 0


# --- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from peerage.server import Host

    config = _config(args)
    # -v wins over the configured level, so `peerage -v serve` shows debug lines.
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.server.log_level.upper())
    from peerage.ops.logs import use_format

    use_format(config.server.log_format)
    # Driver chatter (every SQL statement at INFO) drowns protocol logs; only their warnings show.
    for noisy in ("aiosqlite", "alembic", "asyncio", "sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    log.debug("configuration loaded from %s", config.path)
    host = Host(config)
    host.verbose = args.verbose
    if uvloop is not None:
        uvloop.run(host.run_until_stopped())
    else:
        asyncio.run(host.run_until_stopped())
    return 0


def _signal_reload(config: Config, timeout: float) -> dict[str, Any] | None:
    """SIGHUP the server running `config` and wait for its report; None when no server runs."""
    import os
    import signal
    import time

    from peerage.server import read_status

    status = read_status(config)
    pid = status.get("pid")
    if not isinstance(pid, int):
        return None
    before = (status.get("reload") or {}).get("at", 0)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = read_status(config).get("reload") or {}
        if outcome.get("at", 0) > before:
            if not outcome.get("ok"):
                raise CliError(f"reload failed, the server keeps its running configuration: {outcome.get('error')}")
            return dict(outcome)
        time.sleep(0.1)
    raise CliError(f"sent SIGHUP to peerage (pid {pid}) but it reported no reload within {timeout:g}s; see its log")


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the running server (SIGHUP) and report what it applied, as `systemctl reload` does."""
    config = _config(args, check_files=False)
    outcome = _signal_reload(config, args.timeout)
    if outcome is None:
        raise CliError(f"no running peerage found for {config.path} (no live status in {config.status_path})")
    print("reloaded: " + ", ".join(outcome.get("applied", [])))
    if outcome.get("restart_needed"):
        print("needs a restart to take effect: " + ", ".join(outcome["restart_needed"]))
    return 0


# --- domain --------------------------------------------------------------------------------------


def cmd_domain(args: argparse.Namespace) -> int:
    from peerage.identity.address import normalize_domain
    from peerage.ops import domains
    from peerage.ops.certs import load_pair

    config = _config(args, check_files=False)
    if args.domain_command == "list":
        for name, entry in config.domains.items():
            if entry.cert is None or entry.key is None:
                print(f"{name}  no certificate")
                continue
            try:
                info = load_pair(name, entry.cert, entry.key)
            except ConfigError as exc:
                print(f"{name}  certificate problem: {exc}")
                continue
            kind = "self-signed" if info.self_signed else "CA-issued"
            print(f"{name}  {kind} certificate, expires {info.not_after:%Y-%m-%d} ({info.days_left:.0f} days)")
        return 0
    name = normalize_domain(args.domain)
    if args.domain_command == "add":
        if (args.cert is None) != (args.key is None):
            raise CliError("give both --cert and --key, or neither for a self-signed certificate")
        if args.cert is not None:
            cert, key = Path(args.cert).resolve(), Path(args.key).resolve()
            load_pair(name, cert, key, "--cert/--key")
        else:
            cert, key = domains.certificate_paths(config, name)
            existing = config.domains.get(name)
            if existing is not None and existing.cert is not None and existing.key is not None:
                cert, key = existing.cert, existing.key
            if not cert.exists():
                from peerage.net.tls import generate_self_signed

                generate_self_signed(name, cert, key)
                print(f"  certificate  {cert} (self-signed; replace it with a CA-issued one for federation)")
        if name in config.domains:
            print(f"{name} is already configured; created what was missing")
        else:
            config = domains.add_entry(config, name, cert, key)
            print(f"Added {name} to {config.path}")
        _generate_domain_keys(config, name)
        _announce(config, f"{name} is served now", f"`peerage serve` will serve {name}")
        print(f"  next: peerage --config {config.path} dns {name}      # records to publish")
        return 0
    # del
    if name not in config.domains:
        raise CliError(f"{name} is not hosted here; the configured domains are: {', '.join(config.domains)}")
    if len(config.domains) == 1:
        raise CliError(f"{name} is the only hosted domain; a server needs at least one")
    accounts = _run(lambda: _with_accounts(config, lambda acc: acc.list(name)))
    if accounts:
        raise CliError(f"{name} still has {len(accounts)} accounts; delete them first (`peerage user list {name}`)")
    config = domains.remove_entry(config, name)
    print(f"Removed {name} from {config.path} (its certificate and keys stay on disk)")
    _announce(config, f"{name} is no longer served", "")
    return 0


def _announce(config: Config, live: str, offline: str) -> None:
    outcome = _signal_reload(config, 15.0)
    if outcome is not None:
        print(f"  the running server reloaded: {live}")
    elif offline:
        print(f"  no server is running; {offline}")


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    from peerage.ops.systemd import unit

    print(unit(config_path=Path(args.config or default_config_path()).resolve(), user=args.user,
               ambient=args.ambient_capabilities), end="")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from peerage.ops.backup import backup
    from peerage.store import Store

    config = _config(args, check_files=False)

    async def revision() -> str | None:
        store = Store(config.database_url)
        try:
            return await store.revision()
        finally:
            await store.close()

    target = Path(args.dir)
    target.mkdir(parents=True, exist_ok=True)
    folder = backup(config, target, _run(revision))
    print(f"Backed up to {folder}")
    print(f"  restore with: peerage --config {config.path} restore {folder}   (with the server stopped)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from peerage.ops.backup import restore
    from peerage.server import read_status

    config = _config(args, check_files=False)
    pid = read_status(config).get("pid")
    if isinstance(pid, int):
        raise CliError(f"peerage (pid {pid}) is serving this configuration; stop it before restoring")
    manifest = restore(config, Path(args.dir))
    _run(lambda: _migrate(config))
    print(f"Restored the backup of {manifest['created']} ({', '.join(manifest['domains'])}) into {config.data_dir}")
    print(f"  its configuration and certificates are in {Path(args.dir) / 'config'}; copy them back if needed")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from peerage.ops.check import run

    report = _run(lambda: run(_config(args)))
    print("\n".join(report.lines).lstrip("\n"))
    return 1 if report.problems else 0


# --- dns -----------------------------------------------------------------------------------------


def xmpp_dns_records(config: Config, domain: str) -> list[str]:
    target = config.server.public_hostname or domain
    records = []
    for service, setting in (
        ("_xmpp-client._tcp", config.xmpp.c2s_listen),
        ("_xmpps-client._tcp", config.xmpp.c2s_direct_tls_listen),
        ("_xmpp-server._tcp", config.xmpp.s2s_listen),
        ("_xmpps-server._tcp", config.xmpp.s2s_direct_tls_listen),
    ):
        if not setting:
            continue
        from peerage.config import parse_listen

        port = parse_listen(setting[0])[1]
        records.append(f"{service}.{domain}. 3600 IN SRV 5 0 {port} {target}.")
        if service.endswith("-server._tcp") and config.muc.enabled:
            # Other servers reach the group chats (XEP-0045) at conference.DOMAIN through these.
            records.append(f"{service}.conference.{domain}. 3600 IN SRV 5 0 {port} {target}.")
    return records


def host_dns_records(config: Config, domain: str) -> list[str]:
    target = config.server.public_hostname or domain
    return [
        f"{target}. 3600 IN A {config.server.public_ipv4 or '<public IPv4 address>'}",
        f"{target}. 3600 IN AAAA {config.server.public_ipv6 or '<public IPv6 address>'}",
    ]


def dns_sections(config: Config, domain: str) -> list[tuple[str, list[str]]]:
    """Every record `peerage dns` prints for `domain`, by section, as zone-file lines."""
    from importlib import import_module

    sections: list[tuple[str, list[str]]] = [("Host", host_dns_records(config, domain))]
    if config.xmpp.enabled:
        sections.append(("XMPP (RFC 6120 §3.2, XEP-0368)", xmpp_dns_records(config, domain)))
    for title, module, enabled in (
        ("SIP (RFC 3263)", "peerage.sip.dnsrecords", config.sip.enabled),
        ("Mail (RFC 5321, 6376, 7208, 7489, 8461, 8460, 6186)", "peerage.mail.dnsrecords", config.smtp.enabled),
        ("Web (RFC 8620 JMAP, autoconfig, MTA-STS policy host)", "peerage.web.dnsrecords", config.web.enabled),
    ):
        if not enabled:
            continue
        records = import_module(module).records(domain, config)
        sections.append((title, list(records)))
    from peerage.ops.dnsrecords import records as ops_records
    from peerage.ops.dnsrecords import zone_safe

    sections.append(("DANE, CAA, service names, reverse DNS (RFC 7672, 7673, 8659)", ops_records(domain, config)))
    return [(title, [zone_safe(r) for r in records]) for title, records in sections]


def cmd_dns(args: argparse.Namespace) -> int:
    from peerage.identity.address import normalize_domain

    config = _config(args)
    domain = normalize_domain(args.domain)
    if domain not in config.domains:
        raise CliError(f"{domain} is not hosted here (configured: {', '.join(config.domains)}); "
                       f"add it with `peerage domain add {domain}`")
    sections = dns_sections(config, domain)
    print(f"; DNS records for {domain}. Publish them in the {domain} zone; this output is a zone file.")
    for title, records in sections:
        print(f"\n; {title}")
        for record in records:
            print(record)
    return 0


# --- parser --------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peerage")
    except PackageNotFoundError:
        from peerage import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerage", description="One address for chat, calls and mail.")
    parser.add_argument("--config", "-c", help="configuration file (default ./peerage.toml or $PEERAGE_CONFIG)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"peerage {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create a configuration, data folder and certificate for DOMAIN")
    init.add_argument("domain")
    init.add_argument("--dir", help="folder to create it in (default: the current folder)")
    init.add_argument("--listen", action="append", metavar="ADDRESS",
                      help="IP address every service listens on (repeat for more; default: all addresses)")
    init.set_defaults(func=cmd_init)

    user = commands.add_parser("user", help="add, change, delete and list accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, text in (("add", "create an account"), ("passwd", "change an account's password")):
        sub = user_commands.add_parser(name, help=text)
        sub.add_argument("address")
        sub.add_argument("--password-file", help="read the password from FILE, or stdin with '-'")
    delete = user_commands.add_parser("del", help="delete an account")
    delete.add_argument("address")
    export = user_commands.add_parser("export", help="write an account's mail, roster, archive and vCard to DIR")
    export.add_argument("address")
    export.add_argument("dir")
    export.add_argument("--format", choices=("maildir", "mbox"), default="maildir", help="mail folders as (default maildir)")
    importing = user_commands.add_parser("import", help="read an export (from `user export`) into an account")
    importing.add_argument("address")
    importing.add_argument("dir")
    listing = user_commands.add_parser("list", help="list accounts")
    listing.add_argument("domain", nargs="?")
    user.set_defaults(func=cmd_user)

    invite = commands.add_parser("invite", help="invitations to register (XEP-0401), optionally as someone's contact")
    invite_commands = invite.add_subparsers(dest="invite_command", required=True, metavar="ACTION")
    invite_create = invite_commands.add_parser("create", help="make a single-use invitation and print its link")
    invite_create.add_argument("--inviter", metavar="ADDRESS",
                               help="an account whose contact the new account becomes (mutual subscription)")
    invite_create.add_argument("--domain", help="the domain of the new account (default: the inviter's, or the first)")
    invite_create.add_argument("--expires-days", type=float, metavar="DAYS",
                               help="how long it stays valid (default: [xmpp.registration] invite_expire_days)")
    invite_create.add_argument("--web", action="store_true",
                               help="print the invitation's web page (https://DOMAIN/invite/TOKEN) instead of "
                                    "the xmpp: URI")
    invite.set_defaults(func=cmd_invite)

    serve = commands.add_parser("serve", help="run every enabled service")
    serve.set_defaults(func=cmd_serve)

    domain = commands.add_parser("domain", help="add, list and delete hosted domains (live)")
    domain_commands = domain.add_subparsers(dest="domain_command", required=True, metavar="ACTION")
    add = domain_commands.add_parser("add", help="host DOMAIN: certificate, DKIM keys, config entry, reload")
    add.add_argument("domain")
    add.add_argument("--cert", help="PEM certificate chain to use (default: a new self-signed one)")
    add.add_argument("--key", help="its PEM private key")
    domain_commands.add_parser("list", help="hosted domains and their certificates")
    remove = domain_commands.add_parser("del", help="stop hosting DOMAIN (it must have no accounts)")
    remove.add_argument("domain")
    domain.set_defaults(func=cmd_domain)

    backup = commands.add_parser("backup", help="snapshot the database, data files, config and keys while serving")
    backup.add_argument("dir", help="folder to write peerage-backup-<time>/ in")
    backup.set_defaults(func=cmd_backup)
    restore = commands.add_parser("restore", help="restore a backup folder (with the server stopped)")
    restore.add_argument("dir", help="a peerage-backup-<time>/ folder")
    restore.set_defaults(func=cmd_restore)

    reload = commands.add_parser("reload", help="reload certificates, domains and live settings (SIGHUP)")
    reload.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the outcome")
    reload.set_defaults(func=cmd_reload)

    unit = commands.add_parser("systemd-unit", help="print a hardened systemd unit for this configuration")
    unit.add_argument("--user", default="peerage", help="account the service runs as (default peerage)")
    unit.add_argument("--ambient-capabilities", action="store_true",
                      help="start as USER with CAP_NET_BIND_SERVICE instead of as root dropping to USER")
    unit.set_defaults(func=cmd_systemd_unit)

    dns = commands.add_parser("dns", help="print the DNS records DOMAIN needs")
    dns.add_argument("domain")
    dns.set_defaults(func=cmd_dns)

    _add_protocol_commands(commands)
    check = commands.choices.get("check") or commands.add_parser("check")
    check.description = "With no kind: check configuration, certificates, DNS, ports and TLS of this installation."
    check.set_defaults(func=cmd_check)
    return parser


def _add_protocol_commands(commands: Any) -> None:
    """Let each protocol add its operator commands (s2s status, check federation, mail queue)."""
    from peerage.cluster import cli as cluster_cli
    from peerage.identity import cli as identity_cli
    from peerage.mail import cli as mail_cli
    from peerage.social import cli as social_cli
    from peerage.xmpp import s2s_cli

    for register in (s2s_cli.register, mail_cli.register, identity_cli.register, cluster_cli.register,
                     social_cli.register):
        register(commands)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from peerage.identity.accounts import AccountError
    from peerage.identity.address import AddressError
    from peerage.identity.credentials import PasswordError
    from peerage.net.listen import ListenError
    from peerage.ops.backup import BackupError
    from peerage.store import SchemaError

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CliError, AccountError, AddressError, PasswordError, ListenError, SchemaError,
            BackupError) as exc:
        print(f"peerage: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a file or folder the command needs (permissions, a full disk)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"peerage: {exc.strerror or exc}{where}", file=sys.stderr)
        if args.verbose:
            log.exception("details")
        return 1
    except Exception as exc:
        # Every expected failure has its own message above; anything else is still one line, with the
        # traceback behind -v for a bug report.
        print(f"peerage: unexpected error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        if args.verbose:
            log.exception("details")
        return 1
