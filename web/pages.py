"""Page handlers: the room page, and in --dev mode a form that mints a token and opens a room."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from shared.appkeys import DRAIN, PLACEMENT, SETTINGS, active_api_keys
from shared.auth import TokenError, mint_token, verify_token
from shared.roles import SELF_JOIN_ROLES
from classroom.errors import Conflict
from classroom.sessions import SESSIONS, Actor
from recorder.service import RECORDINGS
from storage.store import STORE

STATIC = Path(__file__).parent / "static"
ROOM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_post("/dev/join", dev_join)
    app.router.add_get("/rooms/{room}", room_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_static("/static/", STATIC, append_version=True)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new joins: 503 while this node's Redis is not answering or it drains (its rooms go on)."""
    placement = request.app.get(PLACEMENT)
    drain = request.app.get(DRAIN)
    if placement is None:
        if drain is not None and drain.draining:
            return web.json_response({"status": "degraded", "draining": True}, status=503)
        return web.json_response({"status": "ready"})
    health = placement.health()
    ready = health["redis"] == "ok" and not health["draining"]
    return web.json_response({"status": "ready" if ready else "degraded", **health}, status=200 if ready else 503)


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request):
    return {"dev": request.app[SETTINGS].dev}


async def dev_join(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.dev:
        raise web.HTTPNotFound(text="the token form exists only in --dev mode")
    form = await request.post()
    room = str(form.get("room", "")).strip()
    name = str(form.get("name", "")).strip()[:64]
    role = str(form.get("role", "student"))
    if not ROOM_NAME.match(room):
        raise web.HTTPBadRequest(text="room names use letters, digits, '.', '_' and '-' (1-64)")
    if role not in SELF_JOIN_ROLES or not name:
        raise web.HTTPBadRequest(text="give a name and pick a role")
    identity = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    title = str(form.get("title", "")).strip()[:200]
    if role == "instructor":
        await _dev_session(request.app, room, title or room, Actor(identity, name, instructor=True))
    token = mint_token(settings.api_key, settings.api_secret, room=room, identity=identity,
                       role=role, name=name)
    raise web.HTTPFound(f"/rooms/{room}?token={token}")


async def _dev_session(app: web.Application, room: str, title: str, actor: Actor) -> None:
    """An instructor's dev-form room becomes a live session with that title (so pages show the title, the
    review page has attendance, participants can leave feedback), unless the room has a session already or
    people are in it as an ad hoc room (they would end up in another classroom)."""
    sessions = app[SESSIONS]
    live = app[RECORDINGS].rooms.find(room) if RECORDINGS in app else None
    if await app[STORE].sessions.get_by_room(room) is not None or (live is not None and not live.is_empty()):
        return
    features = {"chat": True, "qa": True, "polls": True, "whiteboard": True, "quiz": True}
    try:
        rec = await sessions.create(actor, {"title": title, "room": room, "features": features})
    except Conflict:  # a second tab got there first
        return
    await sessions.start(actor, rec.id)


async def room_page(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    token = request.query.get("token", "")
    try:
        grants = verify_token(token, await active_api_keys(request.app), room=room)
    except TokenError as exc:
        title = {"expired": "This link has expired", "other_room": "This link is for another class"}.get(exc.kind)
        return aiohttp_jinja2.render_template("error.html", request, {"message": exc.reason, "title": title},
                                              status=401)
    session = await request.app[STORE].sessions.get_by_room(room)
    placement = request.app.get(PLACEMENT)
    home = await placement.elsewhere(room, request.rel_url.raw_path, request.rel_url.raw_query_string,
                                     grants=grants) if placement is not None else None
    if home is not None:  # the room lives on another node: the page and its WebSocket go there
        raise web.HTTPTemporaryRedirect(home)
    return aiohttp_jinja2.render_template("room.html", request, {
        "room": room, "token": token, "grants": grants, "recorded": await recording_notice(request.app, room),
        "title": session.title if session else room, "session_id": session.id if session else None,
        "simulcast": request.app[SETTINGS].simulcast,
        "screen_simulcast": request.app[SETTINGS].simulcast and request.app[SETTINGS].screen_simulcast,
    })


async def recording_notice(app: web.Application, room: str) -> str | None:
    """What a joiner is told before joining: "recording" (it records now), "recorded" (it will: the
    session's recording flag or `record_all`), or None."""
    manager = app.get(RECORDINGS)
    if manager is None:
        return None
    if manager.status(room) is not None:
        return "recording"
    if app[SETTINGS].record_all:
        return "recorded"
    session = await app[STORE].sessions.get_by_room(room) if app.get(STORE) is not None else None
    if session is None or session.status not in ("scheduled", "live"):
        return None  # an ended session's page says so; nothing will be recorded
    return "recorded" if (session.features or {}).get("recording") else None
