"""Where the classroom model meets live rooms: admission and presence on join/leave, staff checks, and
moderation (mute, remove, ban) shared by the REST API and the room protocol.

A room whose name belongs to a session row is governed by that session; any other room stays ad hoc.
"""

from __future__ import annotations

import logging

from aiohttp import web

from classroom.errors import (Banned, BadPassword, ClassroomError, Conflict, InvalidInput, InvalidTransition,
                              NotFound, PermissionDenied, SessionClosed, SessionFull, Unavailable)
from classroom.sessions import Admission
from recorder.service import RECORDINGS
from shared.roles import PARTICIPANT_ROLES, STAFF_ROLES
from signaling.api import SESSIONS
from signaling.api.identity import Principal
from signaling.classroom_bridge import DATA_HANDLER
from signaling.room import ROOMS, RoomFull
from signaling.schemas import ProtocolError
from storage.store import STORE

log = logging.getLogger(__name__)

# Classroom errors in the room protocol's one vocabulary (docs/protocol.md, "Error codes"): a refused join
# (the client is not in the room) or a refused `moderate` gets {"type": "error", "code": ...}.
ADMISSION_CODES = {SessionFull: "session_full", SessionClosed: "session_not_live", Banned: "banned",
                   BadPassword: "bad_password", PermissionDenied: "forbidden", NotFound: "not_found",
                   InvalidInput: "invalid", InvalidTransition: "conflict", Conflict: "conflict",
                  Unavailable: "node_unavailable"}


def room_code(exc: ClassroomError) -> str:
    return ADMISSION_CODES.get(type(exc), "invalid")


def principal_of(grants) -> Principal:
    return Principal(identity=grants.identity, role=grants.role, name=grants.name, room=grants.room,
                     grants=grants)


async def staff_role(app: web.Application, principal: Principal, session) -> str | None:
    """'admin', 'instructor' or 'moderator' when `principal` may moderate `session`, else None.

    The session's instructor and named moderators are staff. A token minted for the session's own room with
    role moderator (or instructor, for a co-teacher) names its holder moderator on first use: such tokens are
    signed by the backend, which holds an API key."""
    if principal.admin:
        return "admin"
    if principal.identity == session.instructor:
        return "instructor"
    store = app[STORE]
    role = await store.sessions.role_of(session.id, principal.identity)
    if role in STAFF_ROLES:
        return role
    if principal.role in STAFF_ROLES and principal.room == session.room:
        # A moderator the instructor removed stays removed, whatever token they still hold.
        removed = await store.events.list(session.id, types=["moderator.removed"])
        if any((e.payload or {}).get("identity") == principal.identity for e in removed):
            return None
        await store.sessions.set_role(session.id, principal.identity, "moderator",
                                      now=app[SESSIONS].clock())
        return "moderator"
    return None


# -- join / leave -------------------------------------------------------------------------------------------

async def admit(app: web.Application, room_name: str, grants, password: str | None) -> Admission | None:
    """Check a join (WebSocket, WHIP or WHEP) against the room's session; returns the Admission (its
    `.session` is the session; None: ad hoc room) or raises ProtocolError with a clear code. Nothing about the
    room has changed when it raises. Admission records the identity (taking a seat unless staff) but opens no
    presence interval: `joined` does, once the room has taken the participant. Join the room through `enter`
    so that a refusal there gives the seat back."""
    sessions = app.get(SESSIONS)
    if sessions is None:
        return None
    session = await app[STORE].sessions.get_by_room(room_name)
    if session is None:
        return None
    staff = await staff_role(app, principal_of(grants), session)
    if session.status == "scheduled" and not staff:
        raise ProtocolError("session_not_live", f"session {session.title!r} has not started yet",
                            **await refusal_details(app, session))
    if session.status in ("ended", "cancelled"):
        raise ProtocolError("session_not_live", f"session {session.title!r} is {session.status}",
                            **await refusal_details(app, session))
    role = grants.role if grants.role in PARTICIPANT_ROLES else "viewer"
    if staff == "instructor":
        role = "instructor"
    elif staff == "moderator":
        role = "moderator"
    elif role in STAFF_ROLES:
        role = "student"
    try:
        return await sessions.admit(session.id, grants.identity, role, password, name=grants.name)
    except ClassroomError as exc:
        extra: dict = {}
        if isinstance(exc, Banned):
            bans = await app[STORE].sessions.bans(session.id)
            extra["reason"] = next((b["reason"] for b in bans if b["identity"] == grants.identity), "") or ""
        elif isinstance(exc, BadPassword):
            extra["password"] = "wrong" if password else "required"
        elif isinstance(exc, SessionClosed):
            extra = await refusal_details(app, await app[STORE].sessions.get(session.id) or session)
        raise ProtocolError(room_code(exc), exc.message, **extra) from None


async def refusal_details(app: web.Application, session) -> dict:
    """What a page shows for a session that is not live: its title and status, the scheduled start, and
    the latest recording once it has ended (the page links to /recordings/{id})."""
    out = {"session_id": session.id, "title": session.title, "status": session.status,
           "scheduled_start": session.scheduled_start}
    manager = app.get(RECORDINGS)
    if session.status == "ended" and manager is not None:
        rows = [r for r in await manager.repo.list(session_ids=[session.id]) if r.status != "recording"]
        if rows:
            out["recording_id"] = max(rows, key=lambda r: r.started_at).id
    return out


async def enter(app: web.Application, room, participant, admission: Admission | None) -> None:
    """`room.join(participant)` after `admit` (a participant it replaces leaves the classroom too). When the
    room refuses (RoomFull: the server's
    `max_participants` is lower than the session's capacity), what admission took is given back before RoomFull
    propagates, so the refusal leaves no seat taken and no admission recorded."""
    try:
        replaced = await room.join(participant)
    except RoomFull:
        await unadmit(app, admission, room)
        raise
    if replaced is not None:
        # A reconnect: the old connection's classroom member stops now, so it hears and says nothing more.
        handler = app.get(DATA_HANDLER)
        if handler is not None:
            await handler.on_replaced(room, replaced)


async def unadmit(app: web.Application, admission: Admission | None, room=None) -> None:
    """Undo an `admit` whose join did not happen. A reconnect (`admission.already`) keeps the seat it held
    before; so does an identity that is in the room on another connection."""
    if admission is None or admission.already:
        return
    if room is not None and admission.identity in room.participants:
        return
    try:
        await app[STORE].sessions.release(admission.session.id, admission.identity)
    except Exception:
        log.exception("admission: giving back %s's seat in %s failed", admission.identity, admission.session.room)


async def joined(app: web.Application, session, participant) -> None:
    if session is None:
        return
    try:
        await app[SESSIONS].joined(session.id, participant.identity, name=participant.name,
                                   role=participant.role)
    except Exception:
        log.exception("presence: recording %s joining %s failed", participant.identity, session.room)
    manager = app.get(RECORDINGS)
    if manager is not None:  # the session's recording flag (recorder.service: the auto-record rules)
        await manager.session_joined(session)


async def left(app: web.Application, session, participant) -> None:
    if session is None or app.get(SESSIONS) is None:
        return
    try:
        await app[SESSIONS].left(session.id, participant.identity)
    except Exception:
        log.exception("presence: recording %s leaving %s failed", participant.identity, session.room)


# -- moderation ---------------------------------------------------------------------------------------------

def live_participant(app: web.Application, room_name: str, identity: str):
    room = app[ROOMS].rooms.get(room_name)
    return room, (room.participants.get(identity) if room is not None else None)


async def on_edge(app: web.Application, room_name: str, identity: str, request: dict) -> dict | None:
    """On a room's home, for a target that is an edge member on another node: `request` (a moderation) done
    there by its edge (signaling/edge_members.py), whose answer this returns; None if it is no edge member.
    The edge's refusal is raised here as the same ClassroomError; no answer in time is Unavailable."""
    room = app[ROOMS].rooms.get(room_name)
    if room is None or identity not in room.remote_participants or identity in room.participants:
        return None
    from signaling.edge_members import EDGE  # only rooms with edge members get here (redis-py is present)

    return await app[EDGE].home.moderate(room_name, identity, request)


async def mute(app: web.Application, room_name: str, identity: str, track_id: str | None, *, by: str) -> list[str]:
    """Stop forwarding `identity`'s track (or all their tracks) and tell everyone (`track_muted` with `by`)."""
    room, target = live_participant(app, room_name, identity)
    if target is None:
        answer = await on_edge(app, room_name, identity, {"action": "mute", "track_id": track_id, "by": by})
        if answer is not None:
            return answer["track_ids"]
        raise NotFound(f"{identity} is not in room {room_name}")
    tracks = list(target.publisher.tracks.values()) if target.publisher else []
    if track_id is not None:
        tracks = [t for t in tracks if t.track_id == track_id]
        if not tracks:
            raise NotFound(f"{identity} publishes no track {track_id!r}")
    if not tracks:
        raise NotFound(f"{identity} publishes no tracks")
    for track in tracks:
        track.muted = True
        target.locked[track.source] = by
        await room.broadcast({"type": "track_muted", "track_id": track.track_id, "muted": True,
                              "participant": identity, "by": by})
    if any(t.kind == "video" for t in tracks):
        room.select_videos()  # a muted camera gives its place among the N to the next speaker
    return [t.track_id for t in tracks]


async def allow_unmute(app: web.Application, room_name: str, identity: str, track_id: str | None, *,
                       by: str) -> list[str]:
    """Let `identity` unmute a track (or every track) the staff muted; they get `unmute_allowed` and
    unmute it themselves (nobody's microphone is turned on for them)."""
    room, target = live_participant(app, room_name, identity)
    if target is None:
        answer = await on_edge(app, room_name, identity, {"action": "allow_unmute", "track_id": track_id,
                                                          "by": by})
        if answer is not None:
            return answer["track_ids"]
        raise NotFound(f"{identity} is not in room {room_name}")
    tracks = list(target.publisher.tracks.values()) if target.publisher else []
    sources = set(target.locked) if track_id is None else {t.source for t in tracks if t.track_id == track_id}
    if not sources & set(target.locked):
        raise NotFound(f"{identity} has no track muted by the staff" + (f" with id {track_id!r}" if track_id else ""))
    allowed = [t.track_id for t in tracks if t.source in sources and t.source in target.locked]
    for source in sources:
        target.locked.pop(source, None)
    await target.send({"type": "unmute_allowed", "track_ids": allowed, "sources": sorted(sources), "by": by})
    return allowed


async def request_unmute(room, participant, track_id: str) -> None:
    """A participant asks the staff to allow unmuting a track they muted: every staff member in the room
    gets `unmute_request` (the page shows it with an Allow button)."""
    track = participant.publisher.track(track_id) if participant.publisher else None
    if track is None or track.source not in participant.locked:
        raise ProtocolError("not_found", f"you have no track {track_id!r} muted by the staff")
    note = {"type": "unmute_request", "identity": participant.identity, "name": participant.name,
            "track_id": track_id, "source": track.source}
    for p in list(room.participants.values()):
        if p.transport == "ws" and p.grants.is_moderator:
            await p.send(note)


async def disconnect(app: web.Application, room_name: str, identity: str, reason: str, *, kind: str,
                     **extra) -> bool:
    """Close `identity`'s connection to the room; they get {"type": "left", "code": kind, "reason": ...}."""
    room, target = live_participant(app, room_name, identity)
    if target is None:
        return await on_edge(app, room_name, identity, {"action": "disconnect", "reason": reason, "kind": kind,
                                                        "extra": extra}) is not None
    if target.transport == "ws":
        await target.disconnect(reason, kind=kind, **extra)  # the socket closes; its handler leaves the room
    else:  # WHIP/WHEP: no signaling socket to tell
        await room.leave(identity, session_id=target.session_id)
    return True


async def remove(app: web.Application, room_name: str, identity: str, *, by: str, reason: str = "") -> None:
    if not await disconnect(app, room_name, identity, reason or f"removed by {by}", kind="removed", by=by):
        raise NotFound(f"{identity} is not in room {room_name}")


async def moderate(app: web.Application, room, participant, message: dict) -> dict:
    """The room protocol's `moderate` message: {action: mute|remove|ban, identity, track_id?, reason?}."""
    principal = principal_of(participant.grants)
    target = message["identity"]
    session = await app[STORE].sessions.get_by_room(room.name) if app.get(SESSIONS) else None
    if session is not None:
        allowed = await staff_role(app, principal, session) is not None
    else:
        allowed = participant.grants.is_moderator
    if not allowed:
        raise ProtocolError("forbidden", "only the instructor or a moderator may moderate this room")
    if target == participant.identity:
        raise ProtocolError("invalid", "you cannot moderate yourself")
    action = message["action"]
    try:
        if session is not None and action in ("mute", "remove") and target == session.instructor:
            raise PermissionDenied("the session's instructor cannot be muted or removed")
        if action == "mute":
            muted = await mute(app, room.name, target, message.get("track_id"), by=participant.identity)
            return {"type": "moderated", "action": action, "identity": target, "track_ids": muted}
        if action == "allow_unmute":
            allowed = await allow_unmute(app, room.name, target, message.get("track_id"), by=participant.identity)
            return {"type": "moderated", "action": action, "identity": target, "track_ids": allowed}
        if action == "remove":
            await remove(app, room.name, target, by=participant.identity, reason=message.get("reason", ""))
        else:
            if session is None:
                raise ProtocolError("no_session", "bans need a session; this room is ad hoc")
            # SessionService.ban tells observers, and the transport observer disconnects the target.
            await app[SESSIONS].ban(principal.actor, session.id, target, message.get("reason", ""))
    except ClassroomError as exc:
        raise ProtocolError(room_code(exc), exc.message) from None
    return {"type": "moderated", "action": action, "identity": target}


def transport_observer(app: web.Application):
    """A SessionService observer: a banned participant is disconnected; an ended session empties its room."""

    async def observe(event: str, data: dict) -> None:
        if event == "participant.banned":
            session = await app[STORE].sessions.get(data["session_id"])
            if session is not None:
                # The reason the teacher gave, not who pressed the button ("banned by apikey:devkey").
                reason = data.get("reason") or ""
                await disconnect(app, session.room, data["identity"],
                                 f"banned from this session: {reason}" if reason else "banned from this session",
                                 kind="banned", ban_reason=reason)
        elif event == "session.ended":
            manager = app.get(RECORDINGS)
            if manager is not None:
                await manager.session_ended(data["room"])
            room = app[ROOMS].rooms.get(data["room"])
            if room is not None:
                for identity in [*room.participants, *room.remote_participants]:  # edge members too
                    try:
                        await disconnect(app, room.name, identity, "the session has ended", kind="ended",
                                         title=data.get("title"))
                    except Unavailable as exc:  # its edge is gone: the home's sweep lets it leave
                        log.warning("session in room %s ended: %s", room.name, exc.message)

    return observe
