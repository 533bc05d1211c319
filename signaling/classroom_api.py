"""The interactive layer's data over REST: chat history paging, the whiteboard as a PNG, quiz bank import.

Handlers of the `OPS` table (signaling/api/routes.py): authentication, body validation, problem+json errors
and the OpenAPI document come from there. The session a room's classroom data lives under is the one the
bridge uses: the room's session row when there is one, else a key derived from its name
(classroom_bridge.session_key).
"""

from __future__ import annotations

from aiohttp import web

from classroom.interactive import QuizBankError, board_png, chat_history, import_bank
from signaling.api.problems import Problem
from signaling.classroom_bridge import session_key as bridge_session_key
from storage.store import STORE

MAX_BANK_BYTES = 1024 * 1024
MAX_PNG_SIDE = 4096
READERS = "admin, a token for the room, an operator, or the instructor of the room's session ('*' token)"
BANK_BODY = {"type": ["object", "array"],
             "description": "a list of questions, or {bank, questions}; each question has prompt, choices, "
                            "answer (index) and optional explanation"}


def query(name: str, description: str, schema: dict) -> dict:
    """A query parameter of an Op (documentation: the handler reads and checks it)."""
    return {"name": name, "required": False, "description": description, "schema": schema}


async def _reader(ctx) -> tuple[str, str]:
    """The room and its classroom-data key; Problem(403) unless the caller may read the room
    (Principal.may_read_room: room "*" is no pass to every room)."""
    room = ctx.param("room")
    session = await ctx.app[STORE].sessions.get_by_room(room)
    if not ctx.principal.may_read_room(room, session):
        raise Problem(403, "forbidden", f"this token may not read room {room!r}")
    return room, bridge_session_key(room, session)


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


async def get_chat(ctx) -> dict:
    """{room, messages (newest first), next_before}; page with ?before=<id>&limit=<1..500>."""
    room, key = await _reader(ctx)
    before = _int_param(ctx.request, "before", None, 1, 2**63 - 1)
    limit = _int_param(ctx.request, "limit", 100, 1, 500)
    messages = await chat_history(ctx.app[STORE], key, before_id=before, limit=limit)
    return {"room": room, "messages": messages,
            "next_before": messages[-1]["id"] if len(messages) == limit else None}


async def get_whiteboard_png(ctx) -> web.Response:
    """The board rasterized (?width=&height=, default 1280x720)."""
    _room, key = await _reader(ctx)
    width = _int_param(ctx.request, "width", 1280, 16, MAX_PNG_SIDE)
    height = _int_param(ctx.request, "height", 720, 16, MAX_PNG_SIDE)
    png = await board_png(ctx.app[STORE], key, width, height)
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


async def post_quiz_bank(ctx) -> dict:
    """{bank, count, ids} of the imported questions."""
    principal = ctx.principal
    if not (principal.admin or principal.role == "instructor"):
        raise Problem(403, "forbidden", "only an admin (API key) or an instructor may import quiz banks")
    try:
        return await import_bank(ctx.app[STORE], ctx.body)
    except QuizBankError as exc:
        raise Problem(400, "invalid_input", str(exc)) from None
