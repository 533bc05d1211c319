"""Recordings and recording views (watch progress). See docs/recording.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

import sqlalchemy as sa

from storage import schema as t
from storage.store import lock_key

if TYPE_CHECKING:
    from storage.store import Store

# A view counts as completed once this share of the recording has been watched.
COMPLETION_RATIO = 0.9


@dataclass
class RecordingRow:
    id: str
    session_id: str | None
    room: str
    status: str
    started_at: float
    ended_at: float | None
    duration_s: float | None
    size_bytes: int | None
    directory: str | None
    manifest_path: str | None
    files: list | None
    error: str | None
    composite_path: str | None
    instructor: str | None = None   # from the session, when there is one
    session_title: str | None = None

    @property
    def title(self) -> str:
        """What pages call the recording: its session's title, else the room's name."""
        return self.session_title or self.room

    @property
    def instructor_name(self) -> str | None:
        """The instructor's display name, as the recording's manifest has it, else their identity."""
        for f in self.files or []:
            if f.get("participant") == self.instructor and f.get("participant_name"):
                return f["participant_name"]
        return self.instructor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordingView:
    recording_id: str
    identity: str
    last_position: float
    seconds_watched: float
    completed: bool
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select():
    r, s = t.recordings, t.sessions
    return (sa.select(r, s.c.instructor, s.c.title.label("session_title"))
            .select_from(r.outerjoin(s, s.c.id == r.c.session_id)))


class RecordingRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def create(self, *, id: str, room: str, started_at: float, directory: str,
                     manifest_path: str, session_id: str | None = None) -> RecordingRow:
        async with self.store.transaction() as conn:
            await conn.execute(t.recordings.insert().values(
                id=id, room=room, session_id=session_id, status="recording", started_at=started_at,
                directory=directory, manifest_path=manifest_path, files=[]))
        row = await self.get(id)
        assert row is not None
        return row

    async def get(self, recording_id: str) -> RecordingRow | None:
        async with self.store.read() as conn:
            row = (await conn.execute(_select().where(t.recordings.c.id == recording_id))).first()
        return None if row is None else RecordingRow(**row._mapping)

    async def list(self, *, room: str | None = None, day: tuple[float, float] | None = None,
                   instructor: str | None = None, status: str | Iterable[str] | None = None,
                   session_ids: Iterable[str] | None = None, limit: int = 200) -> list[RecordingRow]:
        """Newest first. `day` is a [start, end) range of started_at (unix seconds)."""
        c = t.recordings.c
        q = _select()
        if room is not None:
            q = q.where(c.room == room)
        if day is not None:
            q = q.where(c.started_at >= day[0], c.started_at < day[1])
        if instructor is not None:
            q = q.where(t.sessions.c.instructor == instructor)
        if status is not None:
            q = q.where(c.status.in_([status] if isinstance(status, str) else list(status)))
        if session_ids is not None:
            q = q.where(c.session_id.in_(list(session_ids)))
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(c.started_at.desc(), c.id).limit(limit))
            return [RecordingRow(**r._mapping) for r in rows]

    async def update(self, recording_id: str, **values: Any) -> RecordingRow | None:
        async with self.store.transaction() as conn:
            await conn.execute(t.recordings.update().where(t.recordings.c.id == recording_id).values(**values))
        return await self.get(recording_id)

    async def transition(self, recording_id: str, from_statuses: Iterable[str], to_status: str,
                         **values: Any) -> RecordingRow | None:
        """Compare-and-set the status; None when the row was not in one of `from_statuses`."""
        c = t.recordings.c
        async with self.store.transaction() as conn:
            res = await conn.execute(t.recordings.update()
                                     .where(c.id == recording_id, c.status.in_(list(from_statuses)))
                                     .values(status=to_status, **values))
            if res.rowcount == 0:
                return None
        return await self.get(recording_id)

    async def in_status(self, status: str) -> list[RecordingRow]:
        return await self.list(status=status, limit=100000)

    # -- what the review timeline shows (read-only; the interactive layer owns these tables) -------------

    async def timeline_texts(self, session_id: str, *, chat_ids: Iterable[int] = (),
                             question_ids: Iterable[str] = (), poll_ids: Iterable[str] = ()) -> dict[str, dict]:
        """{"chat": {id: row}, "question": {id: row}, "poll": {id: row}} for the ids the events name."""
        out: dict[str, dict] = {"chat": {}, "question": {}, "poll": {}}
        queries = []
        if chat_ids:
            c = t.chat_messages.c
            queries.append(("chat", sa.select(c.id, c.text, c.sender_name, c.deleted_at)
                            .where(c.session_id == session_id, c.id.in_(list(chat_ids)))))
        if question_ids:
            q = t.questions.c
            queries.append(("question", sa.select(q.id, q.text, q.anonymous, q.answer, q.asker_name)
                            .where(q.session_id == session_id, q.id.in_(list(question_ids)))))
        if poll_ids:
            p = t.polls.c
            queries.append(("poll", sa.select(p.id, p.question).where(p.session_id == session_id,
                                                                      p.id.in_(list(poll_ids)))))
        if queries:
            async with self.store.read() as conn:
                for kind, query in queries:
                    for row in await conn.execute(query):
                        out[kind][row.id] = dict(row._mapping)
        return out

    # -- views ------------------------------------------------------------------------------

    async def record_view(self, recording_id: str, identity: str, *, position: float,
                          watched_seconds: float, duration: float | None, now: float) -> RecordingView:
        """Store a viewer's progress. `watched_seconds` is the total the player measured (it only grows
        here); completed is set once it reaches COMPLETION_RATIO of `duration` and then stays set."""
        c = t.recording_views.c
        async with self.store.transaction() as conn:
            await lock_key(conn, f"recording_view:{recording_id}:{identity}")
            row = (await conn.execute(t.recording_views.select().where(
                c.recording_id == recording_id, c.identity == identity))).first()
            watched = max(float(watched_seconds), row.seconds_watched if row else 0.0)
            completed = bool(row and row.completed) or bool(
                duration and duration > 0 and watched >= COMPLETION_RATIO * duration - 1e-6)
            values = dict(last_position=float(position), seconds_watched=watched, completed=completed,
                          updated_at=now)
            if row is None:
                await conn.execute(t.recording_views.insert().values(
                    recording_id=recording_id, identity=identity, **values))
            else:
                await conn.execute(t.recording_views.update().where(
                    c.recording_id == recording_id, c.identity == identity).values(**values))
        return RecordingView(recording_id=recording_id, identity=identity, **values)

    async def views(self, recording_id: str) -> list[RecordingView]:
        c = t.recording_views.c
        async with self.store.read() as conn:
            rows = await conn.execute(t.recording_views.select().where(c.recording_id == recording_id)
                                      .order_by(c.identity))
            return [RecordingView(**r._mapping) for r in rows]
