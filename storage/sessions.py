"""Sessions, moderator roles, admissions (capacity), bans, presence intervals, engagement counters."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable

import sqlalchemy as sa

from storage import schema as t
from storage.store import lock_key

if TYPE_CHECKING:
    from storage.store import Store


@dataclass
class SessionRecord:
    id: str
    room: str
    title: str
    description: str
    type: str
    instructor: str
    scheduled_start: float | None
    scheduled_end: float | None
    capacity: int | None
    password_hash: str | None
    features: dict[str, bool]
    status: str
    actual_start: float | None
    actual_end: float | None
    created_at: float

    def public(self) -> dict[str, Any]:
        """JSON-able view without the password hash."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "password_hash"}
        data["has_password"] = self.password_hash is not None
        return data


@dataclass
class PresenceInterval:
    id: int
    session_id: str
    identity: str
    name: str
    role: str
    joined_at: float
    left_at: float | None
    connections: int


@dataclass
class AdmitOutcome:
    result: str            # "admitted" | "already" | "full" | "banned" | "not_found"
    status: str | None     # the session's status when decided
    seats_taken: int       # counted admissions after the decision


def _rec(cls, row):
    return None if row is None else cls(**row._mapping)


class SessionRepo:
    def __init__(self, store: "Store"):
        self.store = store

    # sessions -------------------------------------------------------------------------------------------
    async def create(self, **values: Any) -> SessionRecord:
        values.setdefault("id", t.new_id())
        async with self.store.transaction() as conn:
            await conn.execute(t.sessions.insert().values(**values))
            row = (await conn.execute(t.sessions.select().where(t.sessions.c.id == values["id"]))).first()
        return _rec(SessionRecord, row)

    async def get(self, session_id: str) -> SessionRecord | None:
        async with self.store.read() as conn:
            row = (await conn.execute(t.sessions.select().where(t.sessions.c.id == session_id))).first()
        return _rec(SessionRecord, row)

    async def get_by_room(self, room: str) -> SessionRecord | None:
        async with self.store.read() as conn:
            row = (await conn.execute(t.sessions.select().where(t.sessions.c.room == room))).first()
        return _rec(SessionRecord, row)

    async def room_exists(self, room: str) -> bool:
        return await self.get_by_room(room) is not None

    async def update(self, session_id: str, **values: Any) -> SessionRecord | None:
        async with self.store.transaction() as conn:
            if values:
                await conn.execute(t.sessions.update().where(t.sessions.c.id == session_id).values(**values))
            row = (await conn.execute(t.sessions.select().where(t.sessions.c.id == session_id))).first()
        return _rec(SessionRecord, row)

    async def transition(self, session_id: str, from_statuses: Iterable[str], to_status: str,
                         **values: Any) -> SessionRecord | None:
        """Set status only if it is currently one of from_statuses; None when it was not (compare-and-set)."""
        async with self.store.transaction() as conn:
            res = await conn.execute(
                t.sessions.update()
                .where(t.sessions.c.id == session_id, t.sessions.c.status.in_(list(from_statuses)))
                .values(status=to_status, **values))
            if res.rowcount != 1:
                return None
            row = (await conn.execute(t.sessions.select().where(t.sessions.c.id == session_id))).first()
        return _rec(SessionRecord, row)

    async def list(self, *, status: str | Iterable[str] | None = None, instructor: str | None = None,
                   type: str | None = None, limit: int = 200, offset: int = 0) -> list[SessionRecord]:
        q = t.sessions.select()
        if status is not None:
            q = q.where(t.sessions.c.status.in_([status] if isinstance(status, str) else list(status)))
        if instructor is not None:
            q = q.where(t.sessions.c.instructor == instructor)
        if type is not None:
            q = q.where(t.sessions.c.type == type)
        q = q.order_by(sa.func.coalesce(t.sessions.c.scheduled_start, t.sessions.c.created_at),
                       t.sessions.c.id).limit(limit).offset(offset)
        async with self.store.read() as conn:
            return [_rec(SessionRecord, r) for r in await conn.execute(q)]

    async def delete(self, session_id: str) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.sessions.delete().where(t.sessions.c.id == session_id))
        return res.rowcount == 1

    # roles ----------------------------------------------------------------------------------------------
    async def set_role(self, session_id: str, identity: str, role: str, *, now: float) -> None:
        async with self.store.transaction() as conn:
            await conn.execute(t.session_roles.delete().where(
                t.session_roles.c.session_id == session_id, t.session_roles.c.identity == identity))
            await conn.execute(t.session_roles.insert().values(
                session_id=session_id, identity=identity, role=role, created_at=now))

    async def remove_role(self, session_id: str, identity: str) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.session_roles.delete().where(
                t.session_roles.c.session_id == session_id, t.session_roles.c.identity == identity))
        return res.rowcount == 1

    async def role_of(self, session_id: str, identity: str) -> str | None:
        async with self.store.read() as conn:
            return (await conn.execute(sa.select(t.session_roles.c.role).where(
                t.session_roles.c.session_id == session_id, t.session_roles.c.identity == identity))).scalar()

    async def roles(self, session_id: str) -> dict[str, str]:
        async with self.store.read() as conn:
            rows = await conn.execute(sa.select(t.session_roles.c.identity, t.session_roles.c.role).where(
                t.session_roles.c.session_id == session_id).order_by(t.session_roles.c.identity))
            return {r.identity: r.role for r in rows}

    # admissions -----------------------------------------------------------------------------------------
    async def admit(self, session_id: str, identity: str, role: str, *, counted: bool,
                    now: float) -> AdmitOutcome:
        """Race-free capacity check: the session row is locked (FOR UPDATE on PostgreSQL; SQLite writes are
        serialized) while counting seats and inserting, so concurrent admits can never overfill."""
        async with self.store.transaction() as conn:
            sess = (await conn.execute(
                sa.select(t.sessions.c.status, t.sessions.c.capacity)
                .where(t.sessions.c.id == session_id).with_for_update())).first()
            if sess is None:
                return AdmitOutcome("not_found", None, 0)

            async def seats() -> int:
                return (await conn.execute(sa.select(sa.func.count()).select_from(t.admissions).where(
                    t.admissions.c.session_id == session_id, t.admissions.c.counted.is_(True)))).scalar_one()

            banned = (await conn.execute(sa.select(t.bans.c.identity).where(
                t.bans.c.session_id == session_id, t.bans.c.identity == identity))).first()
            if banned is not None:
                return AdmitOutcome("banned", sess.status, await seats())
            existing = (await conn.execute(sa.select(t.admissions.c.counted).where(
                t.admissions.c.session_id == session_id, t.admissions.c.identity == identity))).first()
            if existing is not None:
                return AdmitOutcome("already", sess.status, await seats())
            taken = await seats()
            if counted and sess.capacity is not None and taken >= sess.capacity:
                return AdmitOutcome("full", sess.status, taken)
            await conn.execute(t.admissions.insert().values(
                session_id=session_id, identity=identity, role=role, counted=counted, admitted_at=now))
            return AdmitOutcome("admitted", sess.status, taken + (1 if counted else 0))

    async def release(self, session_id: str, identity: str) -> bool:
        """Give the seat back (e.g. a banned or removed participant)."""
        async with self.store.transaction() as conn:
            res = await conn.execute(t.admissions.delete().where(
                t.admissions.c.session_id == session_id, t.admissions.c.identity == identity))
        return res.rowcount == 1

    async def is_admitted(self, session_id: str, identity: str) -> bool:
        async with self.store.read() as conn:
            return (await conn.execute(sa.select(t.admissions.c.identity).where(
                t.admissions.c.session_id == session_id, t.admissions.c.identity == identity))).first() is not None

    async def seats_taken(self, session_id: str) -> int:
        async with self.store.read() as conn:
            return (await conn.execute(sa.select(sa.func.count()).select_from(t.admissions).where(
                t.admissions.c.session_id == session_id, t.admissions.c.counted.is_(True)))).scalar_one()

    async def admissions(self, session_id: str) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = await conn.execute(t.admissions.select().where(
                t.admissions.c.session_id == session_id).order_by(t.admissions.c.admitted_at))
            return [dict(r._mapping) for r in rows]

    # bans -----------------------------------------------------------------------------------------------
    async def ban(self, session_id: str, identity: str, *, by: str, reason: str, now: float) -> None:
        async with self.store.transaction() as conn:
            await conn.execute(t.bans.delete().where(
                t.bans.c.session_id == session_id, t.bans.c.identity == identity))
            await conn.execute(t.bans.insert().values(
                session_id=session_id, identity=identity, by=by, reason=reason, created_at=now))
            await conn.execute(t.admissions.delete().where(
                t.admissions.c.session_id == session_id, t.admissions.c.identity == identity))

    async def unban(self, session_id: str, identity: str) -> bool:
        async with self.store.transaction() as conn:
            res = await conn.execute(t.bans.delete().where(
                t.bans.c.session_id == session_id, t.bans.c.identity == identity))
        return res.rowcount == 1

    async def is_banned(self, session_id: str, identity: str) -> bool:
        async with self.store.read() as conn:
            return (await conn.execute(sa.select(t.bans.c.identity).where(
                t.bans.c.session_id == session_id, t.bans.c.identity == identity))).first() is not None

    async def bans(self, session_id: str) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = await conn.execute(t.bans.select().where(t.bans.c.session_id == session_id)
                                      .order_by(t.bans.c.created_at))
            return [dict(r._mapping) for r in rows]

    # presence -------------------------------------------------------------------------------------------
    async def _latest_interval(self, conn, session_id: str, identity: str):
        return (await conn.execute(
            t.presence_intervals.select()
            .where(t.presence_intervals.c.session_id == session_id, t.presence_intervals.c.identity == identity)
            .order_by(t.presence_intervals.c.joined_at.desc(), t.presence_intervals.c.id.desc())
            .limit(1))).first()

    async def presence_join(self, session_id: str, identity: str, *, name: str, role: str, now: float,
                            grace_s: float) -> tuple[PresenceInterval, str]:
        """Record a connection. Returns (interval, how): how is "new", "resumed" (reconnect within grace_s
        of the last leave continues that interval) or "extra" (another tab while already present)."""
        async with self.store.transaction() as conn:
            await lock_key(conn, f"presence:{session_id}:{identity}")
            last = await self._latest_interval(conn, session_id, identity)
            c = t.presence_intervals.c
            if last is not None and last.left_at is None:
                how, values = "extra", {"connections": last.connections + 1}
            elif last is not None and now - last.left_at <= grace_s:
                how, values = "resumed", {"left_at": None, "connections": 1}
            else:
                how, values = "new", None
            if values is None:
                res = await conn.execute(t.presence_intervals.insert().values(
                    session_id=session_id, identity=identity, name=name, role=role, joined_at=now,
                    left_at=None, connections=1))
                interval_id = res.inserted_primary_key[0]
            else:
                interval_id = last.id
                if name:
                    values["name"] = name
                await conn.execute(t.presence_intervals.update().where(c.id == interval_id).values(**values))
            row = (await conn.execute(t.presence_intervals.select().where(c.id == interval_id))).first()
        return _rec(PresenceInterval, row), how

    async def presence_leave(self, session_id: str, identity: str, *, now: float) -> PresenceInterval | None:
        """Drop one connection; the interval closes at `now` when it was the last. None if not present."""
        async with self.store.transaction() as conn:
            await lock_key(conn, f"presence:{session_id}:{identity}")
            last = await self._latest_interval(conn, session_id, identity)
            if last is None or last.left_at is not None:
                return None
            c = t.presence_intervals.c
            if last.connections > 1:
                values = {"connections": last.connections - 1}
            else:
                values = {"connections": 0, "left_at": max(now, last.joined_at)}
            await conn.execute(t.presence_intervals.update().where(c.id == last.id).values(**values))
            row = (await conn.execute(t.presence_intervals.select().where(c.id == last.id))).first()
        return _rec(PresenceInterval, row)

    async def close_open_intervals(self, *, now: float, session_id: str | None = None) -> int:
        """Close intervals still open (session end, or startup after a crash)."""
        c = t.presence_intervals.c
        q = t.presence_intervals.update().where(c.left_at.is_(None))
        if session_id is not None:
            q = q.where(c.session_id == session_id)
        async with self.store.transaction() as conn:
            res = await conn.execute(q.values(left_at=sa.func.max(c.joined_at, now)
                                              if conn.dialect.name == "sqlite"
                                              else sa.func.greatest(c.joined_at, now), connections=0))
        return res.rowcount

    async def intervals(self, session_id: str, identity: str | None = None) -> list[PresenceInterval]:
        c = t.presence_intervals.c
        q = t.presence_intervals.select().where(c.session_id == session_id)
        if identity is not None:
            q = q.where(c.identity == identity)
        async with self.store.read() as conn:
            rows = await conn.execute(q.order_by(c.identity, c.joined_at, c.id))
            return [_rec(PresenceInterval, r) for r in rows]

    async def present(self, session_id: str) -> list[PresenceInterval]:
        c = t.presence_intervals.c
        async with self.store.read() as conn:
            rows = await conn.execute(t.presence_intervals.select().where(
                c.session_id == session_id, c.left_at.is_(None)).order_by(c.joined_at, c.id))
            return [_rec(PresenceInterval, r) for r in rows]

    # engagement -----------------------------------------------------------------------------------------
    async def increment_engagement(self, session_id: str, identity: str, counter: str, by: int = 1) -> None:
        if counter not in t.ENGAGEMENT_COUNTERS:
            raise ValueError(f"unknown engagement counter {counter!r}; one of {', '.join(t.ENGAGEMENT_COUNTERS)}")
        e = t.engagement
        async with self.store.transaction() as conn:
            await lock_key(conn, f"engagement:{session_id}:{identity}")
            res = await conn.execute(e.update().where(e.c.session_id == session_id, e.c.identity == identity)
                                     .values({counter: e.c[counter] + by}))
            if res.rowcount == 0:
                await conn.execute(e.insert().values({"session_id": session_id, "identity": identity,
                                                      counter: by}))

    async def engagement(self, session_id: str) -> dict[str, dict[str, int]]:
        e = t.engagement
        async with self.store.read() as conn:
            rows = await conn.execute(e.select().where(e.c.session_id == session_id).order_by(e.c.identity))
            return {r.identity: {k: getattr(r, k) for k in t.ENGAGEMENT_COUNTERS} for r in rows}
