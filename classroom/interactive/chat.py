"""Chat: messages with replies, edits and deletes of your own, moderator deletes and pins, typing, system lines."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from classroom.interactive.base import Context, Feature, handles, is_moderator, not_found
from classroom.interactive.envelope import ProtocolError


def chat_out(row: dict) -> dict:
    return {
        "id": row["id"],
        "kind": row.get("kind", "user"),
        "identity": row.get("identity"),
        "name": row.get("name") or "",
        "text": "" if row.get("deleted_at") else row["text"],
        "reply_to": row.get("reply_to"),
        "created_at": row["created_at"],
        "edited_at": row.get("edited_at"),
        "deleted": bool(row.get("deleted_at")),
        "pinned": bool(row.get("pinned")),
    }


class Chat(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.recent: OrderedDict[int, dict] = OrderedDict()  # last N non-deleted messages, oldest first
        self.pinned: dict[int, dict] = {}

    async def load(self) -> None:
        limit = self.room.options.chat_history
        self.recent = OrderedDict((r["id"], r) for r in await self.repo.recent_chat(self.session_id, limit))
        self.pinned = {r["id"]: r for r in await self.repo.pinned_chat(self.session_id)}

    def state(self, member: Any) -> dict:
        if not self.room.features.get("chat"):
            return {"chat": [], "pinned": []}
        return {"chat": [chat_out(r) for r in self.recent.values()],
                "pinned": [chat_out(r) for r in sorted(self.pinned.values(), key=lambda r: r["id"])]}

    def _remember(self, row: dict) -> None:
        self.recent[row["id"]] = row
        while len(self.recent) > self.room.options.chat_history:
            self.recent.popitem(last=False)

    async def _forget(self, message_id: int) -> None:
        """Drop a deleted message from `recent` and backfill it with older non-deleted ones from storage, so
        joiners still get the newest `chat_history` messages that exist."""
        oldest = next(iter(self.recent))  # <= message_id: the page below it cannot hold the deleted message
        del self.recent[message_id]
        missing = self.room.options.chat_history - len(self.recent)
        if missing > 0:
            older = await self.repo.chat_page(self.session_id, before_id=oldest, limit=missing)  # newest first
            self.recent = OrderedDict([*((r["id"], r) for r in reversed(older)), *self.recent.items()])

    async def _get(self, message_id: int) -> dict:
        row = self.recent.get(message_id) or self.pinned.get(message_id)
        if row is None:
            row = await self.repo.get_chat(self.session_id, message_id)
        if row is None or row.get("deleted_at"):
            raise not_found("chat message", message_id)
        return row

    def _update(self, message_id: int, **fields: Any) -> dict | None:
        for cache in (self.recent, self.pinned):
            if message_id in cache:
                cache[message_id].update(fields)
        return self.recent.get(message_id) or self.pinned.get(message_id)

    @handles("chat.send", feature="chat", bucket="chat")
    async def send(self, ctx: Context) -> dict:
        reply_to = ctx.data.get("reply_to")
        if reply_to is not None:
            await self._get(reply_to)
        row = await self.repo.add_chat(self.session_id, identity=ctx.identity, name=ctx.name,
                                       text=ctx.data["text"], reply_to=reply_to, kind="user", at=ctx.now)
        self._remember(row)
        await self.room.record(ctx, "chat.sent", {"message_id": row["id"]}, {"chat_messages": 1})
        ctx.fanout({"type": "chat.message", "data": chat_out(row)})
        return {"message_id": row["id"], "created_at": row["created_at"]}

    async def add_system(self, ctx: Context, text: str) -> dict:
        row = await self.repo.add_chat(self.session_id, identity=None, name="", text=text[:4096],
                                       reply_to=None, kind="system", at=ctx.now)
        self._remember(row)
        message = {"type": "chat.message", "data": chat_out(row)}
        ctx.fanout(message)
        return message

    @handles("chat.edit", feature="chat", bucket="chat")
    async def edit(self, ctx: Context) -> dict:
        row = await self._get(ctx.data["message_id"])
        if row.get("kind") == "system" or row.get("identity") != ctx.identity:
            raise ProtocolError("forbidden", f"chat message {row['id']} is not yours to edit")
        await self.repo.edit_chat(row["id"], ctx.data["text"], ctx.now)
        row = dict(row, text=ctx.data["text"], edited_at=ctx.now)
        self._update(row["id"], text=row["text"], edited_at=ctx.now)
        ctx.fanout({"type": "chat.edited", "data": chat_out(row)})
        return {"message_id": row["id"], "edited_at": ctx.now}

    @handles("chat.delete", feature="chat", bucket="chat")
    async def delete(self, ctx: Context) -> dict:
        row = await self._get(ctx.data["message_id"])
        own = row.get("kind") != "system" and row.get("identity") == ctx.identity
        if not own and not is_moderator(ctx.member):
            raise ProtocolError("forbidden", f"chat message {row['id']} is not yours; only moderators delete others'")
        await self.repo.delete_chat(row["id"], ctx.identity, ctx.now)
        if row["id"] in self.recent:
            await self._forget(row["id"])
        self.pinned.pop(row["id"], None)
        await self.room.record(ctx, "chat.deleted", {"message_id": row["id"], "own": own})
        ctx.fanout({"type": "chat.deleted", "data": {"message_id": row["id"], "by": ctx.identity}})
        return {"message_id": row["id"]}

    @handles("chat.pin", feature="chat", bucket="moderation", moderator_only=True)
    async def pin(self, ctx: Context) -> dict:
        row = await self._get(ctx.data["message_id"])
        pinned = ctx.data.get("pinned", True)
        await self.repo.pin_chat(row["id"], pinned)
        row = dict(row, pinned=pinned)
        self._update(row["id"], pinned=pinned)
        if pinned:
            self.pinned[row["id"]] = self.recent.get(row["id"], row)
        else:
            self.pinned.pop(row["id"], None)
        await self.room.record(ctx, "chat.pinned" if pinned else "chat.unpinned",
                               {"message_id": row["id"], "pinned": pinned})
        ctx.fanout({"type": "chat.pinned", "data": {"message_id": row["id"], "pinned": pinned,
                                                    "message": chat_out(row)}})
        return {"message_id": row["id"], "pinned": pinned}

    @handles("chat.typing", feature="chat", bucket="typing", ack=False, silent_throttle=True, writes=False)
    async def typing(self, ctx: Context) -> dict:
        sender = ctx.member
        ctx.fanout({"type": "chat.typing", "data": {"identity": ctx.identity, "name": ctx.name,
                                                    "typing": ctx.data.get("typing", True)}},
                   to=lambda m: m is not sender and m.identity != sender.identity)
        return {}
