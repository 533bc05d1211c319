"""Polls: create (draft), start, vote (change while open), close (by hand or by timer), live or final results.

Percentages: percentage[i] = counts[i] / total_choices * 100, where total_choices is the number of choices
cast by all voters. For single choice that is the share of voters; for multiple choice the percentages
still add up to 100 (a voter who ticks two options casts two choices).
"""

from __future__ import annotations

from typing import Any

from classroom.interactive.base import Context, Feature, handles, is_moderator, not_found
from classroom.interactive.envelope import ProtocolError


def tally(poll: dict) -> dict:
    counts = [0] * len(poll["options"])
    for choices in poll["votes"].values():
        for c in choices:
            counts[c] += 1
    total = sum(counts)
    return {
        "counts": counts,
        "percentages": [round(100.0 * c / total, 1) if total else 0.0 for c in counts],
        "total_voters": len(poll["votes"]),
        "total_choices": total,
    }


def may_see_results(poll: dict, viewer: Any) -> bool:
    return is_moderator(viewer) or poll["status"] == "closed" or (
        poll["status"] == "open" and poll["results"] == "live")


def may_see_poll(poll: dict, viewer: Any) -> bool:
    return poll["status"] != "draft" or is_moderator(viewer)


def poll_out(poll: dict, viewer: Any) -> dict:
    out = {k: poll.get(k) for k in ("id", "question", "options", "multiple", "anonymous", "results", "duration_s",
                                    "status", "created_at", "opened_at", "closes_at", "closed_at")}
    mine = poll["votes"].get(viewer.identity) if viewer is not None else None
    out["my_choices"] = list(mine) if mine is not None else None
    if may_see_results(poll, viewer):
        out["tally"] = tally(poll)
        if is_moderator(viewer) and not poll["anonymous"]:
            out["voters"] = {identity: list(choices) for identity, choices in sorted(poll["votes"].items())}
    else:
        out["tally"] = None
    return out


class Polls(Feature):
    def __init__(self, room):
        super().__init__(room)
        self.polls: dict[int, dict] = {}

    async def load(self) -> None:
        self.polls = {}
        for row in await self.repo.list_polls(self.session_id):
            row["votes"] = {k: list(v) for k, v in (row.get("votes") or {}).items()}
            self.polls[row["id"]] = row
            if row["status"] == "open" and row.get("closes_at"):
                self._arm(row)

    def state(self, member: Any) -> dict:
        if not self.room.features.get("polls"):
            return {"polls": []}
        # open and draft polls, plus the latest closed one so a reconnecting student still sees its result
        closed = [p for p in self.polls.values() if p["status"] == "closed"]
        latest = max(closed, key=lambda p: p.get("closed_at") or 0, default=None)
        shown = [p for p in self.polls.values() if p["status"] != "closed" or p is latest]
        return {"polls": [poll_out(p, member) for p in sorted(shown, key=lambda p: p["id"])
                          if may_see_poll(p, member)]}

    def _get(self, poll_id: int) -> dict:
        poll = self.polls.get(poll_id)
        if poll is None:
            raise not_found("poll", poll_id)
        return poll

    def _publish(self, ctx: Context, poll: dict, kind: str) -> None:
        ctx.fanout(lambda m: {"type": kind, "data": poll_out(poll, m)}, to=lambda m: may_see_poll(poll, m))

    def _arm(self, poll: dict) -> None:
        delay = poll["closes_at"] - self.room.clock()
        self.room.schedule(("poll", poll["id"]), delay, lambda ctx, pid=poll["id"]: self._auto_close(ctx, pid))

    async def _auto_close(self, ctx: Context, poll_id: int) -> None:
        poll = self.polls.get(poll_id)
        if poll is not None and poll["status"] == "open":
            await self._close(ctx, poll, by=None)

    @handles("poll.create", feature="polls", bucket="moderation", moderator_only=True)
    async def create(self, ctx: Context) -> dict:
        d = ctx.data
        poll = await self.repo.add_poll(
            self.session_id, created_by=ctx.identity, question=d["question"], options=list(d["options"]),
            multiple=bool(d.get("multiple", False)), anonymous=bool(d.get("anonymous", False)),
            results=d.get("results", "live"), duration_s=d.get("duration_s"), at=ctx.now)
        poll["votes"] = {}
        self.polls[poll["id"]] = poll
        await self.room.record(ctx, "poll.created", {"poll_id": poll["id"]})
        if d.get("start"):
            await self._open(ctx, poll)
        else:
            self._publish(ctx, poll, "poll.created")
        return {"poll_id": poll["id"], "status": poll["status"]}

    async def _open(self, ctx: Context, poll: dict) -> None:
        closes_at = ctx.now + poll["duration_s"] if poll.get("duration_s") else None
        await self.repo.update_poll(poll["id"], status="open", opened_at=ctx.now, closes_at=closes_at)
        poll.update(status="open", opened_at=ctx.now, closes_at=closes_at)
        await self.room.record(ctx, "poll.opened", {"poll_id": poll["id"], "question": poll["question"]})
        if closes_at is not None:
            self._arm(poll)
        self._publish(ctx, poll, "poll.opened")

    @handles("poll.start", feature="polls", bucket="moderation", moderator_only=True)
    async def start(self, ctx: Context) -> dict:
        poll = self._get(ctx.data["poll_id"])
        if poll["status"] != "draft":
            raise ProtocolError("conflict", f"poll {poll['id']} is already {poll['status']}")
        await self._open(ctx, poll)
        return {"poll_id": poll["id"], "status": "open", "closes_at": poll["closes_at"]}

    async def _close(self, ctx: Context, poll: dict, by: str | None) -> None:
        self.room.cancel_timer(("poll", poll["id"]))
        self.room.cancel_timer(("poll_results", poll["id"]))  # poll.closed carries the final tally
        final = tally(poll)
        await self.repo.update_poll(poll["id"], status="closed", closed_at=ctx.now, final_results=final)
        poll.update(status="closed", closed_at=ctx.now, final_results=final)
        await self.room.record(ctx, "poll.closed", {"poll_id": poll["id"], "results": final, "by": by},
                               identity=by)
        self._publish(ctx, poll, "poll.closed")

    @handles("poll.close", feature="polls", bucket="moderation", moderator_only=True)
    async def close_poll(self, ctx: Context) -> dict:
        poll = self._get(ctx.data["poll_id"])
        if poll["status"] != "open":
            raise ProtocolError("conflict", f"poll {poll['id']} is {poll['status']}, not open")
        await self._close(ctx, poll, by=ctx.identity)
        return {"poll_id": poll["id"], "status": "closed", "results": poll["final_results"]}

    @handles("poll.vote", feature="polls", bucket="vote")
    async def vote(self, ctx: Context) -> dict:
        poll = self._get(ctx.data["poll_id"])
        if not may_see_poll(poll, ctx.member):
            raise not_found("poll", poll["id"])
        if poll["status"] != "open":
            raise ProtocolError("conflict", f"poll {poll['id']} is {poll['status']}; votes are only taken while open")
        if poll.get("closes_at") and ctx.now >= poll["closes_at"]:
            raise ProtocolError("conflict", f"poll {poll['id']} has run out of time")
        choices = sorted(ctx.data["choices"])
        if choices[-1] >= len(poll["options"]):
            raise ProtocolError("invalid", f"choice {choices[-1]} is out of range; poll {poll['id']} has "
                                           f"{len(poll['options'])} options (0-{len(poll['options']) - 1})")
        if len(choices) > 1 and not poll["multiple"]:
            raise ProtocolError("invalid", f"poll {poll['id']} is single choice; send exactly one choice")
        previous = poll["votes"].get(ctx.identity)
        await self.repo.set_poll_vote(poll["id"], identity=ctx.identity, name=ctx.name, choices=choices, at=ctx.now)
        poll["votes"][ctx.identity] = choices
        await self.room.record(ctx, "poll.voted", {"poll_id": poll["id"], "changed": previous is not None},
                               {"votes": 1} if previous is None else None)
        interval = self.room.options.poll_results_interval_s
        if interval > 0:
            # Coalesce: one poll.results per interval however many votes arrive (30 votes x 300 members
            # would otherwise be 9000 messages).
            self.room.schedule_once(("poll_results", poll["id"]), interval,
                                    lambda c, pid=poll["id"]: self._results_due(c, pid))
        else:
            self._publish_results(ctx, poll)
        return {"poll_id": poll["id"], "choices": choices, "changed": previous is not None}

    async def _results_due(self, ctx: Context, poll_id: str) -> None:
        poll = self.polls.get(poll_id)
        if poll is not None and poll["status"] == "open":
            self._publish_results(ctx, poll)

    def _publish_results(self, ctx: Context, poll: dict) -> None:
        public = {"poll_id": poll["id"], "tally": tally(poll)}
        named = dict(public, voters={i: list(c) for i, c in sorted(poll["votes"].items())})
        ctx.fanout(lambda m: {"type": "poll.results",
                              "data": named if is_moderator(m) and not poll["anonymous"] else public},
                   to=lambda m: may_see_results(poll, m))
