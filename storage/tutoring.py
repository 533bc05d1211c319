"""Tutoring requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

import sqlalchemy as sa

from storage import schema as t

if TYPE_CHECKING:
    from storage.store import Store


@dataclass
class TutoringRecord:
    id: str
    student: str
    student_name: str
    course_ref: str | None
    lesson_ref: str | None
    note: str
    status: str
    instructor: str | None
    reason: str | None
    session_id: str | None
    created_at: float
    expires_at: float
    accepted_at: float | None
    ended_at: float | None
    ended_by: str | None
    duration_s: float | None
    instructor_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rec(row):
    return None if row is None else TutoringRecord(**row._mapping)


class TutoringRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def create(self, **values: Any) -> TutoringRecord:
        values.setdefault("id", t.new_id())
        async with self.store.transaction() as conn:
            await conn.execute(t.tutoring_requests.insert().values(**values))
        return await self.get(values["id"])

    async def get(self, request_id: str) -> TutoringRecord | None:
        async with self.store.read() as conn:
            return _rec((await conn.execute(t.tutoring_requests.select().where(
                t.tutoring_requests.c.id == request_id))).first())

    async def transition(self, request_id: str, from_statuses: Iterable[str], to_status: str,
                         **values: Any) -> TutoringRecord | None:
        """Compare-and-set on status; None when the request was not in from_statuses."""
        c = t.tutoring_requests.c
        async with self.store.transaction() as conn:
            res = await conn.execute(t.tutoring_requests.update().where(
                c.id == request_id, c.status.in_(list(from_statuses))).values(status=to_status, **values))
            if res.rowcount != 1:
                return None
            return _rec((await conn.execute(t.tutoring_requests.select().where(c.id == request_id))).first())

    async def list(self, *, student: str | None = None, instructor: str | None = None,
                   status: str | Iterable[str] | None = None, limit: int = 200) -> list[TutoringRecord]:
        c = t.tutoring_requests.c
        q = t.tutoring_requests.select()
        if student is not None:
            q = q.where(c.student == student)
        if instructor is not None:
            q = q.where(c.instructor == instructor)
        if status is not None:
            q = q.where(c.status.in_([status] if isinstance(status, str) else list(status)))
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(c.created_at.desc(), c.id).limit(limit))
            return [_rec(r) for r in rows]

    async def due_for_expiry(self, now: float) -> list[TutoringRecord]:
        c = t.tutoring_requests.c
        async with self.store.read() as conn:
            rows = await conn.execute(t.tutoring_requests.select().where(
                c.status == "pending", c.expires_at <= now).order_by(c.expires_at))
            return [_rec(r) for r in rows]

    async def count_by_status(self, *, student: str | None = None,
                              instructor: str | None = None) -> dict[str, int]:
        c = t.tutoring_requests.c
        q = sa.select(c.status, sa.func.count()).group_by(c.status)
        if student is not None:
            q = q.where(c.student == student)
        if instructor is not None:
            q = q.where(c.instructor == instructor)
        async with self.store.read() as conn:
            return {status: n for status, n in await conn.execute(q)}
