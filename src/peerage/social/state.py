"""The social service's persistent state: opt-in, follow graph, activities, keys, blocks, seen ids.

This module is in charge of every read and write of the ``social_`` tables apart from the delivery
queue (``peerage.social.delivery``). Functions take the Store and stay free of HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from peerage.social.tables import (
    social_accounts,
    social_activities,
    social_blocked_domains,
    social_followers,
    social_following,
    social_remote_keys,
    social_seen,
)


async def account_row(store: Any, address: str) -> Any:
    async with store.begin() as conn:
        return (await conn.execute(select(social_accounts).where(social_accounts.c.address == address))).first()


async def ensure_account(store: Any, address: str, default_discoverable: bool) -> Any:
    row = await account_row(store, address)
    if row is None:
        try:
            async with store.begin() as conn:
                await conn.execute(insert(social_accounts).values(
                    address=address, discoverable=default_discoverable, key_id="", summary="",
                    moved_to="", also_known_as="[]", updated_at=time.time()))
        except IntegrityError:
            pass
        row = await account_row(store, address)
    return row


async def set_account(store: Any, address: str, default_discoverable: bool, **values: Any) -> None:
    await ensure_account(store, address, default_discoverable)
    async with store.begin() as conn:
        await conn.execute(update(social_accounts).where(social_accounts.c.address == address).values(
            updated_at=time.time(), **values))


def aliases(row: Any) -> list[str]:
    try:
        value = json.loads(row.also_known_as) if row is not None else []
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)]


# --- follow graph ------------------------------------------------------------------------------


async def add_follower(store: Any, account: str, actor: str, inbox: str, shared_inbox: str, follow_id: str,
                       state: str = "accepted") -> None:
    async with store.begin() as conn:
        await conn.execute(delete(social_followers).where(
            social_followers.c.account == account, social_followers.c.actor == actor))
        await conn.execute(insert(social_followers).values(
            account=account, actor=actor, inbox=inbox, shared_inbox=shared_inbox, follow_id=follow_id,
            created_at=time.time(), state=state))


async def follower(store: Any, account: str, actor: str) -> Any:
    async with store.begin() as conn:
        return (await conn.execute(select(social_followers).where(
            social_followers.c.account == account, social_followers.c.actor == actor))).first()


async def follow_requests(store: Any, account: str) -> Sequence[Any]:
    """Follows of a locked account that wait for its owner, oldest first."""
    async with store.begin() as conn:
        return (await conn.execute(select(social_followers).where(
            social_followers.c.account == account, social_followers.c.state == "pending").order_by(
            social_followers.c.id))).all()


async def approve_follower(store: Any, account: str, actor: str) -> bool:
    async with store.begin() as conn:
        result = await conn.execute(update(social_followers).where(
            social_followers.c.account == account, social_followers.c.actor == actor,
            social_followers.c.state == "pending").values(state="accepted"))
    return bool(result.rowcount)


async def remove_follower(store: Any, account: str, actor: str) -> bool:
    async with store.begin() as conn:
        result = await conn.execute(delete(social_followers).where(
            social_followers.c.account == account, social_followers.c.actor == actor))
    return bool(result.rowcount)


async def followers(store: Any, account: str) -> Sequence[Any]:
    """Accepted followers (a pending request of a locked account is not one yet)."""
    async with store.begin() as conn:
        return (await conn.execute(select(social_followers).where(
            social_followers.c.account == account, social_followers.c.state == "accepted").order_by(
            social_followers.c.id))).all()


async def add_following(store: Any, account: str, actor: str, inbox: str, follow_id: str) -> None:
    async with store.begin() as conn:
        await conn.execute(delete(social_following).where(
            social_following.c.account == account, social_following.c.actor == actor))
        await conn.execute(insert(social_following).values(
            account=account, actor=actor, inbox=inbox, follow_id=follow_id, state="pending",
            created_at=time.time()))


async def set_following_state(store: Any, actor: str, follow_id: str, state: str | None) -> int:
    """Accept (state "accepted") or Reject/Undo (None: removed) the follow `follow_id` of `actor`."""
    where: list[Any] = [social_following.c.actor == actor]
    if follow_id:
        where.append(social_following.c.follow_id == follow_id)
    async with store.begin() as conn:
        if state is None:
            result = await conn.execute(delete(social_following).where(*where))
        else:
            result = await conn.execute(update(social_following).where(*where).values(state=state))
    return int(result.rowcount or 0)


async def following(store: Any, account: str, accepted_only: bool = True) -> Sequence[Any]:
    query = select(social_following).where(social_following.c.account == account)
    if accepted_only:
        query = query.where(social_following.c.state == "accepted")
    async with store.begin() as conn:
        return (await conn.execute(query.order_by(social_following.c.id))).all()


async def local_followers_of(store: Any, actor: str) -> list[str]:
    """Local accounts following remote `actor` (accepted), for fan-in on the shared inbox."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_following.c.account).where(
            social_following.c.actor == actor, social_following.c.state == "accepted"))).all()
    return [r.account for r in rows]


async def remove_following(store: Any, account: str, actor: str) -> Any:
    async with store.begin() as conn:
        row = (await conn.execute(select(social_following).where(
            social_following.c.account == account, social_following.c.actor == actor))).first()
        if row is not None:
            await conn.execute(delete(social_following).where(social_following.c.id == row.id))
    return row


async def forget_actor(store: Any, actor: str) -> None:
    """A remote actor was deleted: no longer a follower or followed, its key no longer cached."""
    async with store.begin() as conn:
        await conn.execute(delete(social_followers).where(social_followers.c.actor == actor))
        await conn.execute(delete(social_following).where(social_following.c.actor == actor))
        await conn.execute(delete(social_remote_keys).where(social_remote_keys.c.actor == actor))


# --- activities --------------------------------------------------------------------------------


async def store_activity(conn: Any, *, activity_id: str, account: str, local: bool, type_: str, actor: str,
                         object_id: str, public: bool, document: dict[str, Any]) -> bool:
    """Insert one activity row in `conn`'s transaction; False when that account already has it."""
    exists = (await conn.execute(select(social_activities.c.id).where(
        social_activities.c.account == account, social_activities.c.activity_id == activity_id))).first()
    if exists is not None:
        return False
    await conn.execute(insert(social_activities).values(
        activity_id=activity_id, account=account, local=local, type=type_, actor=actor, object_id=object_id,
        public=public, deleted=False, document=json.dumps(document, separators=(",", ":")),
        received_at=time.time(), in_reply_to=reply_target(document) if type_ == "Create" else None))
    return True


def reply_target(document: dict[str, Any]) -> str | None:
    """The id a Create's object replies to (bounded to the column), or None."""
    obj = document.get("object")
    target = obj.get("inReplyTo") if isinstance(obj, dict) else None
    if isinstance(target, dict):
        target = target.get("id")
    return target if isinstance(target, str) and 0 < len(target) <= 2048 else None


async def local_activity(store: Any, activity_id: str) -> Any:
    async with store.begin() as conn:
        return (await conn.execute(select(social_activities).where(
            social_activities.c.activity_id == activity_id, social_activities.c.local.is_(True)))).first()


async def local_object(store: Any, object_id: str) -> Any:
    """The local Create whose object is `object_id` (a Note we published)."""
    async with store.begin() as conn:
        return (await conn.execute(select(social_activities).where(
            social_activities.c.object_id == object_id, social_activities.c.local.is_(True),
            social_activities.c.type == "Create"))).first()


async def activities(store: Any, account: str, *, local: bool, types: tuple[str, ...] | None = None,
                     public_only: bool = False, limit: int = 50, before: int | None = None) -> Sequence[Any]:
    query = select(social_activities).where(social_activities.c.account == account,
                                            social_activities.c.local.is_(local),
                                            social_activities.c.deleted.is_(False))
    if before is not None:
        query = query.where(social_activities.c.id < before)
    if types:
        query = query.where(social_activities.c.type.in_(types))
    if public_only:
        query = query.where(social_activities.c.public.is_(True))
    async with store.begin() as conn:
        return (await conn.execute(query.order_by(social_activities.c.id.desc()).limit(limit))).all()


async def timeline(store: Any, account: str, limit: int, before: int | None = None) -> Sequence[Any]:
    """The home timeline: the account's own posts and boosts, and those it received, newest first;
    `before` (a row id) pages back, as Mastodon's max_id does."""
    query = select(social_activities).where(
        social_activities.c.account == account, social_activities.c.type.in_(("Create", "Announce")),
        social_activities.c.deleted.is_(False))
    if before is not None:
        query = query.where(social_activities.c.id < before)
    async with store.begin() as conn:
        return (await conn.execute(query.order_by(social_activities.c.id.desc()).limit(limit))).all()


async def received_from(store: Any, account: str, actor: str, limit: int) -> Sequence[Any]:
    """Posts (Creates) of remote `actor` that `account` received, newest first."""
    async with store.begin() as conn:
        return (await conn.execute(select(social_activities).where(
            social_activities.c.account == account, social_activities.c.local.is_(False),
            social_activities.c.actor == actor, social_activities.c.type == "Create",
            social_activities.c.deleted.is_(False)).order_by(social_activities.c.id.desc()).limit(limit))).all()


async def replies_to(store: Any, object_id: str, account: str, limit: int) -> list[Any]:
    """Replies to `object_id` that `account` may see (public ones, and those it holds), oldest first,
    one row per reply."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_activities).where(
            social_activities.c.in_reply_to == object_id, social_activities.c.type == "Create",
            social_activities.c.deleted.is_(False),
            (social_activities.c.public.is_(True)) | (social_activities.c.account == account)).order_by(
            social_activities.c.id).limit(limit * 4))).all()
    found: dict[str, Any] = {}
    for row in rows:
        found.setdefault(row.object_id, row)
    return list(found.values())[:limit]


async def last_direct_from(store: Any, account: str, actor: str) -> str:
    """The id of the newest non-public Note from `actor` to `account` (what a reply answers)."""
    async with store.begin() as conn:
        row = (await conn.execute(select(social_activities.c.object_id).where(
            social_activities.c.account == account, social_activities.c.local.is_(False),
            social_activities.c.actor == actor, social_activities.c.type == "Create",
            social_activities.c.public.is_(False), social_activities.c.deleted.is_(False)).order_by(
            social_activities.c.id.desc()).limit(1))).first()
    return str(row.object_id) if row is not None else ""


async def set_pinned(store: Any, account: str, object_id: str, pinned: bool) -> bool:
    """Pin (or unpin) `account`'s own post `object_id`; False when it is not such a post."""
    async with store.begin() as conn:
        result = await conn.execute(update(social_activities).where(
            social_activities.c.account == account, social_activities.c.object_id == object_id,
            social_activities.c.local.is_(True), social_activities.c.type == "Create",
            social_activities.c.deleted.is_(False)).values(pinned_at=time.time() if pinned else None))
    return bool(result.rowcount)


async def pinned(store: Any, account: str) -> Sequence[Any]:
    """`account`'s pinned posts, the latest pin first."""
    async with store.begin() as conn:
        return (await conn.execute(select(social_activities).where(
            social_activities.c.account == account, social_activities.c.local.is_(True),
            social_activities.c.pinned_at.is_not(None), social_activities.c.deleted.is_(False)).order_by(
            social_activities.c.pinned_at.desc()))).all()


async def key_names(store: Any) -> dict[str, str]:
    """address -> current key name of every account with a social row (rotation is noticed by it)."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_accounts.c.address, social_accounts.c.key_id))).all()
    return {r.address: r.key_id for r in rows}


async def count_local(store: Any, account: str | None = None) -> int:
    from sqlalchemy import func

    query = select(func.count()).select_from(social_activities).where(
        social_activities.c.local.is_(True), social_activities.c.type == "Create",
        social_activities.c.deleted.is_(False))
    if account:
        query = query.where(social_activities.c.account == account)
    async with store.begin() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def receivers_of(store: Any, object_id: str, actor: str) -> list[str]:
    """Local accounts that received remote `actor`'s post `object_id` (and have not seen it deleted)."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_activities.c.account).where(
            social_activities.c.object_id == object_id, social_activities.c.actor == actor,
            social_activities.c.local.is_(False), social_activities.c.type == "Create",
            social_activities.c.deleted.is_(False)))).all()
    return list(dict.fromkeys(r.account for r in rows))


async def holders_of(store: Any, activity_id: str, actor: str, type_: str) -> list[str]:
    """Local accounts holding remote `actor`'s activity `activity_id` of `type_` (not undone)."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_activities.c.account).where(
            social_activities.c.activity_id == activity_id, social_activities.c.actor == actor,
            social_activities.c.local.is_(False), social_activities.c.type == type_,
            social_activities.c.deleted.is_(False)))).all()
    return list(dict.fromkeys(r.account for r in rows))


async def mark_deleted(store: Any, object_id: str, actor: str) -> int:
    """Delete of `object_id` by `actor`: every copy of it (and activities about it by that actor)."""
    async with store.begin() as conn:
        result = await conn.execute(update(social_activities).where(
            social_activities.c.object_id == object_id, social_activities.c.actor == actor).values(deleted=True))
    return int(result.rowcount or 0)


async def remove_activity(store: Any, activity_id: str, actor: str) -> int:
    async with store.begin() as conn:
        result = await conn.execute(update(social_activities).where(
            social_activities.c.activity_id == activity_id, social_activities.c.actor == actor).values(deleted=True))
    return int(result.rowcount or 0)


async def replace_object(store: Any, object_id: str, actor: str, new_object: dict[str, Any]) -> int:
    """Update(Note): the stored Creates of `object_id` by `actor` carry the new version."""
    async with store.begin() as conn:
        rows = (await conn.execute(select(social_activities).where(
            social_activities.c.object_id == object_id, social_activities.c.actor == actor,
            social_activities.c.type == "Create"))).all()
        for row in rows:
            document = json.loads(row.document)
            document["object"] = new_object
            await conn.execute(update(social_activities).where(social_activities.c.id == row.id).values(
                document=json.dumps(document, separators=(",", ":")), in_reply_to=reply_target(document)))
    return len(rows)


# --- seen ids and signatures (deduplication, replay) -------------------------------------------


async def seen(store: Any, key: str) -> bool:
    async with store.begin() as conn:
        return (await conn.execute(select(social_seen.c.key).where(social_seen.c.key == key))).first() is not None


async def mark_seen(conn: Any, key: str) -> bool:
    """Record `key` in `conn`'s transaction; False when it was already there."""
    if (await conn.execute(select(social_seen.c.key).where(social_seen.c.key == key))).first() is not None:
        return False
    # Two copies of one activity can arrive at once (a post to a follower's shared inbox and to the
    # same server's personal inbox of someone it mentions): the second insert loses, in a savepoint
    # so the transaction goes on, and that copy is a duplicate rather than a 500.
    try:
        async with conn.begin_nested():
            await conn.execute(insert(social_seen).values(key=key, seen_at=time.time()))
    except IntegrityError:
        return False
    return True


async def expire_seen(store: Any, older_than: float) -> None:
    async with store.begin() as conn:
        await conn.execute(delete(social_seen).where(social_seen.c.seen_at < older_than))


# --- remote keys ---------------------------------------------------------------------------------


async def cached_key(store: Any, key_id: str) -> Any:
    async with store.begin() as conn:
        return (await conn.execute(select(social_remote_keys).where(social_remote_keys.c.key_id == key_id))).first()


async def cache_key(store: Any, key_id: str, actor: str, pem: str, inbox: str, shared_inbox: str) -> None:
    async with store.begin() as conn:
        await conn.execute(delete(social_remote_keys).where(social_remote_keys.c.key_id == key_id))
        await conn.execute(insert(social_remote_keys).values(
            key_id=key_id, actor=actor, public_key_pem=pem, inbox=inbox, shared_inbox=shared_inbox,
            fetched_at=time.time()))


# --- blocked domains -------------------------------------------------------------------------------


async def blocked_domains(store: Any) -> list[str]:
    async with store.begin() as conn:
        return [r.domain for r in (await conn.execute(select(social_blocked_domains.c.domain))).all()]


async def block_domain(store: Any, domain: str) -> bool:
    try:
        async with store.begin() as conn:
            await conn.execute(insert(social_blocked_domains).values(domain=domain.lower(), created_at=time.time()))
    except IntegrityError:
        return False
    return True


async def unblock_domain(store: Any, domain: str) -> bool:
    async with store.begin() as conn:
        result = await conn.execute(delete(social_blocked_domains).where(
            social_blocked_domains.c.domain == domain.lower()))
    return bool(result.rowcount)
