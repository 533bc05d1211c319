"""The operator review pages: the recordings list and the player (docs/recording.md, "Review pages").

Pages only: the recordings' JSON API and their files are `OPS` routes (signaling/recordings_api.py); who may
see a recording is `recorder.access`, the rule that API applies too; the timeline and the activity chart are
drawn by web/timeline.py.

Who is asking: an admin with HTTP Basic (the API key and secret: the browser asks for them, see `_page`), or a
token (`?token=`, the links keep it, or `Authorization: Bearer`). The credentials are read by
`shared.auth.identify`, as on every HTTP route.
"""

from __future__ import annotations

import time

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from classroom import attendance
from classroom.feedback import report as feedback_report
from classroom.sessions import session_key as classroom_key
from recorder.access import Viewer, viewable, visible
from recorder.service import RECORDINGS, RecordingError
from shared.appkeys import active_api_keys
from shared.auth import TokenError, identify
from shared.roles import STAFF_ROLES
from storage.store import STORE
from web.timeline import activity_svg, build_timeline, fmt_duration, fmt_time

BASIC_CHALLENGE = 'Basic realm="Stoa"'


def setup(app: web.Application) -> None:
    app.router.add_get("/recordings", page_list)
    app.router.add_get("/recordings/{id}", page_player)


async def _caller(request: web.Request) -> Viewer:
    try:
        caller = identify(request.headers.get("Authorization", ""), await active_api_keys(request.app),
                          query_token=request.query.get("token", ""))
    except TokenError as exc:
        raise RecordingError(401, "unauthorized", exc.reason) from None
    if caller.key is not None:
        return Viewer(f"apikey:{caller.key}")
    return Viewer(caller.grants.identity, caller.grants)


def _page(fn):
    """Pages show problems as HTML. A 401 to a request without a token asks the browser for the admin's
    API key and secret (HTTP Basic); token links (?token=, Bearer) get no challenge."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except RecordingError as exc:
            response = aiohttp_jinja2.render_template("error.html", request, {"message": exc.message},
                                                      status=exc.status)
            bearer = request.headers.get("Authorization", "")[:7].lower() == "bearer "
            if exc.status == 401 and not request.query.get("token") and not bearer:
                response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
            return response
    wrapped.__name__ = fn.__name__
    return wrapped


@_page
async def page_list(request: web.Request) -> web.Response:
    caller = await _caller(request)
    filters = {k: request.query.get(k, "").strip() for k in ("room", "date", "instructor")}
    rows = await visible(request.app[RECORDINGS], request.app[STORE], caller, **filters)
    return aiohttp_jinja2.render_template("recordings.html", request, {
        "caller": caller, "rows": rows, "filters": filters, "token": request.query.get("token", ""),
        "fmt_time": fmt_time, "fmt_duration": fmt_duration})


@_page
async def page_player(request: web.Request) -> web.Response:
    caller = await _caller(request)
    store, manager = request.app[STORE], request.app[RECORDINGS]
    row = await viewable(manager, store, caller, request.match_info["id"])
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
    timeline = await build_timeline(manager.repo, key, events, t0, names=names)
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
        "fmt_time": fmt_time, "fmt_duration": fmt_duration, "token": request.query.get("token", "")})
