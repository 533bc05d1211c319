"""Session feedback: one rating (1-5) and optional comment per participant and session. See docs/api.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

from storage import schema as t
from storage.store import lock_key

if TYPE_CHECKING:
    from storage.store import Store


@dataclass
class Feedback:
    session_id: str
    identity: str
    name: str
    rating: int
    comment: str
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(items: list[Feedback]) -> dict[str, Any]:
    """{count, average (None without ratings), ratings: {"1": n, ..., "5": n}}."""
    counts = {str(r): 0 for r in range(1, 6)}
    for f in items:
        counts[str(f.rating)] += 1
    average = round(sum(f.rating for f in items) / len(items), 2) if items else None
    return {"count": len(items), "average": average, "ratings": counts}


class FeedbackRepo:
    def __init__(self, store: "Store"):
        self.store = store

    async def put(self, session_id: str, identity: str, *, name: str, rating: int, comment: str,
                  now: float) -> Feedback:
        """Store `identity`'s feedback on the session, replacing what they sent before."""
        c = t.session_feedback.c
        where = (c.session_id == session_id, c.identity == identity)
        async with self.store.transaction() as conn:
            await lock_key(conn, f"feedback:{session_id}:{identity}")
            res = await conn.execute(t.session_feedback.update().where(*where).values(
                name=name, rating=rating, comment=comment, updated_at=now))
            if res.rowcount == 0:
                await conn.execute(t.session_feedback.insert().values(
                    session_id=session_id, identity=identity, name=name, rating=rating, comment=comment,
                    created_at=now, updated_at=now))
            row = (await conn.execute(t.session_feedback.select().where(*where))).first()
        return Feedback(**row._mapping)

    async def list(self, session_ids: Iterable[str]) -> list[Feedback]:
        """Newest first."""
        c = t.session_feedback.c
        ids = list(session_ids)
        if not ids:
            return []
        async with self.store.read() as conn:
            rows = await conn.execute(t.session_feedback.select().where(c.session_id.in_(ids))
                                      .order_by(c.updated_at.desc(), c.identity))
            return [Feedback(**r._mapping) for r in rows]

    async def get(self, session_id: str, identity: str) -> Feedback | None:
        c = t.session_feedback.c
        async with self.store.read() as conn:
            row = (await conn.execute(t.session_feedback.select().where(
                c.session_id == session_id, c.identity == identity))).first()
        return None if row is None else Feedback(**row._mapping)


