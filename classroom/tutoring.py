"""On-demand 1:1 tutoring: a student asks, an instructor accepts (a tutoring session is created) or rejects,
either side ends it, and a request nobody accepts expires after a TTL.

Observers (`observer(event, data)`, sync or async) hear tutoring.requested/accepted/rejected/cancelled/
expired/ended with data {"request": {...}, "room": room-or-None}, so the transport can push live updates to
the student and to instructors' dashboards.
"""

from __future__ import annotations

from typing import Any, Iterable

from classroom.errors import Conflict, InvalidInput, InvalidTransition, NotFound, PermissionDenied
from classroom.sessions import Actor, Observer, SessionService, notify, validate
from shared.clock import SYSTEM_CLOCK, Clock
from storage.sessions import SessionRecord
from storage.tutoring import TutoringRecord

DEFAULT_TTL_S = 15 * 60
OPEN = ("pending", "accepted")
CLOSED = ("rejected", "expired", "cancelled")

REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "course_ref": {"type": ["string", "null"], "maxLength": 200},
        "lesson_ref": {"type": ["string", "null"], "maxLength": 200},
        "note": {"type": "string", "maxLength": 2000},
    },
    "additionalProperties": False,
}


class TutoringService:
    def __init__(self, store, sessions: SessionService, *, clock: Clock = SYSTEM_CLOCK,
                 ttl_s: float = DEFAULT_TTL_S, observers: Iterable[Observer] = ()):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.store = store
        self.repo = store.tutoring
        self.sessions = sessions
        self.clock = clock
        self.ttl_s = ttl_s
        self.observers: list[Observer] = list(observers)

    async def _emit(self, event: str, rec: TutoringRecord, room: str | None = None) -> None:
        await notify(self.observers, event, {"request": rec.to_dict(), "room": room})

    async def _get(self, request_id: str) -> TutoringRecord:
        rec = await self.repo.get(request_id)
        if rec is None:
            raise NotFound(f"tutoring request {request_id!r} does not exist")
        return rec

    async def _cas(self, rec: TutoringRecord, to: str, **values: Any) -> TutoringRecord:
        updated = await self.repo.transition(rec.id, [rec.status], to, **values)
        if updated is None:
            now = await self._get(rec.id)
            raise InvalidTransition(f"tutoring request is {now.status} now; it cannot become {to}")
        return updated

    # student side ---------------------------------------------------------------------------------------
    async def request(self, actor: Actor, data: dict | None = None) -> TutoringRecord:
        """Ask for tutoring. One open (pending or accepted) request per student at a time."""
        data = data or {}
        validate(data, REQUEST_SCHEMA, "tutoring request")
        await self.expire_due()
        if await self.repo.list(student=actor.identity, status=OPEN, limit=1):
            raise Conflict("you already have an open tutoring request: cancel or end it first")
        now = self.clock()
        rec = await self.repo.create(
            student=actor.identity, student_name=actor.name or actor.identity,
            course_ref=data.get("course_ref"), lesson_ref=data.get("lesson_ref"), note=data.get("note", ""),
            status="pending", created_at=now, expires_at=now + self.ttl_s)
        await self._emit("tutoring.requested", rec)
        return rec

    async def cancel(self, actor: Actor, request_id: str) -> TutoringRecord:
        rec = await self._get(request_id)
        if rec.student != actor.identity and not actor.admin:
            raise PermissionDenied("only the student who asked may cancel this request")
        if rec.status != "pending":
            raise InvalidTransition(f"only a pending request can be cancelled; this one is {rec.status}")
        rec = await self._cas(rec, "cancelled", ended_at=self.clock(), ended_by=actor.identity)
        await self._emit("tutoring.cancelled", rec)
        return rec

    # instructor side ------------------------------------------------------------------------------------
    def _require_instructor(self, actor: Actor, action: str) -> None:
        if not (actor.instructor or actor.admin):
            raise PermissionDenied(f"only instructors may {action} tutoring requests")

    async def _pending(self, request_id: str, now: float) -> TutoringRecord:
        rec = await self._get(request_id)
        if rec.status == "pending" and rec.expires_at <= now:
            await self.expire_due(now)
            rec = await self._get(request_id)
        if rec.status != "pending":
            raise InvalidTransition(f"tutoring request is {rec.status}, not pending")
        return rec

    async def accept(self, actor: Actor, request_id: str) -> tuple[TutoringRecord, SessionRecord]:
        """Accept a pending request: creates a live tutoring session with a fresh room. Returns (request,
        session); the room to join is session.room. Exactly one of several racing instructors wins."""
        self._require_instructor(actor, "accept")
        now = self.clock()
        rec = await self._pending(request_id, now)
        about = rec.lesson_ref or rec.course_ref or rec.student_name or rec.student
        async with self.store.transaction():
            session = await self.sessions.create_tutoring_session(
                instructor=actor.identity, title=f"Tutoring: {about}", now=now)
            rec = await self._cas(rec, "accepted", instructor=actor.identity, accepted_at=now,
                                  session_id=session.id, instructor_name=actor.name or actor.identity)
        await self.sessions.announce_started(session)
        await self._emit("tutoring.accepted", rec, session.room)
        return rec, session

    async def reject(self, actor: Actor, request_id: str, reason: str = "") -> TutoringRecord:
        self._require_instructor(actor, "reject")
        if len(reason) > 1000:
            raise InvalidInput("reason is longer than 1000 characters")
        rec = await self._pending(request_id, self.clock())
        rec = await self._cas(rec, "rejected", instructor=actor.identity, instructor_name=actor.name or actor.identity,
                              reason=reason,
                              ended_at=self.clock(), ended_by=actor.identity)
        await self._emit("tutoring.rejected", rec)
        return rec

    # either side ----------------------------------------------------------------------------------------
    async def end(self, actor: Actor, request_id: str) -> TutoringRecord:
        """End an accepted request (the student or the accepting instructor, or an admin); records duration_s
        and ends the tutoring session."""
        rec = await self._get(request_id)
        if actor.identity not in (rec.student, rec.instructor) and not actor.admin:
            raise PermissionDenied("only the student or the instructor of this request may end it")
        if rec.status != "accepted":
            raise InvalidTransition(f"only an accepted request can be ended; this one is {rec.status}")
        now = self.clock()
        rec = await self._cas(rec, "ended", ended_at=now, ended_by=actor.identity,
                              duration_s=max(0.0, now - (rec.accepted_at or now)))
        room = None
        if rec.session_id:
            session = await self.store.sessions.get(rec.session_id)
            if session is not None:
                room = session.room
                if session.status == "live":
                    try:
                        await self.sessions.end_as_system(session.id, by=actor.identity)
                    except InvalidTransition:
                        pass  # ended meanwhile
        await self._emit("tutoring.ended", rec, room)
        return rec

    async def get(self, actor: Actor, request_id: str) -> TutoringRecord:
        rec = await self._get(request_id)
        if actor.identity not in (rec.student, rec.instructor) and not (actor.instructor or actor.admin):
            raise PermissionDenied("this tutoring request belongs to someone else")
        return rec

    async def room_for(self, actor: Actor, request_id: str) -> str:
        """The room of an accepted request, for its student or instructor."""
        rec = await self.get(actor, request_id)
        if rec.status != "accepted" or not rec.session_id:
            raise InvalidTransition(f"tutoring request is {rec.status}; there is no room to join")
        session = await self.store.sessions.get(rec.session_id)
        if session is None:
            raise NotFound("the tutoring session no longer exists")
        return session.room

    # expiry ---------------------------------------------------------------------------------------------
    async def expire_due(self, now: float | None = None) -> list[TutoringRecord]:
        """Expire pending requests whose TTL has passed (call it periodically; views call it too)."""
        now = self.clock() if now is None else now
        expired = []
        for rec in await self.repo.due_for_expiry(now):
            done = await self.repo.transition(rec.id, ["pending"], "expired", ended_at=now)
            if done is not None:
                expired.append(done)
                await self._emit("tutoring.expired", done)
        return expired

    # dashboards -----------------------------------------------------------------------------------------
    async def student_view(self, actor: Actor) -> dict[str, Any]:
        """{"pending": [...], "active": [...], "completed": [...], "closed": [...], "counts": {...}} — the
        student's own requests; completed = ended, closed = rejected/expired/cancelled."""
        await self.expire_due()
        mine = await self.repo.list(student=actor.identity, limit=500)
        return await self._view(mine, {"pending": ("pending",), "active": ("accepted",),
                                       "completed": ("ended",), "closed": CLOSED})

    async def instructor_view(self, actor: Actor) -> dict[str, Any]:
        """{"pending": every pending request (oldest first, to act on), "active": accepted by me,
        "completed": ended ones I took, "counts": {...}}."""
        self._require_instructor(actor, "view")
        await self.expire_due()
        queue = sorted(await self.repo.list(status="pending", limit=500), key=lambda r: r.created_at)
        mine = await self.repo.list(instructor=actor.identity, status=("accepted", "ended"), limit=500)
        view = await self._view(mine, {"active": ("accepted",), "completed": ("ended",)})
        view["pending"] = [r.to_dict() for r in queue]
        view["counts"]["pending"] = len(queue)
        return view

    async def _view(self, recs: list[TutoringRecord], groups: dict[str, tuple[str, ...]]) -> dict[str, Any]:
        rooms: dict[str, str] = {}
        for r in recs:
            if r.status == "accepted" and r.session_id:
                session = await self.store.sessions.get(r.session_id)
                if session is not None:
                    rooms[r.id] = session.room
        view: dict[str, Any] = {}
        for key, statuses in groups.items():
            view[key] = [{**r.to_dict(), "room": rooms.get(r.id)} for r in recs if r.status in statuses]
        view["counts"] = {key: len(view[key]) for key in groups}
        return view
