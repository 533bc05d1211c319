"""Raised hands (an ordered queue for moderators) and emoji reactions (throttled, not stored except as events)."""

from __future__ import annotations

from typing import Any

from classroom.interactive.base import Context, Feature, handles, is_moderator
from classroom.interactive.envelope import ProtocolError


class Hands(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.queue: dict[str, dict] = {}  # identity -> {identity, name, raised_at}, in raise order

    async def load(self) -> None:
        rows = sorted(await self.repo.raised_hands(self.session_id), key=lambda r: (r["raised_at"], r.get("id", 0)))
        self.queue = {r["identity"]: {"identity": r["identity"], "name": r.get("name") or r["identity"],
                                      "raised_at": r["raised_at"]} for r in rows}

    def queue_out(self) -> list[dict]:
        return [dict(h, position=i + 1) for i, h in enumerate(self.queue.values())]

    def state(self, member: Any) -> dict:
        if not self.room.features.get("hands"):
            return {"hands": None}
        if is_moderator(member):
            return {"hands": {"queue": self.queue_out()}}
        mine = self._position(member.identity)
        return {"hands": {"raised": mine is not None, "position": mine, "count": len(self.queue)}}

    def _position(self, identity: str) -> int | None:
        for i, key in enumerate(self.queue):
            if key == identity:
                return i + 1
        return None

    def _publish(self, ctx: Context) -> None:
        ctx.to_moderators({"type": "hand.queue", "data": {"queue": self.queue_out()}})
        count = len(self.queue)
        ctx.fanout(lambda m: {"type": "hand.state", "data": {"raised": m.identity in self.queue,
                                                             "position": self._position(m.identity),
                                                             "count": count}},
                   to=lambda m: not is_moderator(m))

    @handles("hand.raise", feature="hands", bucket="hand")
    async def raise_hand(self, ctx: Context) -> dict:
        if ctx.identity in self.queue:
            return {"raised": True, "position": self._position(ctx.identity), "already": True}
        await self.repo.raise_hand(self.session_id, identity=ctx.identity, name=ctx.name, at=ctx.now)
        self.queue[ctx.identity] = {"identity": ctx.identity, "name": ctx.name, "raised_at": ctx.now}
        await self.room.record(ctx, "hand.raised", {"raised": True}, {"hand_raises": 1})
        self._publish(ctx)
        return {"raised": True, "position": self._position(ctx.identity)}

    @handles("hand.lower", feature="hands", bucket="hand")
    async def lower_hand(self, ctx: Context) -> dict:
        target = ctx.data.get("identity", ctx.identity)
        if target != ctx.identity and not is_moderator(ctx.member):
            raise ProtocolError("forbidden", "only moderators may lower another participant's hand")
        if target not in self.queue:
            raise ProtocolError("not_found", f"{target} has no raised hand")
        await self.repo.lower_hand(self.session_id, identity=target, by=ctx.identity, at=ctx.now)
        del self.queue[target]
        await self.room.record(ctx, "hand.lowered", {"raised": False, "identity": target})
        self._publish(ctx)
        return {"identity": target, "raised": False}

    @handles("hand.lower_all", feature="hands", bucket="hand")
    async def lower_all(self, ctx: Context) -> dict:
        if not is_moderator(ctx.member):
            raise ProtocolError("forbidden", "only moderators may lower every hand")
        lowered = list(self.queue)
        for identity in lowered:
            await self.repo.lower_hand(self.session_id, identity=identity, by=ctx.identity, at=ctx.now)
            await self.room.record(ctx, "hand.lowered", {"raised": False, "identity": identity})
        self.queue.clear()
        self._publish(ctx)
        return {"lowered": lowered}

    @handles("reaction.send", feature="reactions", bucket="reaction")
    async def reaction(self, ctx: Context) -> dict:
        emoji = ctx.data["emoji"]
        await self.room.record(ctx, "reaction.sent", {"emoji": emoji}, {"reactions": 1})
        ctx.fanout({"type": "reaction", "data": {"identity": ctx.identity, "name": ctx.name, "emoji": emoji,
                                                 "at": ctx.now}})
        return {"emoji": emoji}
