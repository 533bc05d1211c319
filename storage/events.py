"""session_events: an append-only activity timeline per session (the recording review page reads it, the
moderation and whiteboard rules look things up in it). `EventRepo.append` is its one writer and `EVENTS` its
one vocabulary, `<object>.<what happened>` as the webhooks name theirs (docs/storage.md, "Session events")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

from storage import schema as t

if TYPE_CHECKING:
    from storage.store import Store


# Every type a session_events row may have, with its payload (docs/storage.md, "Session events").
EVENTS = {
    # the session's lifecycle and presence (classroom/sessions.py)
    "session.started": None, "session.ended": None, "session.cancelled": None,
    "participant.joined": "name, role, resumed", "participant.left": None, "participant.banned": "identity, reason",
    "moderator.removed": "identity",
    # the interactive layer (classroom/interactive/)
    "chat.sent": "message_id", "chat.deleted": "message_id, own",
    "chat.pinned": "message_id, pinned", "chat.unpinned": "message_id, pinned",
    "question.asked": "question_id, anonymous", "question.voted": "question_id, on",
    "question.unvoted": "question_id, on", "question.answered": "question_id, live",
    "question.dismissed": "question_id", "question.featured": "question_id, featured",
    "question.unfeatured": "question_id, featured",
    "poll.created": "poll_id", "poll.opened": "poll_id, question", "poll.closed": "poll_id, results, by",
    "poll.voted": "poll_id, changed",
    "whiteboard.cleared": "clear_id", "whiteboard.permitted": "identities (everyone who may draw now)",
    "quiz.round_started": "round_id, students, ...", "quiz.answered": "round_id, question_id, ...",
    "quiz.round_ended": "round_id, by, ...",
    "hand.raised": "raised", "hand.lowered": "raised, identity", "reaction.sent": "emoji",
}


@dataclass
class SessionEvent:
    id: int
    session_id: str
    ts: float
    type: str
    actor: str | None
    payload: Any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def append(self, session_id: str, type: str, *, ts: float, actor: str | None = None,
                     payload: Any = None) -> int:
        """The one writer of session_events; ValueError for a type outside `EVENTS`."""
        if type not in EVENTS:
            raise ValueError(f"unknown session event {type!r}; known: {', '.join(EVENTS)}")
        async with self.store.transaction() as conn:
            res = await conn.execute(t.session_events.insert().values(
                session_id=session_id, ts=ts, type=type, actor=actor, payload=payload))
        return res.inserted_primary_key[0]

    async def list(self, session_id: str, *, since: float | None = None, until: float | None = None,
                   types: Iterable[str] | None = None, after_id: int | None = None,
                   limit: int = 1000) -> list[SessionEvent]:
        c = t.session_events.c
        q = t.session_events.select().where(c.session_id == session_id)
        if since is not None:
            q = q.where(c.ts >= since)
        if until is not None:
            q = q.where(c.ts <= until)
        if types is not None:
            q = q.where(c.type.in_(list(types)))
        if after_id is not None:
            q = q.where(c.id > after_id)
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(c.ts, c.id).limit(limit))
            return [SessionEvent(**r._mapping) for r in rows]
