"""A bovine-herd ActivityPub server for peerage's social acceptance tests, with a control API.

Run with the interpreter of the separate virtual environment bovine-herd lives in (.venv-bovine:
bovine-herd pins cryptography and aiosqlite below peerage's, so it cannot share peerage's environment).
One actor, bea, on BOVINE_DOMAIN, served over HTTPS (BOVINE_CERT, BOVINE_KEY) on BOVINE_LISTEN by
hypercorn; bovine does WebFinger, the actor, HTTP Signatures and its inbox processing. The control API
(plain HTTP on BOVINE_CONTROL) makes bea act through her own outbox (ActivityPub client-to-server, with
bovine's Moo-Auth-1 client) and reads her inbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiohttp import web
from bovine import BovineClient
from bovine.crypto import generate_ed25519_private_key, private_key_to_did_key
from bovine_herd import BovineHerd
from bovine_store import bovine_admin_store
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart
from tortoise import Tortoise

DOMAIN = os.environ["BOVINE_DOMAIN"]
HOST, PORT = os.environ["BOVINE_LISTEN"].rsplit(":", 1)
CONTROL_HOST, CONTROL_PORT = os.environ["BOVINE_CONTROL"].rsplit(":", 1)
DB_URL = f"sqlite://{os.environ['BOVINE_DB']}"
PUBLIC = "https://www.w3.org/ns/activitystreams#Public"


async def register() -> str:
    async with bovine_admin_store(db_url=DB_URL, domain=DOMAIN) as store:
        await Tortoise.generate_schemas()
        name = await store.register("bea")
        secret = generate_ed25519_private_key()
        did_key = private_key_to_did_key(secret)
        await store.add_identity_string_to_actor(name, did_key.removeprefix("did:key:"), did_key)
    return secret


async def main() -> None:
    secret = await register()
    app = Quart(__name__)
    BovineHerd(app, db_url=DB_URL)
    config = Config()
    config.bind = [f"{HOST}:{PORT}"]
    config.certfile = os.environ["BOVINE_CERT"]
    config.keyfile = os.environ["BOVINE_KEY"]
    config.accesslog = None
    server = asyncio.ensure_future(serve(app, config))  # type: ignore[arg-type]
    await asyncio.sleep(1.0)

    client = BovineClient(domain=DOMAIN, secret=secret)
    await client.init()
    actor = client.information
    assert actor is not None

    async def lookup(handle: str) -> str:
        if handle.startswith("https://"):
            return handle
        user, _, domain = handle.removeprefix("acct:").rpartition("@")
        async with client.session.get(f"https://{domain}/.well-known/webfinger",
                                      params={"resource": f"acct:{user}@{domain}"}) as response:
            jrd = json.loads(await response.text())
        return next(link["href"] for link in jrd["links"] if link.get("rel") == "self")

    async def send(activity: dict) -> str:
        activity = {"@context": "https://www.w3.org/ns/activitystreams", "actor": actor["id"], **activity}
        response = await client.send_to_outbox(activity)
        if response.status >= 300:
            raise RuntimeError(f"outbox answered {response.status}: {await response.text()}")
        return response.headers.get("location", "")

    async def handle(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        try:
            if request.method == "GET" and action == "received":
                items = []
                async for item in client.inbox():
                    items.append(item)
                    if len(items) >= 100:
                        break
                return web.json_response(items)
            if request.method == "GET" and action == "followers":
                data = await client.get(actor["followers"])
                first = data.get("orderedItems") or data.get("items")
                if first is None and data.get("first"):
                    page = data["first"] if isinstance(data["first"], dict) else await client.get(data["first"])
                    first = page.get("orderedItems") or page.get("items") or []
                return web.json_response(list(first or []))
            payload = await request.json()
            if action == "follow":
                target = await lookup(payload["handle"])
                return web.json_response({"id": await send({"type": "Follow", "object": target, "to": [target]})})
            if action == "post":
                target = await lookup(payload["to"])
                direct = bool(payload.get("direct"))  # to the recipient alone: a direct message
                note = {"type": "Note", "attributedTo": actor["id"], "content": payload["content"],
                        "to": [target] if direct else [PUBLIC],
                        "cc": [] if direct else [actor["followers"], target],
                        "tag": [{"type": "Mention", "href": target, "name": payload["to"]}]}
                if payload.get("inReplyTo"):
                    note["inReplyTo"] = payload["inReplyTo"]
                location = await send({"type": "Create", "to": note["to"], "cc": note["cc"], "object": note})
                created = await client.get(location)
                obj = created.get("object")
                return web.json_response({"id": obj["id"] if isinstance(obj, dict) else obj, "activity": location})
            if action in ("like", "announce"):
                target = await lookup(payload["to"])
                activity = {"type": action.title(), "object": payload["object"], "to": [target]}
                if action == "announce":
                    activity["to"], activity["cc"] = [PUBLIC], [target, actor["followers"]]
                return web.json_response({"id": await send(activity)})
            if action == "undo":
                target = await lookup(payload["to"])
                return web.json_response({"id": await send({
                    "type": "Undo", "object": payload["activity"], "to": [PUBLIC], "cc": [target]})})
            if action == "delete":
                target = await lookup(payload["to"])
                return web.json_response({"id": await send({
                    "type": "Delete", "object": payload["object"], "to": [PUBLIC], "cc": [target]})})
        except Exception as exc:  # the test shows this text
            return web.Response(status=500, text=f"{type(exc).__name__}: {exc}")
        return web.Response(status=404)

    async def accept_follows() -> None:
        """bovine leaves accepting to the client: bea accepts every Follow of her that arrives."""
        accepted: set[str] = set()
        while True:
            await asyncio.sleep(0.5)
            try:
                count = 0
                async for item in client.inbox():
                    count += 1
                    if count > 50:
                        break
                    if item.get("type") != "Follow" or item.get("id") in accepted:
                        continue
                    target = item.get("object")
                    if (target.get("id") if isinstance(target, dict) else target) != actor["id"]:
                        continue
                    accepted.add(item["id"])
                    follower = item["actor"] if isinstance(item["actor"], str) else item["actor"]["id"]
                    await send({"type": "Accept", "object": item, "to": [follower]})
            except Exception as exc:
                print("accepting follows:", type(exc).__name__, exc, flush=True)

    accepter = asyncio.ensure_future(accept_follows())
    control = web.Application()
    control.router.add_route("*", "/{action}", handle)
    runner = web.AppRunner(control)
    await runner.setup()
    await web.TCPSite(runner, CONTROL_HOST, int(CONTROL_PORT)).start()
    print("bovine peer ready", actor["id"], flush=True)
    await asyncio.gather(server, accepter)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
