"""Q&A: questions (optionally anonymous), one toggleable upvote per person, answers, dismiss, feature."""

from __future__ import annotations

from typing import Any

from classroom.interactive.base import Context, Feature, handles, is_moderator, not_found
from classroom.interactive.envelope import ProtocolError

ANONYMOUS_NAME = "Anonymous"


def question_out(row: dict, viewer: Any) -> dict:
    """A question as `viewer` may see it: an anonymous asker is hidden from everyone but the asker and, unless
    it was asked while the session hid askers from staff too (`hidden_from_staff`), moderators."""
    mine = viewer is not None and row.get("identity") == viewer.identity
    staff_sees = is_moderator(viewer) and not row.get("hidden_from_staff")
    hidden = row.get("anonymous") and not mine and not staff_sees
    voters = row.get("voters") or set()
    return {
        "id": row["id"],
        "text": row["text"],
        "anonymous": bool(row.get("anonymous")),
        "identity": None if hidden else row.get("identity"),
        "name": ANONYMOUS_NAME if hidden else row.get("name") or row.get("identity"),
        "mine": mine,
        "votes": len(voters),
        "voted": viewer is not None and viewer.identity in voters,
        "status": row.get("status", "open"),
        "answer": row.get("answer"),
        "answered_live": bool(row.get("answered_live")),
        "featured": bool(row.get("featured")),
        "created_at": row["created_at"],
        "answered_at": row.get("answered_at"),
    }


def sort_key(row: dict) -> tuple:
    return (-len(row.get("voters") or ()), row["created_at"], row["id"])


class QA(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.questions: dict[int, dict] = {}

    async def load(self) -> None:
        self.questions = {}
        for row in await self.repo.list_questions(self.session_id):
            row["voters"] = set(row.get("voters") or ())
            self.questions[row["id"]] = row

    def visible(self, row: dict, viewer: Any) -> bool:
        return row.get("status") != "dismissed" or is_moderator(viewer)

    def state(self, member: Any) -> dict:
        if not self.room.features.get("qa"):
            return {"questions": []}
        # What the ask form tells the asker: who sees the name of an anonymous question.
        settings = {"anonymous_to_staff": self.room.anonymous_to_staff}
        rows = sorted((r for r in self.questions.values() if self.visible(r, member)), key=sort_key)
        return {"questions": [question_out(r, member) for r in rows], "qa": settings}

    def _get(self, question_id: int) -> dict:
        row = self.questions.get(question_id)
        if row is None:
            raise not_found("question", question_id)
        return row

    def _publish(self, ctx: Context, row: dict) -> None:
        ctx.fanout(lambda m: {"type": "qa.question", "data": question_out(row, m)},
                   to=lambda m: self.visible(row, m) or row.get("status") == "dismissed")

    @handles("qa.ask", feature="qa", bucket="qa")
    async def ask(self, ctx: Context) -> dict:
        anonymous = bool(ctx.data.get("anonymous", False))
        hidden = anonymous and self.room.anonymous_to_staff
        row = await self.repo.add_question(self.session_id, identity=ctx.identity, name=ctx.name,
                                           text=ctx.data["text"], anonymous=anonymous, at=ctx.now,
                                           hidden_from_staff=hidden)
        row.setdefault("status", "open")
        row["hidden_from_staff"] = hidden
        row["voters"] = set()
        self.questions[row["id"]] = row
        # Hidden from staff: no actor on the timeline and no per-person counter, which would name the asker.
        await self.room.record(ctx, "question.asked", {"question_id": row["id"], "anonymous": anonymous},
                               None if hidden else {"questions": 1}, anonymous=hidden)
        self._publish(ctx, row)
        return {"question_id": row["id"], "created_at": row["created_at"]}

    @handles("qa.upvote", feature="qa", bucket="vote")
    async def upvote(self, ctx: Context) -> dict:
        row = self._get(ctx.data["question_id"])
        if row.get("status") == "dismissed":
            raise ProtocolError("conflict", f"question {row['id']} was dismissed")
        voted = ctx.identity in row["voters"]
        on = ctx.data.get("on", not voted)
        if on != voted:
            await self.repo.set_question_vote(row["id"], ctx.identity, on, ctx.now)
            (row["voters"].add if on else row["voters"].discard)(ctx.identity)
            await self.room.record(ctx, "question.voted" if on else "question.unvoted",
                                   {"question_id": row["id"], "on": on},
                                   {"votes": 1} if on else None)
            self._publish(ctx, row)
        return {"question_id": row["id"], "voted": on, "votes": len(row["voters"])}

    @handles("qa.answer", feature="qa", bucket="moderation", moderator_only=True)
    async def answer(self, ctx: Context) -> dict:
        row = self._get(ctx.data["question_id"])
        fields = {"status": "answered", "answer": ctx.data.get("text"),
                  "answered_live": bool(ctx.data.get("live", False)), "answered_at": ctx.now,
                  "answered_by": ctx.identity}
        await self.repo.update_question(row["id"], **fields)
        row.update(fields)
        await self.room.record(ctx, "question.answered", {"question_id": row["id"], "live": fields["answered_live"]})
        self._publish(ctx, row)
        return {"question_id": row["id"], "status": "answered"}

    @handles("qa.dismiss", feature="qa", bucket="moderation", moderator_only=True)
    async def dismiss(self, ctx: Context) -> dict:
        row = self._get(ctx.data["question_id"])
        await self.repo.update_question(row["id"], status="dismissed")
        row["status"] = "dismissed"
        await self.room.record(ctx, "question.dismissed", {"question_id": row["id"]})
        self._publish(ctx, row)
        return {"question_id": row["id"], "status": "dismissed"}

    @handles("qa.feature", feature="qa", bucket="moderation", moderator_only=True)
    async def feature(self, ctx: Context) -> dict:
        row = self._get(ctx.data["question_id"])
        featured = ctx.data.get("featured", True)
        await self.repo.update_question(row["id"], featured=featured)
        row["featured"] = featured
        await self.room.record(ctx, "question.featured" if featured else "question.unfeatured",
                               {"question_id": row["id"], "featured": featured})
        self._publish(ctx, row)
        return {"question_id": row["id"], "featured": featured}
