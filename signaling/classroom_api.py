"""REST routes for the interactive layer: chat history paging, the whiteboard as a PNG, quiz bank import.

Errors are application/problem+json (signaling.api.problems); callers authenticate like every /api/ route
(signaling.api.identity). The session a room's classroom data lives under is the one the bridge uses:
the room's session row when there is one, else a key derived from its name (classroom_bridge.session_key).
"""

from __future__ import annotations

import json

from aiohttp import web

from classroom.interactive import QuizBankError, board_png, chat_history, import_bank
from shared.appkeys import KEYRING
from signaling.api.identity import Principal, authenticate
from signaling.api.problems import Problem
from signaling.classroom_bridge import session_key as bridge_session_key
from storage.store import STORE

MAX_BANK_BYTES = 1024 * 1024
MAX_PNG_SIDE = 4096


async def _reader(request: web.Request) -> tuple[Principal, str, str]:
    """The caller, the room and its classroom-data key; Problem(403) unless the caller may read the room
    (Principal.may_read_room: room "*" is no pass to every room)."""
    principal = await authenticate(request, request.app[KEYRING], allow_query_token=True)
    room = request.match_info["room"]
    session = await request.app[STORE].sessions.get_by_room(room)
    if not principal.may_read_room(room, session):
        raise Problem(403, "forbidden", f"this token may not read room {room!r}")
    return principal, room, bridge_session_key(room, session)


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, "invalid_input", f"query parameter {name!r} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise Problem(400, "invalid_input", f"query parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


async def get_chat(request: web.Request) -> web.Response:
    """Chat history of a room's classroom, newest first; page with ?before=<id>&limit=<1..500>"""
    _, room, key = await _reader(request)
    before = _int_param(request, "before", None, 1, 2**63 - 1)
    limit = _int_param(request, "limit", 100, 1, 500)
    messages = await chat_history(request.app[STORE], key, before_id=before, limit=limit)
    body = {"room": room, "messages": messages,
            "next_before": messages[-1]["id"] if len(messages) == limit else None}
    return web.json_response(body)


async def get_whiteboard_png(request: web.Request) -> web.Response:
    """The room's current whiteboard rasterized as a PNG (?width=&height=, default 1280x720)"""
    _, _room, key = await _reader(request)
    width = _int_param(request, "width", 1280, 16, MAX_PNG_SIDE)
    height = _int_param(request, "height", 720, 16, MAX_PNG_SIDE)
    png = await board_png(request.app[STORE], key, width, height)
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


async def post_quiz_bank(request: web.Request) -> web.Response:
    """Import a quiz question bank (JSON as for `stoa quiz import`); admin or instructor"""
    principal = await authenticate(request, request.app[KEYRING])
    if not (principal.admin or principal.role == "instructor"):
        raise Problem(403, "forbidden", "only an admin (API key) or an instructor may import quiz banks")
    if request.content_length is not None and request.content_length > MAX_BANK_BYTES:
        raise Problem(413, "too_large", f"the bank is larger than {MAX_BANK_BYTES} bytes")
    raw = await request.content.read(MAX_BANK_BYTES + 1)
    if len(raw) > MAX_BANK_BYTES:
        raise Problem(413, "too_large", f"the bank is larger than {MAX_BANK_BYTES} bytes")
    if request.content_type != "application/json":
        raise Problem(415, "unsupported_media_type", "send the bank as application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, (dict, list)):
        raise Problem(400, "invalid_input", "a quiz bank is a list of questions or {\"bank\", \"questions\"}")
    try:
        result = await import_bank(request.app[STORE], data)
    except QuizBankError as exc:
        raise Problem(400, "invalid_input", str(exc)) from None
    return web.json_response(result, status=201)


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_PROBLEM = {"description": "a problem (application/problem+json) naming what is wrong",
            "content": {"application/problem+json": {"schema": {"type": "object"}}}}
get_chat.openapi = {
    "parameters": [_query("before", "only messages with a smaller id (paging)", {"type": "integer"}),
                   _query("limit", "how many (1-500, default 100)", {"type": "integer", "minimum": 1,
                                                                     "maximum": 500})],
    "responses": {"200": {"description": "{room, messages (newest first), next_before}",
                          "content": {"application/json": {"schema": {"type": "object"}}}},
                  "400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM},
}
get_whiteboard_png.openapi = {
    "parameters": [_query("width", "pixels (16-4096, default 1280)", {"type": "integer"}),
                   _query("height", "pixels (16-4096, default 720)", {"type": "integer"})],
    "responses": {"200": {"description": "the board", "content": {"image/png": {}}},
                  "400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM},
}
post_quiz_bank.openapi = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "description": "a list of questions, or {bank, questions}; each question has prompt, choices, "
                       "answer (index) and optional explanation"}}}},
    "responses": {"201": {"description": "{bank, count, ids}",
                          "content": {"application/json": {"schema": {"type": "object"}}}},
                  "400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM, "413": _PROBLEM, "415": _PROBLEM},
}


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/rooms/{room}/chat", get_chat)
    r.add_get("/api/rooms/{room}/whiteboard.png", get_whiteboard_png)
    r.add_post("/api/quiz/banks", post_quiz_bank)
