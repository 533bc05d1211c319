"""The recordings over REST: start/stop a room's recording, list and read recordings, composite export jobs,
watch progress, and a recording's files (docs/recording.md, "HTTP API").

Handlers of the `OPS` table (signaling/api/routes.py): authentication, body validation, problem+json errors
and the OpenAPI document come from there. Who may see a recording is `recorder.access`, the rule the review
pages (web/review.py) apply too; the manager's own refusals (`RecordingError`) become problems with its code.
"""

from __future__ import annotations

import os
import time

from aiohttp import web

from classroom.errors import NotFound, PermissionDenied
from recorder.access import Viewer, viewable, visible
from recorder.export import LAYOUTS
from recorder.service import RECORDINGS
from signaling.api.problems import Problem
from storage.recordings import RecordingRow
from storage.store import STORE

START_STOP_BODY = {"type": "object", "properties": {"action": {"enum": ["start", "stop"]}},
                   "required": ["action"], "additionalProperties": False}
EXPORT_BODY = {"type": "object", "properties": {"layout": {"enum": list(LAYOUTS)}}, "additionalProperties": False}
PROGRESS_BODY = {"type": "object",
                 "properties": {"position": {"type": "number", "minimum": 0},
                                "watched_seconds": {"type": "number", "minimum": 0}},
                 "required": ["position", "watched_seconds"], "additionalProperties": False}
MAY_SEE = ("admin, an operator, or a token of the recording's room whose holder took part in its session, when "
           "the session shares its recording (not viewers)")
_NUM, _STR = {"type": ["number", "null"]}, {"type": ["string", "null"]}
RECORDING = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "session_id": _STR, "room": {"type": "string"},
        "status": {"enum": ["recording", "processing", "ready", "failed"]},
        "started_at": {"type": "number"}, "ended_at": _NUM, "duration_s": _NUM,
        "size_bytes": {"type": ["integer", "null"]}, "error": _STR, "instructor": _STR, "session_title": _STR,
        "has_composite": {"type": "boolean"},
        "files": {"type": ["array", "null"], "items": {"type": "object", "description": "name, kind, participant, "
                  "participant_name, label, codec, size, duration, frames, status, start_time, offset"}},
        "views": {"type": "array", "items": {"$ref": "#/components/schemas/RecordingView"},
                  "description": "GET /api/recordings/{id} only: all views for operators, the caller's own else"},
    },
}
VIEW = {"type": "object", "properties": {
    "recording_id": {"type": "string"}, "identity": {"type": "string"}, "last_position": {"type": "number"},
    "seconds_watched": {"type": "number"}, "completed": {"type": "boolean"}, "updated_at": {"type": "number"}}}
STATUS = {"type": "object", "properties": {"room": {"type": "string"}, "recording": {
    "type": ["object", "null"], "description": "null when the room is not being recorded",
    "properties": {"recording_id": {"type": "string"}, "room": {"type": "string"}, "started_at": {"type": "number"},
                   "tracks": {"type": "integer"}, "error": _STR}}}}
JOB = {"type": "object", "properties": {"job": {"type": "object", "properties": {
    "id": {"type": "string"}, "recording_id": {"type": "string"}, "layout": {"enum": list(LAYOUTS)},
    "status": {"enum": ["queued", "running", "done", "failed"]}, "progress": {"type": "number"},
    "error": _STR, "result": {"type": ["object", "null"]}, "created_at": {"type": "number"},
    "finished_at": _NUM}}}}
MEDIA_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska"}


def viewer(ctx) -> Viewer:
    p = ctx.principal
    return Viewer(p.identity, p.grants)


def _room_viewer(ctx) -> Viewer:
    """The caller of a /api/rooms/{room}/recording route: an admin, an operator, or a token of that room."""
    who, room = viewer(ctx), ctx.param("room")
    if who.kind == "room" and who.grants.room != room:
        raise PermissionDenied(f"this token is for room {who.grants.room!r}, not {room!r}")
    return who


def _operator(ctx, what: str) -> None:
    if not viewer(ctx).sees_all:
        raise PermissionDenied(f"only operators and admins {what}")


def public(row: RecordingRow) -> dict:
    """A recording as the API shows it: no server paths."""
    data = row.to_dict()
    for private in ("directory", "manifest_path", "composite_path"):
        data.pop(private, None)
    data["has_composite"] = bool(row.composite_path)
    return data


async def start_stop_recording(ctx) -> web.Response:
    """201 with the new recording (start) or 200 with the stopped one (stop)."""
    who = _room_viewer(ctx)
    if who.kind != "admin" and not who.grants.is_moderator:
        raise PermissionDenied("only the room's instructors and moderators (or an admin) start and stop recordings")
    manager, room = ctx.app[RECORDINGS], ctx.param("room")
    if ctx.body["action"] == "start":
        return web.json_response(public(await manager.start(room, by=who.identity)), status=201)
    return web.json_response(public(await manager.stop(room, reason=f"stopped by {who.identity}")))


async def recording_status(ctx) -> dict:
    _room_viewer(ctx)
    room = ctx.param("room")
    return {"room": room, "recording": ctx.app[RECORDINGS].status(room)}


async def list_recordings(ctx) -> dict:
    q = ctx.request.query
    rows = await visible(ctx.app[RECORDINGS], ctx.app[STORE], viewer(ctx),
                         **{k: q.get(k, "").strip() for k in ("room", "date", "instructor")})
    return {"recordings": [public(r) for r in rows]}


async def get_recording(ctx) -> dict:
    who, manager = viewer(ctx), ctx.app[RECORDINGS]
    row = await viewable(manager, ctx.app[STORE], who, ctx.param("id"))
    views = await manager.repo.views(row.id)
    return {**public(row), "views": [v.to_dict() for v in views if who.sees_all or v.identity == who.identity]}


async def export_recording(ctx) -> web.Response:
    _operator(ctx, "export recordings")
    job = await ctx.app[RECORDINGS].export(ctx.param("id"), (ctx.body or {}).get("layout", "grid"))
    return web.json_response({"job": job.to_dict()}, status=202, headers={"Location": f"/api/jobs/{job.id}"})


async def get_job(ctx) -> dict:
    _operator(ctx, "see export jobs")
    job = ctx.app[RECORDINGS].jobs.get(ctx.param("id"))
    if job is None:
        raise NotFound(f"there is no job {ctx.param('id')!r} (jobs live until the server restarts)")
    return {"job": job.to_dict()}


async def post_progress(ctx) -> dict:
    who, manager = viewer(ctx), ctx.app[RECORDINGS]
    row = await viewable(manager, ctx.app[STORE], who, ctx.param("id"))
    view = await manager.repo.record_view(row.id, who.identity, position=ctx.body["position"],
                                          watched_seconds=ctx.body["watched_seconds"], duration=row.duration_s,
                                          now=time.time())
    return view.to_dict()


async def download_file(ctx) -> web.StreamResponse:
    """One file of the recording; aiohttp's FileResponse answers Range requests (206, seeking)."""
    row = await viewable(ctx.app[RECORDINGS], ctx.app[STORE], viewer(ctx), ctx.param("id"))
    name = ctx.param("name")
    if name not in {f["name"] for f in (row.files or [])} or os.path.basename(name) != name:
        raise NotFound(f"recording {row.id} has no file {name!r}")
    path = os.path.join(row.directory or "", name)
    if not os.path.isfile(path):
        raise Problem(410, "gone", f"file {name!r} of recording {row.id} is gone from disk")
    ctype = MEDIA_TYPES.get(os.path.splitext(name)[1], "video/x-matroska")
    return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "private, max-age=0"})


def query(name: str, description: str) -> dict:
    return {"name": name, "required": False, "description": description, "schema": {"type": "string"}}


LIST_QUERY = [query("room", "only this room"), query("date", "only this UTC day, YYYY-MM-DD"),
              query("instructor", "only sessions of this instructor")]
