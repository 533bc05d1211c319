"""Page handlers: the room page, and in --dev mode a form that mints a token and opens a room."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from signaling.api.identity import active_api_keys
from signaling.auth import TokenError, mint_token, verify_token
from signaling.routing import elsewhere, remote_home
from stoa.appkeys import CLUSTER, SETTINGS

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
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        return web.json_response({"status": "ready"})
    health = cluster.health()
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
    if role not in ("instructor", "student", "viewer") or not name:
        raise web.HTTPBadRequest(text="give a name and pick a role")
    identity = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    token = mint_token(settings.api_key, settings.api_secret, room=room, identity=identity,
                       role=role, name=name)
    raise web.HTTPFound(f"/rooms/{room}?token={token}")


async def room_page(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    token = request.query.get("token", "")
    try:
        grants = verify_token(token, await active_api_keys(request.app), room=room)
    except TokenError as exc:
        return aiohttp_jinja2.render_template("error.html", request, {"message": exc.reason}, status=401)
    home = await remote_home(request.app, room)
    if home is not None:  # the room lives on another node: the page and its WebSocket go there
        raise web.HTTPTemporaryRedirect(elsewhere(home, request.rel_url.raw_path, request.rel_url.raw_query_string))
    return aiohttp_jinja2.render_template("room.html", request, {
        "room": room, "token": token, "grants": grants,
    })
