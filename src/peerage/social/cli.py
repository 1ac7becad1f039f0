"""`peerage social ...`: operator commands for the social service.

``publish``/``unpublish`` an account (make it discoverable over WebFinger and ActivityPub, or not),
``block``/``unblock``/``blocks`` remote domains (defederation), ``queue`` to list, retry or drop
pending deliveries, and ``rotate-key`` for an account's signing key. They work on the database and the
data folder directly, so they run beside a live server, which re-reads blocks and keys every few
seconds and rescans the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any


def register(commands: Any) -> None:
    social = commands.add_parser("social", help="social (WebFinger, ActivityPub) operator tools")
    sub = social.add_subparsers(dest="social_command", required=True, metavar="ACTION")
    for name, text in (("publish", "make ADDRESS discoverable (WebFinger, ActivityPub profile)"),
                       ("unpublish", "make ADDRESS private again (not found over WebFinger)"),
                       ("rotate-key", "give ADDRESS a new signing key (followers get an Update)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("address")
    for name, text in (("block", "refuse every activity from DOMAIN and its subdomains (defederate)"),
                       ("unblock", "accept DOMAIN again")):
        command = sub.add_parser(name, help=text)
        command.add_argument("domain")
    sub.add_parser("blocks", help="list blocked domains")
    queue = sub.add_parser("queue", help="list the delivery queue, retry or drop entries")
    actions = queue.add_subparsers(dest="queue_action", metavar="list|retry|drop")
    actions.add_parser("list", help="list pending deliveries (the default)")
    retry = actions.add_parser("retry", help="try entries again now")
    retry.add_argument("ids", nargs="*", type=int, help="entry ids (default: all)")
    drop = actions.add_parser("drop", help="remove entries without delivering them")
    drop.add_argument("ids", nargs="+", type=int)
    social.set_defaults(func=cmd_social)


def cmd_social(args: argparse.Namespace) -> int:
    from peerage.config import default_config_path, load_config

    config = load_config(args.config or default_config_path())
    return asyncio.run(_social(config, args))


async def _new_key(config: Any, store: Any, address: str, name: str | None = None) -> Any:
    """A new signing key of `address`: a file, or in a cluster a row every node reads."""
    from peerage.social import keys

    if config.cluster.enabled:
        from peerage.cluster.blobs import SharedKeys

        return await keys.shared(SharedKeys(store.engine), address, name or keys.new_name())
    return await asyncio.to_thread(keys.generate, config.data_dir, address, name)


async def _social(config: Any, args: argparse.Namespace) -> int:
    from peerage.identity.accounts import AccountService
    from peerage.identity.address import normalize_domain, parse_address
    from peerage.social import delivery, keys, state
    from peerage.store import Store

    store = Store(config.database_url)
    try:
        await store.migrate()
        command = args.social_command
        if command in ("publish", "unpublish", "rotate-key"):
            address = str(parse_address(args.address))
            accounts = AccountService(store, config.domains)
            if not await accounts.exists(address):
                print(f"peerage: no account {address}")
                return 1
            default = config.social.discoverable_default
            if command == "rotate-key":
                key = await _new_key(config, store, address)
                await state.set_account(store, address, default, key_id=key.name)
                print(f"{address} now signs with key {key.name} (the server picks it up within seconds)")
            else:
                await state.set_account(store, address, default, discoverable=command == "publish")
                row = await state.account_row(store, address)
                if command == "publish" and not row.key_id and config.cluster.enabled:
                    key = await _new_key(config, store, address, "main-key")
                    await state.set_account(store, address, default, key_id=key.name)
                elif command == "publish" and not (row.key_id and keys.load(config.data_dir, address, row.key_id)):
                    key = await asyncio.to_thread(keys.generate, config.data_dir, address)
                    await state.set_account(store, address, default, key_id=key.name)
                print(f"{address} is {'discoverable' if command == 'publish' else 'private'}")
        elif command in ("block", "unblock"):
            domain = normalize_domain(args.domain)
            if command == "block":
                done = await state.block_domain(store, domain)
                print(f"{domain} {'blocked' if done else 'was already blocked'}")
            else:
                done = await state.unblock_domain(store, domain)
                print(f"{domain} {'unblocked' if done else 'was not blocked'}")
        elif command == "blocks":
            for domain in sorted(set(await state.blocked_domains(store)) | set(config.social.blocked_domains)):
                print(domain)
        elif command == "queue":
            action = args.queue_action or "list"
            if action == "list":
                entries = await delivery.list_entries(store)
                if not entries:
                    print("queue is empty")
                now = time.time()
                for e in entries:
                    due = max(0, int(e.next_attempt_at - now))
                    print(f"{e.id}\t{e.account}\t{e.inbox}\tattempts={e.attempts}\tnext in {due}s\t{e.last_error}")
            elif action == "retry":
                count = await delivery.retry_entries(store, list(args.ids) or None)
                print(f"{count} entries will be retried now")
            else:
                count = await delivery.drop_entries(store, list(args.ids))
                print(f"{count} entries dropped")
        return 0
    finally:
        await store.close()
