"""Session model: scheduling, status transitions, admission (capacity, password, bans), presence, moderation.

Pure logic over a storage.Store; the transport layer calls these and maps classroom.errors to responses.
Observers are callables `observer(event: str, data: dict)` (sync or async) given by the caller; they are told
about session.started/ended/cancelled, participant.joined/left/banned, moderator.named/removed and
attendance.ready. A failing observer is logged and never breaks the operation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import jsonschema
from aiohttp import web

from classroom import attendance as attendance_mod
from classroom.errors import (Banned, BadPassword, Conflict, InvalidInput, InvalidTransition, NotFound,
                              PermissionDenied, SessionClosed, SessionFull)
from shared.clock import SYSTEM_CLOCK, Clock
from shared.roles import PARTICIPANT_ROLES, STAFF_ROLES
from storage import schema as t
from storage.sessions import PresenceInterval, SessionRecord

log = logging.getLogger(__name__)

Observer = Callable[[str, dict], Any]

RECONNECT_GRACE_S = 30.0
# qa_anonymous_to_staff (default off): anonymous questions hide the asker from staff too, not only classmates.
FEATURES = ("chat", "qa", "polls", "whiteboard", "quiz", "recording", "students_may_publish",
            "qa_anonymous_to_staff")

# Allowed status changes and the verb that performs each.
TRANSITIONS = {
    ("scheduled", "live"): "start",
    ("live", "ended"): "end",
    ("scheduled", "cancelled"): "cancel",
}


@dataclass(frozen=True)
class Actor:
    """Who is calling. `instructor`: may create sessions and handle tutoring requests (set by the caller
    from the token/API key). `admin`: a server-side API key, allowed everything."""
    identity: str
    name: str = ""
    instructor: bool = False
    admin: bool = False


@dataclass(frozen=True)
class Admission:
    session: SessionRecord
    identity: str
    role: str            # effective role in this session
    counted: bool        # takes a capacity seat
    already: bool        # was admitted before (reconnect); no new seat taken
    seats_taken: int


def default_features(session_type: str) -> dict[str, bool]:
    return {
        "chat": True, "qa": session_type != "tutoring", "polls": session_type != "tutoring",
        "whiteboard": True, "quiz": session_type in ("class", "workshop"), "recording": False,
        "students_may_publish": session_type in ("workshop", "tutoring", "office_hours"),
    }


_ROOM_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_FIELDS = {
    "title": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": {"type": "string", "maxLength": 10000},
    "type": {"enum": list(t.SESSION_TYPES)},
    "scheduled_start": {"type": ["number", "null"]},
    "scheduled_end": {"type": ["number", "null"]},
    "capacity": {"type": ["integer", "null"], "minimum": 1, "maximum": 100000},
    "password": {"type": ["string", "null"], "maxLength": 200},
    "features": {
        "type": "object",
        "properties": {name: {"type": "boolean"} for name in FEATURES},
        "additionalProperties": False,
    },
}
CREATE_SCHEMA = {
    "type": "object",
    "properties": {**_FIELDS, "room": {"type": "string", "pattern": _ROOM_RE},
                   "instructor": {"type": "string", "minLength": 1, "maxLength": 255}},
    "required": ["title"],
    "additionalProperties": False,
}
UPDATE_SCHEMA = {
    "type": "object",
    "properties": {k: v for k, v in _FIELDS.items() if k != "type"},
    "additionalProperties": False,
}


def validate(data: Any, schema: dict, what: str) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InvalidInput(f"{what}: {where + ': ' if where else ''}{exc.message}") from None


# Passwords: scrypt, stored as "scrypt$n$r$p$salt$hash" (hex).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(bytes.fromhex(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def room_slug(title: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "session"
    return f"{base}-{secrets.token_hex(3)}"


async def notify(observers: Iterable[Observer], event: str, data: dict) -> None:
    for observer in list(observers):
        try:
            result = observer(event, data)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("observer %r failed on %s", observer, event)


class SessionService:
    def __init__(self, store, *, clock: Clock = SYSTEM_CLOCK, grace_s: float = RECONNECT_GRACE_S,
                 observers: Iterable[Observer] = (), present_threshold: float = attendance_mod.PRESENT_THRESHOLD):
        self.store = store
        self.repo = store.sessions
        self.clock = clock
        self.grace_s = grace_s
        self.observers: list[Observer] = list(observers)
        self.present_threshold = present_threshold

    async def _emit(self, event: str, data: dict) -> None:
        await notify(self.observers, event, data)

    # lookup ---------------------------------------------------------------------------------------------
    async def get(self, session_id: str) -> SessionRecord:
        rec = await self.repo.get(session_id)
        if rec is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return rec

    async def get_by_room(self, room: str) -> SessionRecord:
        rec = await self.repo.get_by_room(room)
        if rec is None:
            raise NotFound(f"no session uses room {room!r}")
        return rec

    async def list(self, **filters: Any) -> list[SessionRecord]:
        return await self.repo.list(**filters)

    async def role_in(self, session: SessionRecord, identity: str) -> str | None:
        """'instructor' for the session's instructor, 'moderator' for a named moderator, else None."""
        if identity == session.instructor:
            return "instructor"
        return await self.repo.role_of(session.id, identity)

    async def _require_owner(self, actor: Actor, session: SessionRecord, action: str) -> None:
        if actor.admin or actor.identity == session.instructor:
            return
        raise PermissionDenied(f"only the session's instructor or an admin may {action}")

    async def _require_staff(self, actor: Actor, session: SessionRecord, action: str) -> None:
        if actor.admin or await self.role_in(session, actor.identity) in STAFF_ROLES:
            return
        raise PermissionDenied(f"only the instructor, a moderator or an admin may {action}")

    # create / update ------------------------------------------------------------------------------------
    async def create(self, actor: Actor, data: dict) -> SessionRecord:
        validate(data, CREATE_SCHEMA, "session")
        if not (actor.instructor or actor.admin):
            raise PermissionDenied("only instructors or admins may create sessions")
        instructor = data.get("instructor", actor.identity)
        if instructor != actor.identity and not actor.admin:
            raise PermissionDenied("only an admin may create a session for another instructor")
        _check_schedule(data.get("scheduled_start"), data.get("scheduled_end"))
        session_type = data.get("type", "class")
        return await self._insert(
            room=data.get("room") or room_slug(data["title"]), title=data["title"],
            description=data.get("description", ""), type=session_type, instructor=instructor,
            scheduled_start=data.get("scheduled_start"), scheduled_end=data.get("scheduled_end"),
            capacity=data.get("capacity"),
            password=data.get("password"),
            features={**default_features(session_type), **data.get("features", {})},
            status="scheduled")

    async def _insert(self, *, password: str | None, **values: Any) -> SessionRecord:
        import sqlalchemy as sa

        password_hash = await asyncio.to_thread(hash_password, password) if password else None
        try:
            return await self.repo.create(password_hash=password_hash, created_at=self.clock(), **values)
        except sa.exc.IntegrityError:
            raise Conflict(f"room {values['room']!r} is already used by another session") from None

    async def create_tutoring_session(self, *, instructor: str, title: str, now: float) -> SessionRecord:
        """A live 1:1 session (capacity 1: the student; the instructor does not count). Used by tutoring,
        which calls announce_started() once its transaction has committed."""
        rec = await self._insert(
            room=f"tutoring-{secrets.token_hex(6)}", title=title[:200], description="", type="tutoring",
            instructor=instructor, scheduled_start=now, scheduled_end=None, capacity=1, password=None,
            features=default_features("tutoring"), status="live", actual_start=now)
        await self.store.events.append(rec.id, "session.started", ts=now, actor=instructor)
        return rec

    async def announce_started(self, rec: SessionRecord) -> None:
        """Tell observers a session went live (for sessions created live, after their transaction commits)."""
        await self._emit("session.started", _session_event(rec))

    async def update(self, actor: Actor, session_id: str, data: dict) -> SessionRecord:
        validate(data, UPDATE_SCHEMA, "session update")
        session = await self.get(session_id)
        await self._require_owner(actor, session, "change this session")
        if session.status in ("ended", "cancelled"):
            raise InvalidTransition(f"session is {session.status}; it can no longer be changed")
        values = {k: v for k, v in data.items() if k not in ("password", "features")}
        _check_schedule(values.get("scheduled_start", session.scheduled_start),
                        values.get("scheduled_end", session.scheduled_end))
        if "features" in data:
            values["features"] = {**session.features, **data["features"]}
        if "password" in data:
            values["password_hash"] = (await asyncio.to_thread(hash_password, data["password"])
                                       if data["password"] else None)
        return await self.repo.update(session_id, **values)

    # status ---------------------------------------------------------------------------------------------
    async def start(self, actor: Actor, session_id: str) -> SessionRecord:
        return await self._transition(actor, session_id, "live")

    async def end(self, actor: Actor, session_id: str) -> SessionRecord:
        return await self._transition(actor, session_id, "ended")

    async def cancel(self, actor: Actor, session_id: str) -> SessionRecord:
        return await self._transition(actor, session_id, "cancelled")

    async def set_status(self, actor: Actor, session_id: str, status: str) -> SessionRecord:
        if status not in t.SESSION_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(t.SESSION_STATUSES)}")
        return await self._transition(actor, session_id, status)

    async def _transition(self, actor: Actor, session_id: str, to: str, *, check_permission: bool = True):
        session = await self.get(session_id)
        if check_permission:
            await self._require_owner(actor, session, f"set the session {to}")
        if (session.status, to) not in TRANSITIONS:
            allowed = [f"{a}→{b}" for a, b in TRANSITIONS]
            raise InvalidTransition(f"cannot change a {session.status} session to {to}; "
                                    f"allowed: {', '.join(allowed)}")
        now = self.clock()
        values: dict[str, Any] = {}
        if to == "live":
            values["actual_start"] = now
        elif to == "ended":
            values["actual_end"] = max(now, session.actual_start or now)
        async with self.store.transaction():
            rec = await self.repo.transition(session_id, [session.status], to, **values)
            if rec is None:
                current = await self.repo.get(session_id)
                raise InvalidTransition(f"session changed meanwhile: it is {current.status} now, not "
                                        f"{session.status}")
            if to == "ended":
                await self.repo.close_open_intervals(now=rec.actual_end, session_id=session_id)
            await self.store.events.append(session_id, f"session.{_past(to)}", ts=now, actor=actor.identity)
        await self._emit(f"session.{_past(to)}", _session_event(rec))
        if to == "ended":
            report = await self.attendance(session_id)
            await self._emit("attendance.ready", report.to_json())
        return rec

    async def end_as_system(self, session_id: str, *, by: str) -> SessionRecord:
        """End a live session without the instructor check (tutoring: either side may end it)."""
        return await self._transition(Actor(identity=by), session_id, "ended", check_permission=False)

    # admission ------------------------------------------------------------------------------------------
    async def admit(self, session_id: str, identity: str, role: str = "student", password: str | None = None,
                    *, name: str = "") -> Admission:
        """Let `identity` into the session, or raise NotFound, Banned, SessionClosed, BadPassword or
        SessionFull. Instructors and moderators bypass the password and take no capacity seat. Admitting an
        identity again (reconnect) is idempotent."""
        if role not in PARTICIPANT_ROLES:
            raise InvalidInput(f"role must be one of {', '.join(PARTICIPANT_ROLES)}")
        session = await self.get(session_id)
        if session.status in ("ended", "cancelled"):
            raise SessionClosed(f"session {session.title!r} is {session.status}")
        # A named role wins; otherwise the token's role is trusted (tokens are minted by the backend).
        effective = await self.role_in(session, identity) or role
        staff = effective in STAFF_ROLES
        if session.type == "tutoring" and not staff:
            req = await self.store.tutoring.list(student=identity, status="accepted")
            if not any(r.session_id == session.id for r in req):
                raise PermissionDenied("this tutoring session is only for the student who asked for it")
        if await self.repo.is_banned(session_id, identity):
            raise Banned(f"{identity} is banned from this session")
        if session.password_hash and not staff:
            if not password or not await asyncio.to_thread(verify_password, password, session.password_hash):
                raise BadPassword("wrong session password" if password else "this session needs a password")
        outcome = await self.repo.admit(session_id, identity, effective, counted=not staff, now=self.clock())
        if outcome.result == "not_found":
            raise NotFound(f"session {session_id!r} does not exist")
        if outcome.result == "banned":
            raise Banned(f"{identity} is banned from this session")
        if outcome.result == "full":
            raise SessionFull(f"session is full ({session.capacity} of {session.capacity} seats taken)")
        return Admission(session=session, identity=identity, role=effective, counted=not staff,
                         already=outcome.result == "already", seats_taken=outcome.seats_taken)

    # presence -------------------------------------------------------------------------------------------
    async def joined(self, session_id: str, identity: str, *, name: str = "",
                     role: str = "student") -> tuple[PresenceInterval, str]:
        """A connection of `identity` came up. Returns (interval, how): "new", "resumed" (back within the
        grace period: the same interval continues) or "extra" (another connection while present)."""
        now = self.clock()
        interval, how = await self.repo.presence_join(session_id, identity, name=name, role=role, now=now,
                                                      grace_s=self.grace_s)
        if how != "extra":
            await self.store.events.append(session_id, "participant.joined", ts=now, actor=identity,
                                           payload={"name": name, "role": role, "resumed": how == "resumed"})
            await self._emit("participant.joined", {"session_id": session_id, "identity": identity,
                                                    "name": name, "role": role, "resumed": how == "resumed",
                                                    "ts": now})
        return interval, how

    async def left(self, session_id: str, identity: str) -> PresenceInterval | None:
        """A connection went away. The interval closes when it was the last one; a reconnect within the grace
        period reopens the same interval."""
        now = self.clock()
        interval = await self.repo.presence_leave(session_id, identity, now=now)
        if interval is not None and interval.left_at is not None:
            await self.store.events.append(session_id, "participant.left", ts=now, actor=identity)
            await self._emit("participant.left", {"session_id": session_id, "identity": identity,
                                                  "name": interval.name, "role": interval.role, "ts": now})
        return interval

    async def present(self, session_id: str) -> list[PresenceInterval]:
        return await self.repo.present(session_id)

    # moderation -----------------------------------------------------------------------------------------
    async def name_moderator(self, actor: Actor, session_id: str, identity: str) -> None:
        session = await self.get(session_id)
        await self._require_owner(actor, session, "name moderators")
        if identity == session.instructor:
            raise InvalidInput("the instructor is already in charge of this session")
        await self.repo.set_role(session_id, identity, "moderator", now=self.clock())
        await self._emit("moderator.named", {"session_id": session_id, "identity": identity})

    async def remove_moderator(self, actor: Actor, session_id: str, identity: str) -> bool:
        session = await self.get(session_id)
        await self._require_owner(actor, session, "remove moderators")
        removed = await self.repo.remove_role(session_id, identity)
        if removed:
            # Recorded so that a moderator token for the room does not name its holder again
            # (signaling/api/roomhooks.staff_role).
            await self.store.events.append(session_id, "moderator.removed", ts=self.clock(), actor=actor.identity,
                                           payload={"identity": identity})
            await self._emit("moderator.removed", {"session_id": session_id, "identity": identity})
        return removed

    async def moderators(self, session_id: str) -> list[str]:
        return [i for i, role in (await self.repo.roles(session_id)).items() if role == "moderator"]

    async def is_staff(self, session_id: str, identity: str) -> bool:
        return await self.role_in(await self.get(session_id), identity) in STAFF_ROLES

    async def ban(self, actor: Actor, session_id: str, identity: str, reason: str = "") -> None:
        """Ban `identity`: they lose their seat and cannot be admitted again. Observers get
        participant.banned so the transport can disconnect them."""
        session = await self.get(session_id)
        await self._require_staff(actor, session, "ban participants")
        target = await self.role_in(session, identity)
        if target == "instructor":
            raise PermissionDenied("the session's instructor cannot be banned")
        if target == "moderator" and not (actor.admin or actor.identity == session.instructor):
            raise PermissionDenied("only the instructor or an admin may ban a moderator")
        if len(reason) > 500:
            raise InvalidInput("ban reason is longer than 500 characters")
        now = self.clock()
        async with self.store.transaction():
            if target == "moderator":
                await self.repo.remove_role(session_id, identity)
            await self.repo.ban(session_id, identity, by=actor.identity, reason=reason, now=now)
            await self.store.events.append(session_id, "participant.banned", ts=now, actor=actor.identity,
                                           payload={"identity": identity, "reason": reason})
        await self._emit("participant.banned", {"session_id": session_id, "identity": identity,
                                                "by": actor.identity, "reason": reason})

    async def unban(self, actor: Actor, session_id: str, identity: str) -> bool:
        session = await self.get(session_id)
        await self._require_staff(actor, session, "lift bans")
        return await self.repo.unban(session_id, identity)

    # attendance -----------------------------------------------------------------------------------------
    async def attendance(self, session_id: str) -> "attendance_mod.AttendanceReport":
        session = await self.get(session_id)
        intervals = await self.repo.intervals(session_id)
        return attendance_mod.compute(session, intervals, threshold=self.present_threshold,
                                      now=self.clock())


def _check_schedule(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidInput("scheduled_end must be after scheduled_start")


def _past(status: str) -> str:
    return {"live": "started", "ended": "ended", "cancelled": "cancelled"}[status]


def _session_event(rec: SessionRecord) -> dict:
    return {"session_id": rec.id, "room": rec.room, "title": rec.title, "type": rec.type,
            "instructor": rec.instructor, "status": rec.status, "actual_start": rec.actual_start,
            "actual_end": rec.actual_end}


# The app's SessionService (created by signaling.api.services_ctx); here, beside its class, so web/ pages
# may read it too without reaching sideways into signaling/.
SESSIONS = web.AppKey("sessions", SessionService)


def session_key(room_name: str, session) -> str:
    """Where a room's classroom history is kept: its session, or for an ad-hoc room a key derived from
    its name (32 characters, the width of the session_id columns)."""
    if session is not None:
        return str(session.id)
    return "adhoc" + hashlib.sha256(room_name.encode()).hexdigest()[:27]
