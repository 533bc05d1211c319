"""Feedback after a session: each participant rates it 1-5 with an optional comment; staff read the
ratings and comments (REST: POST/GET /api/sessions/{id}/feedback, GET /api/feedback; docs/api.md)."""

from __future__ import annotations

from typing import Any

from classroom.errors import Conflict, PermissionDenied
from classroom.sessions import Actor
from storage.feedback import summarize
from storage.schema import FEEDBACK_MAX_COMMENT

SCHEMA = {
    "type": "object",
    "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5,
                              "description": "1 (poor) to 5 (excellent)"},
                   "comment": {"type": "string", "maxLength": FEEDBACK_MAX_COMMENT}},
    "required": ["rating"], "additionalProperties": False,
}


async def submit(store, session, actor: Actor, body: dict, *, now: float):
    """Store `actor`'s feedback on `session` (replacing an earlier one). Only people who took part may
    rate it, not its instructor, and only once it has started."""
    if session.status not in ("live", "ended"):
        raise Conflict(f"session {session.title!r} is {session.status}; feedback opens once it has started")
    if actor.identity == session.instructor:
        raise PermissionDenied("the session's instructor cannot rate their own session")
    took_part = (await store.sessions.is_admitted(session.id, actor.identity)
                 or await store.sessions.intervals(session.id, actor.identity))
    if not took_part:
        raise PermissionDenied(f"{actor.identity!r} did not take part in session {session.title!r}")
    return await store.feedback.put(session.id, actor.identity, name=actor.name or actor.identity,
                                    rating=body["rating"], comment=body.get("comment", "").strip(), now=now)


async def report(store, sessions: list) -> list[dict[str, Any]]:
    """Per session, newest feedback first: {session_id, room, title, instructor, status, summary, items}."""
    items = await store.feedback.list(s.id for s in sessions)
    out = []
    for s in sessions:
        mine = [f for f in items if f.session_id == s.id]
        out.append({"session_id": s.id, "room": s.room, "title": s.title, "instructor": s.instructor,
                    "status": s.status, "summary": summarize(mine), "items": [f.to_dict() for f in mine]})
    return out
