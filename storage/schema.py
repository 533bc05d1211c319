"""Table definitions (SQLAlchemy Core). The migrations in storage/migrations are the source of truth for the
database; these objects must match them (tests/test_storage.py::test_migrations_match_schema_module compares
the two).

Portable types only: text ids (uuid4 hex) or integer autoincrement, float epoch seconds, JSON stored as TEXT.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class JSONText(TypeDecorator):
    """JSON kept in a TEXT column: Python values in, Python values out, on every backend."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def process_result_value(self, value: str | None, dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


def new_id() -> str:
    return uuid.uuid4().hex


Id = sa.String(32)
Ts = sa.Double
Ident = sa.String(255)  # identities come from JWT "sub"


def _autoinc() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("revoked_at", Ts, nullable=True),
)

SESSION_TYPES = ("class", "workshop", "webinar", "office_hours", "tutoring")
SESSION_STATUSES = ("scheduled", "live", "ended", "cancelled")

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("room", sa.String(128), nullable=False, unique=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("type", sa.String(20), nullable=False),
    sa.Column("instructor", Ident, nullable=False),
    sa.Column("scheduled_start", Ts, nullable=True),
    sa.Column("scheduled_end", Ts, nullable=True),
    sa.Column("capacity", sa.Integer, nullable=True),  # None: unlimited
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("features", JSONText, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("actual_start", Ts, nullable=True),
    sa.Column("actual_end", Ts, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index(None, "instructor"),
    sa.Index(None, "status"),
)

session_roles = sa.Table(
    "session_roles", metadata,
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
)

admissions = sa.Table(
    "admissions", metadata,
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    # Whether this admission takes a capacity seat (instructors and moderators do not).
    sa.Column("counted", sa.Boolean, nullable=False),
    sa.Column("admitted_at", Ts, nullable=False),
)

presence_intervals = sa.Table(
    "presence_intervals", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("identity", Ident, nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("joined_at", Ts, nullable=False),
    sa.Column("left_at", Ts, nullable=True),
    # Open connections (tabs) of this identity inside the interval; it closes when the last one leaves.
    sa.Column("connections", sa.Integer, nullable=False, server_default="1"),
    sa.Index(None, "session_id", "identity"),
)

bans = sa.Table(
    "bans", metadata,
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("by", Ident, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", Ts, nullable=False),
)

ENGAGEMENT_COUNTERS = ("chat_messages", "questions", "votes", "hand_raises", "reactions", "strokes",
                       "quiz_answers")

engagement = sa.Table(
    "engagement", metadata,
    sa.Column("session_id", Id, primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    *[sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in ENGAGEMENT_COUNTERS],
)

TUTORING_STATUSES = ("pending", "accepted", "rejected", "expired", "ended", "cancelled")

tutoring_requests = sa.Table(
    "tutoring_requests", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("student", Ident, nullable=False),
    sa.Column("student_name", sa.Text, nullable=False, server_default=""),
    sa.Column("course_ref", sa.Text, nullable=True),
    sa.Column("lesson_ref", sa.Text, nullable=True),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("instructor", Ident, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="SET NULL"), nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Column("accepted_at", Ts, nullable=True),
    sa.Column("ended_at", Ts, nullable=True),
    sa.Column("ended_by", Ident, nullable=True),
    sa.Column("duration_s", Ts, nullable=True),
    sa.Column("instructor_name", sa.Text, nullable=True),
    sa.Index(None, "student"),
    sa.Index(None, "status"),
    sa.Index(None, "instructor"),
)

FEEDBACK_MAX_COMMENT = 2000

# One rating (1-5) and optional comment per participant and session; sending again replaces it.
session_feedback = sa.Table(
    "session_feedback", metadata,
    sa.Column("session_id", Id, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("rating", sa.Integer, nullable=False),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.CheckConstraint("rating >= 1 AND rating <= 5", name="rating_range"),
)

webhooks = sa.Table(
    "webhooks", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("events", JSONText, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("webhook_id", Id, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # None with delivered_at None: given up after the last attempt.
    sa.Column("next_attempt_at", Ts, nullable=True),
    sa.Column("delivered_at", Ts, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index(None, "next_attempt_at"),
)

chat_messages = sa.Table(
    "chat_messages", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("sender", Ident, nullable=False),
    sa.Column("sender_name", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.String(16), nullable=False, server_default="user"),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("reply_to", sa.Integer, nullable=True),
    sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("edited_at", Ts, nullable=True),
    sa.Column("deleted_at", Ts, nullable=True),
    sa.Column("deleted_by", Ident, nullable=True),
    sa.Index(None, "session_id", "id"),
)

questions = sa.Table(
    "questions", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("asker", Ident, nullable=False),
    sa.Column("asker_name", sa.Text, nullable=False, server_default=""),
    sa.Column("anonymous", sa.Boolean, nullable=False, server_default=sa.false()),
    # asked anonymously while the session hid askers from staff too (feature qa_anonymous_to_staff)
    sa.Column("hidden_from_staff", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),
    sa.Column("answer", sa.Text, nullable=True),
    sa.Column("answered_live", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("featured", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("answered_at", Ts, nullable=True),
    sa.Index(None, "session_id"),
)

question_votes = sa.Table(
    "question_votes", metadata,
    sa.Column("question_id", Id, sa.ForeignKey("questions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
)

polls = sa.Table(
    "polls", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("creator", Ident, nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("options", JSONText, nullable=False),
    sa.Column("multiple", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("anonymous", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("show_results", sa.String(16), nullable=False, server_default="live"),
    sa.Column("duration_s", Ts, nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("opened_at", Ts, nullable=True),
    sa.Column("closed_at", Ts, nullable=True),
    sa.Column("results", JSONText, nullable=True),
    sa.Index(None, "session_id"),
)

poll_votes = sa.Table(
    "poll_votes", metadata,
    sa.Column("poll_id", Id, sa.ForeignKey("polls.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("choices", JSONText, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

whiteboard_strokes = sa.Table(
    "whiteboard_strokes", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("author", Ident, nullable=False),
    sa.Column("data", JSONText, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("undone", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(None, "session_id", "id"),
)

whiteboard_clears = sa.Table(
    "whiteboard_clears", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("cleared_at", Ts, nullable=False),
    sa.Column("by", Ident, nullable=False),
    sa.Index(None, "session_id"),
)

quiz_questions = sa.Table(
    "quiz_questions", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("bank", sa.String(128), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("choices", JSONText, nullable=False),
    sa.Column("answer", sa.Integer, nullable=False),
    sa.Column("explanation", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index(None, "bank"),
)

quiz_rounds = sa.Table(
    "quiz_rounds", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("started_by", Ident, nullable=False),
    sa.Column("started_at", Ts, nullable=False),
    sa.Column("duration_s", Ts, nullable=True),
    sa.Column("closed_at", Ts, nullable=True),
    sa.Index(None, "session_id"),
)

quiz_assignments = sa.Table(
    "quiz_assignments", metadata,
    sa.Column("round_id", Id, sa.ForeignKey("quiz_rounds.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("question_id", Id, sa.ForeignKey("quiz_questions.id", ondelete="CASCADE"), nullable=False),
    sa.Column("answer", sa.Integer, nullable=True),
    sa.Column("correct", sa.Boolean, nullable=True),
    sa.Column("answered_at", Ts, nullable=True),
)

hand_raises = sa.Table(
    "hand_raises", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("identity", Ident, nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("raised_at", Ts, nullable=False),
    sa.Column("lowered_at", Ts, nullable=True),
    sa.Index(None, "session_id"),
)

RECORDING_STATUSES = ("recording", "processing", "ready", "failed")

recordings = sa.Table(
    "recordings", metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("session_id", Id, nullable=True),
    sa.Column("room", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", Ts, nullable=False),
    sa.Column("ended_at", Ts, nullable=True),
    sa.Column("duration_s", Ts, nullable=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=True),
    sa.Column("directory", sa.Text, nullable=True),
    sa.Column("manifest_path", sa.Text, nullable=True),
    sa.Column("files", JSONText, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("composite_path", sa.Text, nullable=True),
    sa.Index(None, "session_id"),
    sa.Index(None, "room"),
)

recording_views = sa.Table(
    "recording_views", metadata,
    sa.Column("recording_id", Id, sa.ForeignKey("recordings.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("identity", Ident, primary_key=True),
    sa.Column("last_position", Ts, nullable=False, server_default="0"),
    sa.Column("seconds_watched", Ts, nullable=False, server_default="0"),
    sa.Column("completed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", Ts, nullable=False),
)

session_events = sa.Table(
    "session_events", metadata,
    _autoinc(),
    sa.Column("session_id", Id, nullable=False),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("actor", Ident, nullable=True),
    sa.Column("payload", JSONText, nullable=True),
    sa.Index(None, "session_id", "ts"),
)
