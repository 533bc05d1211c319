"""The REST API's route table: one `Op` per endpoint carries the handler, who may call it, the JSON Schema of
its body (validated here and published in /api/openapi.json) and its responses. See docs/api.md."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web
from jsonschema import Draft202012Validator

from classroom import feedback as feedback_mod, sessions as sessions_mod, tutoring as tutoring_mod
from classroom.errors import InvalidInput, NotFound, PermissionDenied
from classroom.webhooks import EVENTS as WEBHOOK_EVENTS
from shared.appkeys import DRAIN, KEYRING, SETTINGS
from shared.roles import PARTICIPANT_ROLES
from signaling import classroom_api, recordings_api as rec_api
from signaling.api import SESSIONS, TUTORING, WEBHOOKS, roomhooks
from signaling.api.identity import Principal, authenticate, join_link
from signaling.api.problems import Problem, answered
from signaling.drain import DEFAULT_DEADLINE_S, MAX_DEADLINE_S
from signaling.room import ROOMS
from storage.store import STORE

MAX_BODY = 64 * 1024
MAX_OFFSET = 2**31 - 1  # the databases' integer range bounds paging
_IDENT = {"type": "string", "minLength": 1, "maxLength": 255}


@dataclass
class Ctx:
    request: web.Request
    principal: Principal | None
    body: Any

    @property
    def app(self) -> web.Application:
        return self.request.app

    def param(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass
class Op:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: str                       # who may call it (documentation; the handler enforces it)
    body: dict | None = None        # JSON Schema of the request body
    body_required: bool = True
    status: int = 200
    also: tuple[int, ...] = ()      # other success statuses, with the same response (e.g. 206 for a Range)
    response: dict | str = "object"  # a schema, or a component name
    query: list[dict] = field(default_factory=list)
    public: bool = False
    csv: bool = False
    query_token: bool = False       # ?token= is taken as well as the Authorization header (links, <img src>)
    max_body: int = MAX_BODY
    content: str = "application/json"  # the success response's media type
    errors: tuple[int, ...] = (400, 401, 403, 404, 409)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def validator(self) -> Draft202012Validator | None:
        return Draft202012Validator(self.body) if self.body is not None else None


# -- helpers ------------------------------------------------------------------------------------------------

def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


async def _session(ctx: Ctx):
    return await ctx.app[SESSIONS].get(ctx.param("session_id"))


def _require_admin(ctx: Ctx) -> None:
    if not ctx.principal.admin:
        raise PermissionDenied("only an API key (admin) may do this")


async def _require_staff(ctx: Ctx, session) -> str:
    role = await roomhooks.staff_role(ctx.app, ctx.principal, session)
    if role is None:
        raise PermissionDenied("only the session's instructor, its moderators or an admin may do this")
    return role


async def _require_reader(ctx: Ctx, session) -> None:
    """Admins, staff, and tokens for the session's own room may read the session."""
    if ctx.principal.room == session.room or await roomhooks.staff_role(ctx.app, ctx.principal, session):
        return
    raise PermissionDenied(f"this token is not for room {session.room!r}")


def _session_out(rec) -> dict:
    return rec.public()


# -- sessions -----------------------------------------------------------------------------------------------

async def create_session(ctx: Ctx):
    return await ctx.app[SESSIONS].create(ctx.principal.actor, ctx.body)


async def list_sessions(ctx: Ctx):
    q = ctx.request.query
    filters: dict[str, Any] = {}
    if "status" in q:
        filters["status"] = q.getall("status")
    if "type" in q:
        filters["type"] = q["type"]
    try:
        filters["limit"] = max(1, min(500, int(q.get("limit", 200))))
        filters["offset"] = max(0, min(MAX_OFFSET, int(q.get("offset", 0))))
    except ValueError:
        raise InvalidInput("limit and offset must be whole numbers") from None
    p = ctx.principal
    if p.admin:
        if "instructor" in q:
            filters["instructor"] = q["instructor"]
        return await ctx.app[SESSIONS].list(**filters)
    if p.role == "instructor" and p.room == "*":
        return await ctx.app[SESSIONS].list(instructor=p.identity, **filters)
    # A room token sees the session of its room (and an instructor's own sessions).
    rec = await ctx.app[STORE].sessions.get_by_room(p.room) if p.room and p.room != "*" else None
    out = [rec] if rec is not None else []
    if p.role == "instructor":
        out += [s for s in await ctx.app[SESSIONS].list(instructor=p.identity, **filters)
                if rec is None or s.id != rec.id]
    return out


async def get_session(ctx: Ctx):
    rec = await _session(ctx)
    await _require_reader(ctx, rec)
    return rec


async def update_session(ctx: Ctx):
    return await ctx.app[SESSIONS].update(ctx.principal.actor, ctx.param("session_id"), ctx.body)


async def start_session(ctx: Ctx):
    return await ctx.app[SESSIONS].start(ctx.principal.actor, ctx.param("session_id"))


async def end_session(ctx: Ctx):
    return await ctx.app[SESSIONS].end(ctx.principal.actor, ctx.param("session_id"))


async def cancel_session(ctx: Ctx):
    return await ctx.app[SESSIONS].cancel(ctx.principal.actor, ctx.param("session_id"))


async def mint_session_token(ctx: Ctx):
    session = await _session(ctx)
    p = ctx.principal
    if not (p.admin or p.identity == session.instructor):
        raise PermissionDenied("only the session's instructor or an admin may mint join tokens")
    body = ctx.body
    role = body.get("role", "student")
    if role == "instructor" and body["identity"] != session.instructor and not p.admin:
        raise PermissionDenied("only an admin may mint an instructor token for someone else")
    if session.status in ("ended", "cancelled"):
        raise InvalidInput(f"session is {session.status}; nobody can join it any more")
    can_publish = body.get("can_publish")
    if can_publish is None and role == "student":
        can_publish = bool(session.features.get("students_may_publish"))
    if role == "viewer" and can_publish:
        raise InvalidInput("a viewer token cannot carry can_publish")
    if role == "moderator":
        await ctx.app[SESSIONS].name_moderator(p.actor, session.id, body["identity"])
    return join_link(ctx.app[SETTINGS], session.room, body["identity"], role, name=body.get("name", ""),
                     ttl=body.get("ttl", 6 * 3600), can_publish=can_publish)


async def list_participants(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    room = ctx.app[ROOMS].rooms.get(session.room)
    live = {p.identity: p.describe() for p in room.participants.values()} if room else {}
    out = []
    for iv in await ctx.app[SESSIONS].present(session.id):
        out.append({"identity": iv.identity, "name": iv.name, "role": iv.role, "joined_at": iv.joined_at,
                    "connections": iv.connections, "live": live.pop(iv.identity, None)})
    for identity, desc in live.items():  # connected, but presence not recorded (e.g. WHIP)
        out.append({"identity": identity, "name": desc["name"], "role": desc["role"], "joined_at": None,
                    "connections": 1, "live": desc})
    return {"session_id": session.id, "room": session.room, "status": session.status,
            "seats_taken": await ctx.app[STORE].sessions.seats_taken(session.id),
            "capacity": session.capacity, "participants": out}


async def get_attendance(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    report = await ctx.app[SESSIONS].attendance(session.id)
    fmt = ctx.request.query.get("format")
    if fmt not in (None, "json", "csv"):
        raise InvalidInput("format must be json or csv")
    if fmt == "csv" or (fmt is None and "text/csv" in ctx.request.headers.get("Accept", "")):
        return web.Response(text=report.to_csv(), content_type="text/csv", charset="utf-8", headers={
            "Content-Disposition": f'attachment; filename="attendance-{session.room}.csv"'})
    return report.to_json()


# -- moderation ---------------------------------------------------------------------------------------------

async def list_moderators(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    return {"instructor": session.instructor, "moderators": await ctx.app[SESSIONS].moderators(session.id)}


async def add_moderator(ctx: Ctx):
    sid = ctx.param("session_id")
    await ctx.app[SESSIONS].name_moderator(ctx.principal.actor, sid, ctx.body["identity"])
    return {"instructor": (await ctx.app[SESSIONS].get(sid)).instructor,
            "moderators": await ctx.app[SESSIONS].moderators(sid)}


async def remove_moderator(ctx: Ctx):
    sid = ctx.param("session_id")
    if not await ctx.app[SESSIONS].remove_moderator(ctx.principal.actor, sid, ctx.param("identity")):
        raise NotFound(f"{ctx.param('identity')} is not a moderator of this session")
    return web.Response(status=204)


async def list_bans(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    return await ctx.app[STORE].sessions.bans(session.id)


async def add_ban(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    await ctx.app[SESSIONS].ban(ctx.principal.actor, session.id, ctx.body["identity"],
                                ctx.body.get("reason", ""))
    return await ctx.app[STORE].sessions.bans(session.id)


async def remove_ban(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    if not await ctx.app[SESSIONS].unban(ctx.principal.actor, session.id, ctx.param("identity")):
        raise NotFound(f"{ctx.param('identity')} is not banned from this session")
    return web.Response(status=204)


async def remove_participant(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    target = ctx.param("identity")
    if target == session.instructor:
        raise PermissionDenied("the session's instructor cannot be removed")
    await roomhooks.remove(ctx.app, session.room, target, by=ctx.principal.identity,
                           reason=ctx.request.query.get("reason", ""))
    return web.Response(status=204)


async def mute_participant(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    target = ctx.param("identity")
    if target == session.instructor and not ctx.principal.admin and ctx.principal.identity != target:
        raise PermissionDenied("the session's instructor cannot be muted by a moderator")
    muted = await roomhooks.mute(ctx.app, session.room, target, (ctx.body or {}).get("track_id"),
                                 by=ctx.principal.identity)
    return {"identity": target, "muted": muted}


# -- feedback -----------------------------------------------------------------------------------------------

async def post_feedback(ctx: Ctx):
    session = await _session(ctx)
    if ctx.principal.room != session.room:
        raise PermissionDenied(f"feedback comes from a token for the session's room {session.room!r}")
    rec = await feedback_mod.submit(ctx.app[STORE], session, ctx.principal.actor, ctx.body,
                                    now=ctx.app[SESSIONS].clock())
    return rec.to_dict()


async def get_feedback(ctx: Ctx):
    session = await _session(ctx)
    await _require_staff(ctx, session)
    return (await feedback_mod.report(ctx.app[STORE], [session]))[0]


async def list_feedback(ctx: Ctx):
    p = ctx.principal
    if not (p.admin or p.role == "instructor"):
        raise PermissionDenied("feedback reports are for instructors (their own sessions) and admins")
    try:
        limit = max(1, min(200, int(ctx.request.query.get("limit", 50))))
    except ValueError:
        raise InvalidInput("limit must be a whole number") from None
    sessions = await ctx.app[SESSIONS].list(instructor=None if p.admin else p.identity,
                                            status=["live", "ended"], limit=500)
    sessions = sorted(sessions, key=lambda s: s.actual_start or s.created_at, reverse=True)[:limit]
    return {"sessions": await feedback_mod.report(ctx.app[STORE], sessions)}


# -- tutoring -----------------------------------------------------------------------------------------------

def _tutoring_role(p: Principal) -> str:
    if p.admin or p.role == "instructor":
        return "instructor"
    if p.role == "student":
        return "student"
    raise PermissionDenied(f"tutoring is for students and instructors, not {p.role}s")


async def request_tutoring(ctx: Ctx):
    if ctx.principal.role != "student":
        raise PermissionDenied("only students may ask for tutoring")
    return await ctx.app[TUTORING].request(ctx.principal.actor, ctx.body or {})


async def tutoring_dashboard(ctx: Ctx):
    p = ctx.principal
    role = _tutoring_role(p)
    tutoring = ctx.app[TUTORING]
    view = await (tutoring.instructor_view(p.actor) if role == "instructor" else tutoring.student_view(p.actor))
    return {"role": role, "identity": p.identity, **view}


async def dashboard_json(ctx: Ctx):
    return await tutoring_dashboard(ctx)


async def get_tutoring(ctx: Ctx):
    _tutoring_role(ctx.principal)
    return await ctx.app[TUTORING].get(ctx.principal.actor, ctx.param("request_id"))


async def accept_tutoring(ctx: Ctx):
    p = ctx.principal
    if p.role != "instructor" and not p.admin:
        raise PermissionDenied("only instructors may accept tutoring requests")
    rec, session = await ctx.app[TUTORING].accept(p.actor, ctx.param("request_id"))
    return {"request": rec.to_dict(), "session": session.public(),
            "join": join_link(ctx.app[SETTINGS], session.room, p.identity, "instructor", name=p.name)}


async def reject_tutoring(ctx: Ctx):
    p = ctx.principal
    if p.role != "instructor" and not p.admin:
        raise PermissionDenied("only instructors may reject tutoring requests")
    return await ctx.app[TUTORING].reject(p.actor, ctx.param("request_id"), (ctx.body or {}).get("reason", ""))


async def end_tutoring(ctx: Ctx):
    _tutoring_role(ctx.principal)
    return await ctx.app[TUTORING].end(ctx.principal.actor, ctx.param("request_id"))


async def cancel_tutoring(ctx: Ctx):
    if ctx.principal.role != "student" and not ctx.principal.admin:
        raise PermissionDenied("only the student who asked may cancel a request")
    return await ctx.app[TUTORING].cancel(ctx.principal.actor, ctx.param("request_id"))


async def join_tutoring(ctx: Ctx):
    p = ctx.principal
    _tutoring_role(p)
    rec = await ctx.app[TUTORING].get(p.actor, ctx.param("request_id"))
    if p.identity not in (rec.student, rec.instructor):
        raise PermissionDenied("only the student and the instructor of this request may join its room")
    room = await ctx.app[TUTORING].room_for(p.actor, rec.id)
    role = "student" if p.identity == rec.student else "instructor"
    return join_link(ctx.app[SETTINGS], room, p.identity, role, name=p.name, can_publish=True)


# -- webhooks and API keys (admin) --------------------------------------------------------------------------

async def list_webhooks(ctx: Ctx):
    _require_admin(ctx)
    return [h.public() for h in await ctx.app[WEBHOOKS].list_webhooks()]


async def create_webhook(ctx: Ctx):
    _require_admin(ctx)
    hook = await ctx.app[WEBHOOKS].add_webhook(ctx.body["url"], ctx.body.get("events", ["*"]),
                                               ctx.body.get("secret"))
    return {**hook.public(), "secret": hook.secret}


async def get_webhook(ctx: Ctx):
    _require_admin(ctx)
    hook = await ctx.app[STORE].webhooks.get(ctx.param("webhook_id"))
    if hook is None:
        raise NotFound(f"webhook {ctx.param('webhook_id')!r} does not exist")
    deliveries = await ctx.app[STORE].webhooks.deliveries(webhook_id=hook.id, limit=50)
    return {**hook.public(), "deliveries": [
        {k: getattr(d, k) for k in ("id", "event", "attempts", "next_attempt_at", "delivered_at",
                                    "last_error", "created_at")} for d in deliveries]}


async def delete_webhook(ctx: Ctx):
    _require_admin(ctx)
    await ctx.app[WEBHOOKS].remove_webhook(ctx.param("webhook_id"))
    return web.Response(status=204)


async def list_keys(ctx: Ctx):
    _require_admin(ctx)
    return await ctx.app[KEYRING].list()


async def create_key(ctx: Ctx):
    _require_admin(ctx)
    key, secret = await ctx.app[KEYRING].create((ctx.body or {}).get("key"))
    return {"key": key, "secret": secret}


async def revoke_key(ctx: Ctx):
    _require_admin(ctx)
    await ctx.app[KEYRING].revoke(ctx.param("key"))
    return web.Response(status=204)


async def node_status(ctx: Ctx):
    _require_admin(ctx)
    return ctx.app[DRAIN].status()


async def drain_node(ctx: Ctx):
    _require_admin(ctx)
    return await ctx.app[DRAIN].start(float((ctx.body or {}).get("deadline", DEFAULT_DEADLINE_S)))


async def openapi_document(ctx: Ctx):
    from signaling.api.openapi import document
    return document(ctx.app)


# -- the table ----------------------------------------------------------------------------------------------

S = "/api/sessions/{session_id}"
T = "/api/tutoring/{request_id}"
OWNER = "admin, or the session's instructor"
STAFF = "admin, the session's instructor or a moderator"
LIST = {"type": "array", "items": {"type": "object"}}

TOKEN_BODY = {
    "type": "object",
    "properties": {"identity": _IDENT, "name": {"type": "string", "maxLength": 200},
                   "role": {"enum": list(PARTICIPANT_ROLES)},
                   "ttl": {"type": "integer", "minimum": 60, "maximum": 7 * 86400},
                   "can_publish": {"type": "boolean"}},
    "required": ["identity"], "additionalProperties": False,
}
IDENTITY_BODY = {"type": "object", "properties": {"identity": _IDENT}, "required": ["identity"],
                 "additionalProperties": False}
BAN_BODY = {"type": "object", "properties": {"identity": _IDENT, "reason": {"type": "string", "maxLength": 500}},
            "required": ["identity"], "additionalProperties": False}
MUTE_BODY = {"type": "object", "properties": {"track_id": {"type": "string", "minLength": 1, "maxLength": 64}},
             "additionalProperties": False}
REJECT_BODY = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 1000}},
               "additionalProperties": False}
WEBHOOK_BODY = {
    "type": "object",
    "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2000},
                   "events": {"type": "array", "minItems": 1, "items": {"enum": ["*", *WEBHOOK_EVENTS]}},
                   "secret": {"type": "string", "minLength": 16, "maxLength": 200}},
    "required": ["url"], "additionalProperties": False,
}
DRAIN_BODY = {"type": "object", "properties": {"deadline": {"type": "number", "minimum": 0,
                                                           "maximum": MAX_DEADLINE_S}},
              "additionalProperties": False}
NODE_STATUS = {
    "type": "object",
    "properties": {"node": {"type": "string"}, "draining": {"type": "boolean"},
                   "elapsed_s": {"type": ["number", "null"]}, "deadline_in_s": {"type": ["number", "null"]},
                   "rooms": {"type": "object", "additionalProperties": {"type": "integer"}},
                   "participants": {"type": "integer"}, "moved": {"type": "integer"},
                   "recordings": {"type": "integer"}},
    "required": ["node", "draining", "rooms", "participants", "recordings"],
}
KEY_BODY = {"type": "object", "properties": {"key": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{3,128}$"}},
            "additionalProperties": False}
LIST_QUERY = [{"name": "status", "schema": {"enum": ["scheduled", "live", "ended", "cancelled"]}},
              {"name": "type", "schema": {"type": "string"}},
              {"name": "instructor", "schema": {"type": "string"}, "description": "admins only"},
              {"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
              {"name": "offset", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}}]

OPS: list[Op] = [
    Op("GET", "/api/openapi.json", openapi_document, "This OpenAPI document", "meta", "anyone", public=True,
       errors=()),
    Op("POST", "/api/sessions", create_session, "Create a session", "sessions", "admin or an instructor",
       body=sessions_mod.CREATE_SCHEMA, status=201, response="Session"),
    Op("GET", "/api/sessions", list_sessions, "List sessions", "sessions",
       "admin: all; instructor ('*' token): their own; a room token: its room's session",
       response={"type": "array", "items": {"$ref": "#/components/schemas/Session"}}, query=LIST_QUERY),
    Op("GET", S, get_session, "Get a session", "sessions", "admin, staff, or a token for the session's room",
       response="Session"),
    Op("PATCH", S, update_session, "Update a session", "sessions", OWNER, body=sessions_mod.UPDATE_SCHEMA,
       response="Session"),
    Op("POST", S + "/start", start_session, "Start (scheduled → live)", "sessions", OWNER, response="Session"),
    Op("POST", S + "/end", end_session, "End (live → ended); attendance becomes final", "sessions", OWNER,
       response="Session"),
    Op("POST", S + "/cancel", cancel_session, "Cancel (scheduled → cancelled)", "sessions", OWNER,
       response="Session"),
    Op("POST", S + "/tokens", mint_session_token, "Mint a join token for the session's room", "sessions",
       OWNER + " (instructor tokens for others: admin only); a moderator token also names the moderator",
       body=TOKEN_BODY, status=201, response="JoinLink"),
    Op("GET", S + "/participants", list_participants, "Who is in the session now", "participants", STAFF),
    Op("GET", S + "/attendance", get_attendance, "Attendance (JSON, or CSV with Accept: text/csv or "
       "?format=csv)", "participants", STAFF, csv=True,
       query=[{"name": "format", "schema": {"enum": ["json", "csv"]}}]),
    Op("DELETE", S + "/participants/{identity}", remove_participant, "Remove a participant (they get `left`)",
       "moderation", STAFF, status=204, query=[{"name": "reason", "schema": {"type": "string"}}]),
    Op("POST", S + "/participants/{identity}/mute", mute_participant,
       "Mute a participant's track (or all their tracks): the server stops forwarding it", "moderation", STAFF,
       body=MUTE_BODY, body_required=False),
    Op("GET", S + "/moderators", list_moderators, "List moderators", "moderation", STAFF),
    Op("POST", S + "/moderators", add_moderator, "Name a moderator", "moderation", OWNER, body=IDENTITY_BODY,
       status=201),
    Op("DELETE", S + "/moderators/{identity}", remove_moderator, "Remove a moderator", "moderation", OWNER,
       status=204),
    Op("GET", S + "/bans", list_bans, "List bans", "moderation", STAFF, response=LIST),
    Op("POST", S + "/bans", add_ban, "Ban a participant (disconnects them; they cannot come back)",
       "moderation", STAFF + " (a moderator cannot ban a moderator)", body=BAN_BODY, status=201, response=LIST),
    Op("DELETE", S + "/bans/{identity}", remove_ban, "Lift a ban", "moderation", STAFF, status=204),
    Op("POST", S + "/feedback", post_feedback, "Rate the session 1-5 with an optional comment (sending again "
       "replaces it)", "feedback", "a token for the session's room whose holder took part, not the instructor; "
       "once the session is live or ended", body=feedback_mod.SCHEMA, response="Feedback"),
    Op("GET", S + "/feedback", get_feedback, "The session's ratings and comments, with a summary", "feedback",
       STAFF, response="FeedbackReport"),
    Op("GET", "/api/feedback", list_feedback, "Feedback on my live and ended sessions (admin: everyone's), "
       "newest sessions first", "feedback", "an instructor or admin",
       response={"type": "object", "properties": {"sessions": {
           "type": "array", "items": {"$ref": "#/components/schemas/FeedbackReport"}}}},
       query=[{"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}]),
    Op("POST", "/api/tutoring", request_tutoring, "Ask for 1:1 tutoring", "tutoring", "a student",
       body=tutoring_mod.REQUEST_SCHEMA, body_required=False, status=201, response="TutoringRequest"),
    Op("GET", "/api/tutoring", tutoring_dashboard, "Dashboard JSON: my requests (student) or the queue and "
       "my sessions (instructor), with counts", "tutoring", "a student, an instructor or admin"),
    Op("GET", "/api/dashboard", dashboard_json, "Same as GET /api/tutoring (the dashboard page's JSON)",
       "tutoring", "a student, an instructor or admin"),
    Op("GET", T, get_tutoring, "Get a tutoring request", "tutoring",
       "its student, instructors, or admin", response="TutoringRequest"),
    Op("POST", T + "/accept", accept_tutoring, "Accept: creates a live tutoring session; returns the "
       "instructor's join link (the student's comes over /ws/notify or GET .../join)", "tutoring",
       "an instructor or admin"),
    Op("POST", T + "/reject", reject_tutoring, "Reject with a reason", "tutoring", "an instructor or admin",
       body=REJECT_BODY, body_required=False, response="TutoringRequest"),
    Op("POST", T + "/end", end_tutoring, "End: records the duration and ends the session", "tutoring",
       "its student, its instructor, or admin", response="TutoringRequest"),
    Op("POST", T + "/cancel", cancel_tutoring, "Withdraw a pending request", "tutoring", "its student",
       response="TutoringRequest"),
    Op("GET", T + "/join", join_tutoring, "A join link for an accepted request's room", "tutoring",
       "its student or its instructor", response="JoinLink"),
    Op("GET", "/api/webhooks", list_webhooks, "List webhooks", "webhooks", "admin", response=LIST),
    Op("POST", "/api/webhooks", create_webhook, "Add a webhook (the secret is shown once)", "webhooks",
       "admin", body=WEBHOOK_BODY, status=201),
    Op("GET", "/api/webhooks/{webhook_id}", get_webhook, "A webhook and its latest deliveries", "webhooks",
       "admin"),
    Op("DELETE", "/api/webhooks/{webhook_id}", delete_webhook, "Remove a webhook", "webhooks", "admin",
       status=204),
    Op("GET", "/api/keys", list_keys, "List API keys (without secrets)", "keys", "admin", response=LIST),
    Op("POST", "/api/keys", create_key, "Create an API key (the secret is shown once)", "keys", "admin",
       body=KEY_BODY, body_required=False, status=201),
    Op("DELETE", "/api/keys/{key}", revoke_key, "Revoke an API key", "keys", "admin", status=204),
    Op("GET", "/api/node", node_status, "This node: whether it drains, what is left on it", "node", "admin",
       response=NODE_STATUS),
    Op("POST", "/api/node/drain", drain_node, "Drain this node: no new joins, its participants sent to other "
       "nodes, exit when empty or at `deadline` seconds (default 60); again: only brings the deadline closer",
       "node", "admin", body=DRAIN_BODY, body_required=False, response=NODE_STATUS),
    # The classroom's data over REST (signaling/classroom_api.py, docs/interactive.md).
    Op("GET", "/api/rooms/{room}/chat", classroom_api.get_chat, "Chat history of a room's classroom, newest first",
       "classroom", classroom_api.READERS, query_token=True, errors=(400, 401, 403), query=[
           classroom_api.query("before", "only messages with a smaller id (paging)", {"type": "integer"}),
           classroom_api.query("limit", "how many (1-500, default 100)",
                               {"type": "integer", "minimum": 1, "maximum": 500})]),
    Op("GET", "/api/rooms/{room}/whiteboard.png", classroom_api.get_whiteboard_png,
       "The room's current whiteboard as a PNG", "classroom", classroom_api.READERS, query_token=True,
       content="image/png", errors=(400, 401, 403), query=[
           classroom_api.query("width", "pixels (16-4096, default 1280)", {"type": "integer"}),
           classroom_api.query("height", "pixels (16-4096, default 720)", {"type": "integer"})]),
    Op("POST", "/api/quiz/banks", classroom_api.post_quiz_bank,
       "Import a quiz question bank (JSON as for `stoa quiz import`)", "classroom", "admin or an instructor",
       body=classroom_api.BANK_BODY, max_body=classroom_api.MAX_BANK_BYTES, status=201, errors=(400, 401, 403)),
    # Recordings (signaling/recordings_api.py, docs/recording.md). Who may see one: recorder.access.
    Op("POST", "/api/rooms/{room}/recording", rec_api.start_stop_recording,
       "Start (201) or stop (200) recording the room", "recordings",
       "the room's instructors and moderators, or admin", body=rec_api.START_STOP_BODY, status=201, also=(200,),
       response="Recording", query_token=True, errors=(400, 401, 403, 409, 500, 503, 507)),
    Op("GET", "/api/rooms/{room}/recording", rec_api.recording_status, "Whether the room is being recorded",
       "recordings", "a token for the room, an operator, or admin", query_token=True, errors=(401, 403),
       response=rec_api.STATUS),
    Op("GET", "/api/recordings", rec_api.list_recordings, "The recordings the caller may see, newest first",
       "recordings", "anyone authenticated (each sees what they may)", query=rec_api.LIST_QUERY,
       query_token=True, errors=(400, 401), response={"type": "object", "properties": {"recordings": {
           "type": "array", "items": {"$ref": "#/components/schemas/Recording"}}}}),
    Op("GET", "/api/recordings/{id}", rec_api.get_recording, "A recording, its files and views", "recordings",
       rec_api.MAY_SEE, query_token=True, errors=(401, 403, 404), response="Recording"),
    Op("POST", "/api/recordings/{id}/export", rec_api.export_recording,
       "Export a composite (runs in the background; poll the job)", "recordings", "an operator or admin",
       body=rec_api.EXPORT_BODY, body_required=False, status=202, query_token=True, response=rec_api.JOB),
    Op("POST", "/api/recordings/{id}/progress", rec_api.post_progress, "Record the caller's watch progress",
       "recordings", rec_api.MAY_SEE, body=rec_api.PROGRESS_BODY, query_token=True, errors=(400, 401, 403, 404),
       response=rec_api.VIEW),
    Op("GET", "/api/jobs/{id}", rec_api.get_job, "An export job's status and progress", "recordings",
       "an operator or admin", query_token=True, errors=(401, 403, 404), response=rec_api.JOB),
    Op("GET", "/recordings/{id}/files/{name}", rec_api.download_file,
       "One file of a recording (Range requests get 206)", "recordings", rec_api.MAY_SEE, also=(206,),
       query_token=True, content="video/*", errors=(401, 403, 404, 410)),
]


def _serialize(value: Any) -> Any:
    if hasattr(value, "public"):
        return value.public()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [_serialize(v) for v in value]
    return value


def make_handler(op: Op):
    validator = op.validator()

    async def handle(request: web.Request) -> web.StreamResponse:
        # Errors are problem+json wherever the op is mounted (a recording's files are outside /api/).
        return await answered(request, run)

    async def run(request: web.Request) -> web.StreamResponse:
        principal = None if op.public else await authenticate(request, request.app[KEYRING],
                                                              allow_query_token=op.query_token)
        body = None
        if validator is not None:
            raw = await _read_body(request, required=op.body_required, limit=op.max_body)
            if raw is not ABSENT:
                # The whole body, `null` and arrays included: a handler only ever sees a valid one.
                errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
                if errors:
                    err = errors[0]
                    where = "/".join(str(p) for p in err.absolute_path)
                    raise Problem(400, "invalid_input", f"request body: {where + ': ' if where else ''}"
                                  f"{err.message[:300]}")
                body = raw
        result = await op.handler(Ctx(request, principal, body))
        if isinstance(result, web.StreamResponse):
            return result
        return _json(_serialize(result), status=op.status)

    handle.__name__ = op.operation_id
    return handle


ABSENT = object()  # no body at all, as opposed to the JSON value null


async def _read_body(request: web.Request, *, required: bool, limit: int = MAX_BODY) -> Any:
    """The parsed JSON body (any JSON value, null included), or ABSENT when there is none."""
    if not request.can_read_body:
        if required:
            raise Problem(400, "invalid_input", "this request needs a JSON body")
        return ABSENT
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "too_large", f"the body is larger than {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise Problem(413, "too_large", f"the body is larger than {limit} bytes")
    if not raw.strip():
        if required:
            raise Problem(400, "invalid_input", "this request needs a JSON body")
        return ABSENT
    if request.content_type not in ("application/json", "application/merge-patch+json"):
        raise Problem(415, "unsupported_media_type", "send the body as application/json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad_json", f"the body is not valid JSON: {exc}") from None


def add_routes(app: web.Application) -> None:
    for op in OPS:
        app.router.add_route(op.method, op.path, make_handler(op))
