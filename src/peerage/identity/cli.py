"""`peerage user app-password add|list|revoke`: per-device secrets an account can revoke one by one.

A phone or a mail client gets its own generated password, accepted by XMPP, SIP, IMAP and SMTP like
the account's own; revoking it cuts off that device only. Only derived secrets are stored (see
peerage.identity.tables); the password is shown once, when it is created.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add `app-password` under the existing `user` command."""
    user = commands.choices["user"]
    user_commands = next(a for a in user._actions if isinstance(a, argparse._SubParsersAction))
    app = user_commands.add_parser("app-password", help="per-device passwords: add, list, revoke")
    actions = app.add_subparsers(dest="app_action", required=True, metavar="add|list|revoke")
    add = actions.add_parser("add", help="create a device password and print it once")
    add.add_argument("address")
    add.add_argument("name", help="what the password is for, e.g. 'phone' or 'laptop mail'")
    listing = actions.add_parser("list", help="list an account's device passwords")
    listing.add_argument("address")
    revoke = actions.add_parser("revoke", help="revoke one device password")
    revoke.add_argument("address")
    revoke.add_argument("name")
    app.set_defaults(func=cmd_app_password)


def cmd_app_password(args: argparse.Namespace) -> int:
    from peerage.cli import _config, _run, _with_accounts

    config = _config(args, check_files=False)
    if args.app_action == "add":
        password = _run(lambda: _with_accounts(config, lambda acc: acc.app_password_add(args.address, args.name)))
        print(f"App password '{args.name}' for {args.address} (shown only now; it works for chat, calls and mail):")
        print(password)
    elif args.app_action == "list":
        rows = _run(lambda: _with_accounts(config, lambda acc: acc.app_password_list(args.address)))
        for name, created in rows:
            print(f"{name}\t{created:%Y-%m-%d %H:%M}" if created is not None else name)
    else:
        _run(lambda: _with_accounts(config, lambda acc: acc.app_password_revoke(args.address, args.name)))
        print(f"Revoked app password '{args.name}' of {args.address}; devices using it can no longer log in.")
    return 0
