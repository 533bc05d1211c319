"""Recording API and the operator review pages. See docs/recording.md ("Operator review").

Who is asking (`identify`):
- admin: `Authorization: Basic base64(key:secret)` with an active API key (revoked keys refused);
- a JWT (`?token=` or `Authorization: Bearer`): role "operator" sees everything; any other role is a room token.
Who may see a recording (`may_view`): admins and operators; otherwise a token of the recording's room, not a
viewer, whose identity took part in the session, when the session has its "recording" feature on.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from jsonschema import Draft202012Validator

from classroom.feedback import report as feedback_report
from classroom.sessions import session_key as classroom_key
from recorder.service import RECORDINGS, RecordingError, RecordingManager
from shared.appkeys import SETTINGS, active_api_keys
from shared.auth import Grants, TokenError, basic_credentials, bearer_token, verify_token
from storage.recordings import RecordingRow
from storage.store import STORE

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
# session_events types the timeline shows (as the interactive layer writes them; dotted names from other writers).
TIMELINE_TYPES = {"chat": "chat", "chat_pin": "chat", "question": "qa", "answer": "qa", "question_feature": "qa",
                  "poll_open": "poll", "poll_close": "poll"}
TIMELINE_PREFIXES = {"chat": "chat", "qa": "qa", "question": "qa", "poll": "poll"}

_START_STOP = Draft202012Validator({
    "type": "object", "properties": {"action": {"enum": ["start", "stop"]}},
    "required": ["action"], "additionalProperties": False})
_EXPORT = Draft202012Validator({
    "type": "object", "properties": {"layout": {"enum": ["grid", "speaker"]}}, "additionalProperties": False})
_PROGRESS = Draft202012Validator({
    "type": "object",
    "properties": {"position": {"type": "number", "minimum": 0},
                   "watched_seconds": {"type": "number", "minimum": 0}},
    "required": ["position", "watched_seconds"], "additionalProperties": False})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/rooms/{room}/recording", api_room_recording)
    r.add_get("/api/rooms/{room}/recording", api_room_recording_status)
    r.add_get("/api/recordings", api_list)
    r.add_get("/api/recordings/{id}", api_get)
    r.add_post("/api/recordings/{id}/export", api_export)
    r.add_post("/api/recordings/{id}/progress", api_progress)
    r.add_get("/api/jobs/{id}", api_job)
    r.add_get("/recordings", page_list)
    r.add_get("/recordings/{id}", page_player)
    r.add_get("/recordings/{id}/files/{name}", download)


# -- errors and identity ---------------------------------------------------------------------

def problem(status: int, detail: str, title: str | None = None) -> web.Response:
    import http

    return web.json_response({"type": "about:blank", "title": title or http.HTTPStatus(status).phrase,
                              "status": status, "detail": detail}, status=status, content_type=PROBLEM)


class Problem(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Caller:
    kind: str                   # "admin" | "operator" | "room"
    identity: str
    grants: Grants | None = None

    @property
    def sees_all(self) -> bool:
        return self.kind in ("admin", "operator")


async def identify(request: web.Request, *, room: str | None = None) -> Caller:
    """The caller, or Problem(401) naming what is missing or wrong. The header is read as on every /api/
    route (shared.auth.basic_credentials, bearer_token)."""
    header = request.headers.get("Authorization", "")
    try:
        basic = basic_credentials(header)
    except TokenError as exc:
        raise Problem(401, exc.reason) from None
    if basic is not None:
        key, secret = basic
        expected = (await active_api_keys(request.app)).get(key)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise Problem(401, "the API key or secret is wrong")
        return Caller("admin", f"admin:{key}")
    token = request.query.get("token") or bearer_token(header)
    if not token:
        raise Problem(401, "no credentials: pass ?token=, Authorization: Bearer <token>, "
                           "or Authorization: Basic with an API key and secret")
    try:
        grants = verify_token(token, await active_api_keys(request.app))
    except TokenError as exc:
        raise Problem(401, exc.reason) from None
    if grants.role == "operator":
        return Caller("operator", grants.identity, grants)
    if room is not None and grants.room != room:
        raise Problem(403, f"this token is for room {grants.room!r}, not {room!r}")
    return Caller("room", grants.identity, grants)


async def may_view(app: web.Application, caller: Caller, row: RecordingRow) -> str | None:
    """None if `caller` may see `row`, else the reason not."""
    if caller.sees_all:
        return None
    grants = caller.grants
    assert grants is not None
    if grants.room != row.room:
        return f"this token is for room {grants.room!r}; the recording is of room {row.room!r}"
    if grants.role == "viewer":
        return "viewer tokens cannot open recordings"
    store = app[STORE]
    session = await store.sessions.get(row.session_id) if row.session_id else None
    if session is None:
        return "this recording belongs to no session, so only operators may see it"
    if not session.features.get("recording"):
        return "the session does not share its recording with participants"
    if grants.identity == session.instructor or await store.sessions.role_of(session.id, grants.identity):
        return None
    if await store.sessions.intervals(session.id, grants.identity):
        return None
    manifest_people = {f.get("participant") for f in (row.files or [])}
    if grants.identity in manifest_people:
        return None
    return f"{grants.identity!r} did not take part in this session"


async def _row_for(request: web.Request) -> tuple[Caller, RecordingRow]:
    caller = await identify(request)
    row = await request.app[RECORDINGS].repo.get(request.match_info["id"])
    if row is None:
        raise Problem(404, f"there is no recording {request.match_info['id']!r}")
    reason = await may_view(request.app, caller, row)
    if reason is not None:
        raise Problem(403, reason)
    return caller, row


async def _json(request: web.Request, validator: Draft202012Validator, *, empty_ok: bool = False) -> dict:
    if empty_ok and not await request.read():
        body: Any = {}
    else:
        try:
            body = await request.json()
        except ValueError:
            raise Problem(400, "the body is not valid JSON") from None
    error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise Problem(400, f"{where}: {error.message}")
    return body


def _handler(fn):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except Problem as exc:
            return problem(exc.status, exc.detail)
        except RecordingError as exc:
            return problem(exc.status, exc.message)
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


BASIC_CHALLENGE = 'Basic realm="Stoa"'


def _page(fn):
    """Pages show problems as HTML. A 401 to a request without a token asks the browser for the admin's
    API key and secret (HTTP Basic); token links (?token=, Bearer) get no challenge, as before."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except Problem as exc:
            response = aiohttp_jinja2.render_template("error.html", request, {"message": exc.detail},
                                                      status=exc.status)
            bearer = request.headers.get("Authorization", "")[:7].lower() == "bearer "
            if exc.status == 401 and not request.query.get("token") and not bearer:
                response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
            return response
    wrapped.__name__ = fn.__name__
    return wrapped


def public(row: RecordingRow) -> dict:
    data = row.to_dict()
    for private in ("directory", "manifest_path", "composite_path"):
        data.pop(private, None)
    data["has_composite"] = bool(row.composite_path)
    return data


# -- API -------------------------------------------------------------------------------------

@_handler
async def api_room_recording(request: web.Request) -> web.Response:
    """POST /api/rooms/{room}/recording {"action": "start"|"stop"}: instructor/moderator of the room, or admin."""
    room = request.match_info["room"]
    caller = await identify(request, room=room)
    if caller.kind != "admin" and not (caller.grants and caller.grants.is_moderator):
        raise Problem(403, "only the room's instructors and moderators (or an admin) start and stop recordings")
    body = await _json(request, _START_STOP)
    manager: RecordingManager = request.app[RECORDINGS]
    if body["action"] == "start":
        row = await manager.start(room, by=caller.identity)
        return web.json_response(public(row), status=201)
    row = await manager.stop(room, reason=f"stopped by {caller.identity}")
    return web.json_response(public(row))


@_handler
async def api_room_recording_status(request: web.Request) -> web.Response:
    """GET /api/rooms/{room}/recording: whether the room is being recorded."""
    room = request.match_info["room"]
    await identify(request, room=room)
    return web.json_response({"room": room, "recording": request.app[RECORDINGS].status(room)})


def _day(value: str) -> tuple[float, float]:
    try:
        start = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise Problem(400, f"date must look like 2026-01-31 (UTC day), got {value[:40]!r}") from None
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


async def _visible(request: web.Request) -> tuple[Caller, list[RecordingRow], dict]:
    caller = await identify(request)
    q = request.query
    filters = {k: q.get(k, "").strip() for k in ("room", "date", "instructor")}
    rows = await request.app[RECORDINGS].repo.list(
        room=filters["room"] or None, day=_day(filters["date"]) if filters["date"] else None,
        instructor=filters["instructor"] or None)
    if not caller.sees_all:
        rows = [r for r in rows if await may_view(request.app, caller, r) is None]
    return caller, rows, filters


@_handler
async def api_list(request: web.Request) -> web.Response:
    """GET /api/recordings?room=&date=YYYY-MM-DD&instructor="""
    _caller, rows, _ = await _visible(request)
    return web.json_response({"recordings": [public(r) for r in rows]})


@_handler
async def api_get(request: web.Request) -> web.Response:
    """GET /api/recordings/{id}: one recording, its files and views."""
    caller, row = await _row_for(request)
    data = public(row)
    views = await request.app[RECORDINGS].repo.views(row.id)
    data["views"] = [v.to_dict() for v in views] if caller.sees_all else [
        v.to_dict() for v in views if v.identity == caller.identity]
    return web.json_response(data)


@_handler
async def api_export(request: web.Request) -> web.Response:
    """POST /api/recordings/{id}/export {"layout": "grid"|"speaker"} → 202 {"job": {...}}; operators/admins."""
    caller = await identify(request)
    if not caller.sees_all:
        raise Problem(403, "only operators and admins export recordings")
    body = await _json(request, _EXPORT, empty_ok=True)
    job = await request.app[RECORDINGS].export(request.match_info["id"], body.get("layout", "grid"))
    return web.json_response({"job": job.to_dict()}, status=202,
                             headers={"Location": f"/api/jobs/{job.id}"})


@_handler
async def api_job(request: web.Request) -> web.Response:
    """GET /api/jobs/{id}: an export job's status and progress."""
    caller = await identify(request)
    if not caller.sees_all:
        raise Problem(403, "only operators and admins see export jobs")
    job = request.app[RECORDINGS].jobs.get(request.match_info["id"])
    if job is None:
        raise Problem(404, f"there is no job {request.match_info['id']!r} (jobs live until the server restarts)")
    return web.json_response({"job": job.to_dict()})


@_handler
async def api_progress(request: web.Request) -> web.Response:
    """POST /api/recordings/{id}/progress {"position": s, "watched_seconds": s}: the caller's watch progress."""
    caller, row = await _row_for(request)
    body = await _json(request, _PROGRESS)
    view = await request.app[RECORDINGS].repo.record_view(
        row.id, caller.identity, position=body["position"], watched_seconds=body["watched_seconds"],
        duration=row.duration_s, now=time.time())
    return web.json_response(view.to_dict())


@_handler
async def download(request: web.Request) -> web.StreamResponse:
    """GET /recordings/{id}/files/{name}: one file of the recording, with Range support (206)."""
    import os

    _caller, row = await _row_for(request)
    name = request.match_info["name"]
    if name not in {f["name"] for f in (row.files or [])} or os.path.basename(name) != name:
        raise Problem(404, f"recording {row.id} has no file {name!r}")
    path = os.path.join(row.directory or "", name)
    if not os.path.isfile(path):
        raise Problem(410, f"file {name!r} of recording {row.id} is gone from disk")
    ctype = "video/mp4" if name.endswith(".mp4") else ("video/webm" if name.endswith(".webm") else "video/x-matroska")
    return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "private, max-age=0"})


# -- pages -----------------------------------------------------------------------------------

def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_duration(seconds: float | None) -> str:
    if not seconds:
        return "0:00"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@_page
async def page_list(request: web.Request) -> web.Response:
    caller, rows, filters = await _visible(request)
    return aiohttp_jinja2.render_template("recordings.html", request, {
        "caller": caller, "rows": rows, "filters": filters, "token": request.query.get("token", ""),
        "fmt_time": _fmt_time, "fmt_duration": _fmt_duration})


def activity_svg(start: float, end: float, events: list, intervals: list, *, buckets: int = 40,
                 width: int = 360, height: int = 90) -> tuple[str, list[dict]]:
    """Inline SVG: events per time bucket (bars) and people present (line). Returns (svg, buckets)."""
    span = max(end - start, 1.0)
    step = span / buckets
    counts = [0] * buckets
    for e in events:
        i = int((e.ts - start) / step)
        if 0 <= i < buckets:
            counts[i] += 1
    present = []
    for i in range(buckets):
        t = start + (i + 0.5) * step
        present.append(sum(1 for iv in intervals if iv.joined_at <= t and (iv.left_at is None or iv.left_at > t)))
    top = max(max(counts, default=0), max(present, default=0), 1)
    bw = width / buckets
    parts = [f'<svg class="activity" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="activity over time">']
    for i, c in enumerate(counts):
        h = c / top * (height - 4)
        parts.append(f'<rect x="{i * bw:.1f}" y="{height - h:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                     f'fill="#4f8cff"><title>{_fmt_duration(i * step)}: {c} events</title></rect>')
    pts = " ".join(f"{(i + 0.5) * bw:.1f},{height - p / top * (height - 4):.1f}" for i, p in enumerate(present))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#f6c343" stroke-width="2"/>')
    parts.append("</svg>")
    data = [{"offset": round(i * step, 3), "events": c, "present": p} for i, (c, p) in enumerate(zip(counts, present))]
    return "".join(parts), data


@_page
async def page_player(request: web.Request) -> web.Response:
    from classroom import attendance
    from markupsafe import Markup

    caller, row = await _row_for(request)
    store = request.app[STORE]
    files = row.files or []
    t0 = min((f["start_time"] for f in files if f.get("start_time") and f.get("kind") != "composite"),
             default=row.started_at)
    end = max(row.ended_at or time.time(), t0 + (row.duration_s or 0))
    report, engagement, session, feedback = None, {}, None, None
    # An ad hoc room (no session row) keeps its classroom history under a key derived from its name; the
    # recording's time span picks this recording's part of it.
    key = row.session_id or classroom_key(row.room, None)
    events = await store.events.list(key, since=row.started_at - 1, until=end + 1, limit=5000)
    intervals = await store.sessions.intervals(row.session_id) if row.session_id else []
    names = {**{f.get("participant"): f.get("participant_name") for f in files if f.get("participant_name")},
             **{iv.identity: iv.name for iv in intervals if iv.name}}
    timeline = await build_timeline(request.app[RECORDINGS].repo, key, events, t0, names=names)
    if row.session_id:
        session = await store.sessions.get(row.session_id)
        if session is not None:
            report = attendance.compute(session, intervals, now=time.time()).to_json()
            staff = caller.identity == session.instructor or (
                await store.sessions.role_of(session.id, caller.identity)) in ("instructor", "moderator")
            if caller.sees_all or staff:  # ratings and comments are for the session's staff
                feedback = (await feedback_report(store, [session]))[0]
        engagement = await store.sessions.engagement(row.session_id)
    svg, chart_data = activity_svg(t0, end, events, intervals)
    chart = Markup(svg) if events or intervals else ""
    playable = [f for f in files if f.get("frames", 1) != 0 and f.get("status") != "empty"]
    playable.sort(key=lambda f: (f["kind"] != "composite", f["kind"] != "video", f["name"]))
    config = {"id": row.id, "token": request.query.get("token", ""), "t0": t0, "duration": row.duration_s or 0,
              "files": [{"name": f["name"], "kind": f["kind"], "participant": f.get("participant"),
                         "label": f.get("label") or f"{f.get('participant')} {f['kind']}",
                         "offset": f.get("offset", 0.0) if f["kind"] != "composite" else 0.0,
                         "url": f"/recordings/{row.id}/files/{f['name']}"} for f in playable],
              "events": timeline, "progressInterval": 5}
    return aiohttp_jinja2.render_template("recordings_player.html", request, {
        "caller": caller, "row": row, "session": session, "timeline": timeline, "report": report,
        "feedback": feedback,
        "engagement": engagement, "chart": chart, "chart_data": chart_data, "config": config,
        "fmt_time": _fmt_time, "fmt_duration": _fmt_duration, "token": request.query.get("token", "")})


def _category(kind: str) -> str | None:
    if kind in TIMELINE_TYPES:
        return TIMELINE_TYPES[kind]
    return TIMELINE_PREFIXES.get(kind.split(".")[0]) if "." in kind else None


async def build_timeline(repo, session_id: str, events: list, t0: float, *,
                         names: dict[str, str] | None = None) -> list[dict]:
    """Chat, Q&A and poll events with their text, at offsets (s) from the recording's start. `actor` is a
    display name: the one stored with the message or question, else from `names` (identity -> name)."""
    names = names or {}
    chosen = [(e, _category(e.type)) for e in events]
    chosen = [(e, c) for e, c in chosen if c is not None]
    payload = lambda e: e.payload if isinstance(e.payload, dict) else {}  # noqa: E731
    texts = await repo.timeline_texts(
        session_id,
        chat_ids={payload(e)["message_id"] for e, c in chosen if c == "chat" and isinstance(payload(e).get("message_id"), int)},
        question_ids={str(payload(e)["question_id"]) for e, c in chosen if c == "qa" and payload(e).get("question_id")},
        poll_ids={str(payload(e)["poll_id"]) for e, c in chosen if c == "poll" and payload(e).get("poll_id")})
    out = []
    for e, category in chosen:
        p, actor, text = payload(e), names.get(e.actor, e.actor), None
        if category == "chat" and "message_id" in p:
            msg = texts["chat"].get(p["message_id"])
            if msg is not None and msg["sender_name"]:
                actor = msg["sender_name"]
            text = None if msg is None else ("(deleted)" if msg["deleted_at"] else msg["text"])
            if e.type == "chat_pin":
                text = f"{'pinned' if p.get('pinned') else 'unpinned'}: {text or ''}"
        elif category == "qa" and "question_id" in p:
            q = texts["question"].get(str(p["question_id"]))
            if q is not None:
                if e.type == "question":
                    # anonymous stays anonymous in the review too
                    actor = None if q["anonymous"] else (q["asker_name"] or actor)
                text = (f"answered: {q['text']}" if e.type == "answer" else q["text"])
        elif category == "poll" and "poll_id" in p:
            poll = texts["poll"].get(str(p["poll_id"]))
            question = p.get("question") or (poll["question"] if poll else "")
            text = f"{'poll opened' if e.type == 'poll_open' else 'poll closed'}: {question}"
        out.append({"id": e.id, "type": e.type, "category": category, "actor": actor, "ts": e.ts,
                    "offset": round(e.ts - t0, 3), "text": (text or _event_text(e))[:300]})
    return out


def _event_text(event) -> str:
    p = event.payload if isinstance(event.payload, dict) else {}
    for key in ("text", "question", "title", "body"):
        if isinstance(p.get(key), str):
            return p[key][:200]
    return event.type


def _q(name: str, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string"}}


api_list.openapi = {"parameters": [_q("room", "only this room"), _q("date", "YYYY-MM-DD (UTC)"),
                                   _q("instructor", "only sessions of this instructor")]}
api_room_recording.openapi = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["action"], "properties": {"action": {"enum": ["start", "stop"]}}}}}}}
api_export.openapi = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": {"type": "object", "properties": {"layout": {"enum": ["grid", "speaker"]}}}}}}}
api_progress.openapi = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "properties": {"position": {"type": "number"},
                                                "watched_seconds": {"type": "number"}}}}}}}
