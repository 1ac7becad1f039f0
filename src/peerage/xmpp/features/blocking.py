"""XEP-0191 Blocking Command: the blocklist, its pushes, and the checks the core applies.

This module is in charge of the blocklist IQs. The core (``peerage.xmpp.core.is_blocked``) drops or
bounces stanzas between an account and the JIDs it blocks.
"""

from __future__ import annotations

from peerage.xmpp.features import Feature, IqContext, IqHandler, result
from peerage.xmpp.jid import JidError, normalize_jid
from peerage.xmpp.stream import Element, error_reply

BLOCKING_NS = "urn:xmpp:blocking"
#: Entries per blocklist. ejabberd's privacy lists have no cap; a bound keeps the per-account
#: cache (kept in memory while the account is online) small.
MAX_BLOCKLIST_ENTRIES = 10000


class Blocking(Feature):
    account_features = (BLOCKING_NS,)
    server_features = (BLOCKING_NS,)

    def account_iq(self) -> dict[tuple[str, str], IqHandler]:
        return {
            ("blocklist", BLOCKING_NS): self._blocklist,
            ("block", BLOCKING_NS): self._block,
            ("unblock", BLOCKING_NS): self._unblock,
        }

    async def _blocklist(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "get":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        state = await self.core.user(ctx.owner)  # type: ignore[arg-type]
        if ctx.session is not None:
            ctx.session.blocklist_requested = True
        blocklist = Element("blocklist", BLOCKING_NS)
        for jid in sorted(state.blocklist):
            blocklist.add("item", attrs={"jid": jid})
        return result(ctx, blocklist)

    def _jids(self, ctx: IqContext) -> list[str] | None:
        jids = []
        for item in ctx.payload.find_all("item", BLOCKING_NS):
            try:
                jids.append(normalize_jid(item.attrs.get("jid", "")))
            except JidError:
                return None
        return jids

    async def _block(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        jids = self._jids(ctx)
        if jids is None:
            return error_reply(ctx.iq, "jid-malformed")
        if not jids:
            return error_reply(ctx.iq, "bad-request", "block needs at least one item")
        owner = ctx.owner
        assert owner is not None
        state = await self.core.user(owner)
        if len(state.blocklist | set(jids)) > MAX_BLOCKLIST_ENTRIES:
            return error_reply(ctx.iq, "resource-constraint", "the blocklist is full")
        await self.core.storage.block(owner, jids)
        state.blocklist.update(jids)
        # XEP-0191 section 3.3: blocked contacts see the user go unavailable.
        for session in list(self.core.router.resources(owner).values()):
            if session.available:
                for jid in jids:
                    item = state.roster.get(jid)
                    if item is not None and item.subscription in ("from", "both"):
                        unavailable = Element("presence", "", {"from": session.full_jid, "to": jid,
                                                               "type": "unavailable"})
                        result_ = self.core.router.route(unavailable)
                        if result_ is not None:
                            await result_
        self._push(owner, "block", jids)
        return result(ctx)

    async def _unblock(self, ctx: IqContext) -> Element | None:
        if not ctx.is_owner or ctx.iq.attrs.get("type") != "set":
            return error_reply(ctx.iq, "forbidden" if not ctx.is_owner else "bad-request")
        jids = self._jids(ctx)
        if jids is None:
            return error_reply(ctx.iq, "jid-malformed")
        owner = ctx.owner
        assert owner is not None
        state = await self.core.user(owner)
        await self.core.storage.unblock(owner, jids or None)
        if jids:
            state.blocklist.difference_update(jids)
        else:
            state.blocklist.clear()
        self._push(owner, "unblock", jids)
        return result(ctx)

    def _push(self, owner: str, kind: str, jids: list[str]) -> None:
        for session in list(self.core.router.resources(owner).values()):
            if not getattr(session, "blocklist_requested", False):
                continue
            payload = Element(kind, BLOCKING_NS)
            for jid in jids:
                payload.add("item", attrs={"jid": jid})
            session.send(Element("iq", "", {"type": "set", "id": f"block-push-{id(payload)}",
                                            "to": session.full_jid}, [payload]))
