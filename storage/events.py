"""session_events: an append-only activity timeline per session (used by the recording review page)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

from storage import schema as t

if TYPE_CHECKING:
    from storage.store import Store


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
