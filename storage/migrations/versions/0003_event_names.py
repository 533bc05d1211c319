"""One vocabulary for session_events: the interactive layer's names (`chat`, `poll_open`, `hand`, ...) become
`<object>.<what happened>` like the session's own (`session.started`, `participant.joined`); an on/off event
becomes two (`hand` raised/lowered -> `hand.raised` / `hand.lowered`). Payloads are unchanged. Rows written
before are renamed, so the review timeline and the whiteboard permissions read them as before.

Revision ID: 0003_event_names
Revises: 0002_feedback
Create Date: 2026-12-01
"""
from __future__ import annotations

import json

from alembic import op
import sqlalchemy as sa


revision = '0003_event_names'
down_revision = '0002_feedback'
branch_labels = None
depends_on = None

RENAMED = {
    "chat": "chat.sent", "chat_delete": "chat.deleted", "question": "question.asked",
    "answer": "question.answered", "question_dismiss": "question.dismissed", "poll_create": "poll.created",
    "poll_open": "poll.opened", "poll_close": "poll.closed", "vote": "poll.voted",
    "whiteboard_clear": "whiteboard.cleared", "whiteboard_permit": "whiteboard.permitted",
    "quiz_round": "quiz.round_started", "quiz_answer": "quiz.answered", "quiz_round_end": "quiz.round_ended",
    "reaction": "reaction.sent",
}
# old type -> (payload key, name when true, name when false)
SPLIT = {
    "chat_pin": ("pinned", "chat.pinned", "chat.unpinned"),
    "question_vote": ("on", "question.voted", "question.unvoted"),
    "question_feature": ("featured", "question.featured", "question.unfeatured"),
    "hand": ("raised", "hand.raised", "hand.lowered"),
}
# The payloads' defaults when the key is missing, as the writers meant them.
DEFAULT = {"chat_pin": True, "question_vote": True, "question_feature": True, "hand": True}

events = sa.table('session_events', sa.column('id', sa.Integer), sa.column('type', sa.String),
                  sa.column('payload', sa.Text))


def _rename(mapping: dict[str, str]) -> None:
    for old, new in mapping.items():
        op.execute(events.update().where(events.c.type == old).values(type=new))


def upgrade() -> None:
    _rename(RENAMED)
    conn = op.get_bind()
    for old, (key, on, off) in SPLIT.items():
        rows = conn.execute(sa.select(events.c.id, events.c.payload).where(events.c.type == old)).all()
        ids = {on: [], off: []}
        for row in rows:
            payload = json.loads(row.payload) if row.payload else {}
            ids[on if payload.get(key, DEFAULT[old]) else off].append(row.id)
        for new, chosen in ids.items():
            for start in range(0, len(chosen), 500):
                conn.execute(events.update().where(events.c.id.in_(chosen[start:start + 500])).values(type=new))


def downgrade() -> None:
    _rename({new: old for old, new in RENAMED.items()})
    for old, (_key, on, off) in SPLIT.items():
        _rename({on: old, off: old})
