"""Permission matrix: every REST and room-protocol action, tried by every kind of caller against a real
server. Only the callers listed as allowed may succeed; the others get 401 (no or revoked credentials) or
403 (authenticated but not allowed), or an action's own `refused` status (e.g. 404: "not your track").

A '*' token is no pass to every room: the room's chat and whiteboard are for admins, the room's own tokens,
operators and (instructor '*' tokens) the instructor of the room's session only.

Callers:
  admin             API key and secret (Basic)
  instructor        "prof", the session's instructor ('*' token for REST, a room token for the protocol)
  other_instructor  "prof2", instructor of another session ('*' token)
  moderator         "ta", a moderator token for the session's room
  student           a student token for the session's room (the requesting student for tutoring)
  student_elsewhere a student token for another room
  student_star      "stu-star", a student token with room '*' (as for the dashboard and /ws/notify)
  viewer            a viewer token for the session's room
  operator          "olga", an operator token (room '*'): reviews recordings of every room
  none              no credentials (protocol: a garbage token)
  revoked_key       a revoked API key's Basic credentials
  revoked_token     a token (instructor "prof", room '*' / the room) signed by a revoked API key
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest

from shared.auth import mint_token
from tests.client import RoomClient
from tests.media import CounterVideoTrack

CALLERS = ["admin", "instructor", "other_instructor", "moderator", "student", "student_elsewhere",
           "student_star", "viewer", "operator", "none", "revoked_key", "revoked_token"]
UNAUTHENTICATED = {"none", "revoked_key", "revoked_token"}
AUTHENTICATED = set(CALLERS) - UNAUTHENTICATED
WRONG_ROOM = {"other_instructor", "student_elsewhere", "student_star", "operator"}  # no token for the room
ROOM_READERS = {"admin", "instructor", "moderator", "student", "viewer", "operator"}  # chat, whiteboard
STAFF = {"admin", "instructor", "moderator"}
OWNER = {"admin", "instructor"}


@dataclass
class Env:
    server: Any
    api: Any
    revoked: tuple[str, str]
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    clients: list = field(default_factory=list)

    def uid(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    async def session(self, *, live: bool = False, features: dict | None = None) -> dict:
        s = await self.api.ok("POST", "/api/sessions", auth=self.api.admin,
                              json={"title": "Matrix", "instructor": "prof", "room": self.uid("room-"),
                                    **({"features": features} if features else {})})
        if live:
            s = await self.api.ok("POST", f"/api/sessions/{s['id']}/start", auth=self.api.admin)
        return s

    async def join(self, room: str, identity: str, role: str) -> RoomClient:
        c = await RoomClient(self.server.ws_base, room, self.server.token(room, identity, role)).connect()
        self.clients.append(c)
        assert c.joined["type"] == "joined", c.joined
        return c

    def rest_auth(self, caller: str, ctx: dict) -> dict:
        api, room = self.api, ctx.get("room", "nowhere")
        key, secret = self.revoked
        return {
            "admin": api.admin,
            "instructor": api.bearer("*", "prof", "instructor"),
            "other_instructor": api.bearer("*", "prof2", "instructor"),
            "moderator": api.bearer(room, "ta", "moderator"),
            "student": api.bearer(ctx.get("student_room", room), ctx.get("student", "stu"), "student"),
            "student_elsewhere": api.bearer("elsewhere", "stu-x", "student"),
            "student_star": api.bearer("*", "stu-star", "student"),
            "viewer": api.bearer(room, "vi", "viewer"),
            "operator": api.bearer("*", "olga", "operator"),
            "none": {},
            "revoked_key": api.basic(key, secret),
            "revoked_token": {"Authorization": "Bearer " + mint_token(key, secret, room="*", identity="prof",
                                                                      role="instructor")},
        }[caller]

    def room_token(self, caller: str, room: str) -> str | None:
        key, secret = self.revoked
        t = self.server.token
        return {
            "instructor": t(room, "prof", "instructor"),
            "other_instructor": t("*", "prof2", "instructor"),
            "moderator": t(room, "ta", "moderator"),
            "student": t(room, "stu", "student"),
            "student_elsewhere": t("elsewhere", "stu-x", "student"),
            "student_star": t("*", "stu-star", "student"),
            "viewer": t(room, "vi", "viewer"),
            "operator": t("*", "olga", "operator"),
            "none": "not-a-token",
            "revoked_token": mint_token(key, secret, room=room, identity="prof", role="instructor"),
        }.get(caller)


Prep = Callable[[Env], Awaitable[dict]]
Run = Callable[[RoomClient, dict], Awaitable[dict]]  # a protocol exchange after joining; returns the reply


@dataclass
class Action:
    name: str
    allowed: set[str]
    prep: Prep
    method: str = ""
    path: str = ""                 # formatted with the prep's dict
    body: dict | None = None
    protocol: dict | None = None   # a room-protocol message, sent after joining
    callers: list[str] = field(default_factory=lambda: list(CALLERS))
    run: Run | None = None         # instead of `protocol`: a protocol exchange (publish, then mute, ...)
    refused: int = 403             # what an authenticated caller who is not allowed gets


async def scheduled(env: Env) -> dict:
    s = await env.session()
    return {"sid": s["id"], "room": s["room"]}


async def live(env: Env) -> dict:
    s = await env.session(live=True)
    return {"sid": s["id"], "room": s["room"]}


async def with_moderator(env: Env) -> dict:
    ctx = await scheduled(env)
    await env.api.ok("POST", f"/api/sessions/{ctx['sid']}/moderators", auth=env.api.admin,
                     json={"identity": "ta2"})
    return ctx


async def with_ban(env: Env) -> dict:
    ctx = await scheduled(env)
    await env.api.ok("POST", f"/api/sessions/{ctx['sid']}/bans", auth=env.api.admin, json={"identity": "kid"})
    return ctx


async def with_victim(env: Env) -> dict:
    ctx = await live(env)
    await env.join(ctx["room"], "victim", "student")
    return ctx


async def with_publishing_victim(env: Env) -> dict:
    ctx = await live(env)
    victim = await env.join(ctx["room"], "victim", "student")
    # Students may publish in a workshop; here the instructor lets the victim publish via the token.
    victim.token = env.server.token(ctx["room"], "victim", "student", can_publish=True)
    await victim.close()
    env.clients.remove(victim)
    victim = await RoomClient(env.server.ws_base, ctx["room"], victim.token).connect()
    env.clients.append(victim)
    reply = await victim.publish(CounterVideoTrack(), sources=["camera"])
    assert reply["type"] == "answer", reply
    track = await victim.expect("track_published")
    ctx["track_id"] = track["track"]["track_id"]
    return ctx


async def pending_request(env: Env) -> dict:
    student = env.uid("learner-")
    req = await env.api.ok("POST", "/api/tutoring", auth=env.api.bearer("*", student, "student"),
                           json={"note": "help"})
    return {"rid": req["id"], "student": student, "student_room": "*"}


async def accepted_request(env: Env) -> dict:
    ctx = await pending_request(env)
    out = await env.api.ok("POST", f"/api/tutoring/{ctx['rid']}/accept", auth=env.api.bearer("*", "prof", "instructor"))
    return {**ctx, "room": out["session"]["room"]}


async def fresh_student(env: Env) -> dict:
    return {"student": env.uid("asker-"), "student_room": "*"}


async def a_webhook(env: Env) -> dict:
    hook = await env.api.ok("POST", "/api/webhooks", auth=env.api.admin, json={"url": "http://127.0.0.1:9/x"})
    return {"wid": hook["id"]}


async def a_key(env: Env) -> dict:
    created = await env.api.ok("POST", "/api/keys", auth=env.api.admin, json={})
    return {"key": created["key"]}


async def nothing(env: Env) -> dict:
    return {}


async def adhoc_room(env: Env) -> dict:
    return {"room": env.uid("adhoc-")}  # no session row: nobody's session


async def star_room(env: Env) -> dict:
    return {"room": "*"}  # every room-scoped caller then holds a '*' token


async def a_recording(env: Env) -> dict:
    """A finished recording of a session that shares it: "ta" is a named moderator, "stu" took part."""
    import time

    from recorder.service import RECORDINGS
    from storage import schema as t
    from storage.store import STORE

    s = await env.session(features={"recording": True})
    await env.api.ok("POST", f"/api/sessions/{s['id']}/moderators", auth=env.api.admin, json={"identity": "ta"})
    store, repo, now = env.server.app[STORE], env.server.app[RECORDINGS].repo, time.time()
    await store.sessions.presence_join(s["id"], "stu", name="Stu", role="student", now=now, grace_s=0)
    rid = t.new_id()
    directory = f"{env.server.settings.data_dir}/recordings/{rid}"
    await repo.create(id=rid, room=s["room"], started_at=now, directory=directory,
                      manifest_path=directory + "/manifest.json", session_id=s["id"])
    await repo.update(rid, status="ready", ended_at=now + 3, duration_s=3.0)
    return {"sid": s["id"], "room": s["room"], "rec": rid}


S = "/api/sessions/{sid}"
T = "/api/tutoring/{rid}"
PROTOCOL_CALLERS = [c for c in CALLERS if c not in ("admin", "revoked_key")]  # API keys don't join rooms
TUTORING_READERS = {"admin", "instructor", "other_instructor", "student"}
DASHBOARD = {"admin", "instructor", "other_instructor", "student", "student_elsewhere", "student_star"}
# A recording of a session that shares it: admins, operators, and room tokens (not viewers) of its staff and
# of those who took part. Room '*' tokens other than operators' see none (docs/recording.md).
RECORDING_READERS = {"admin", "moderator", "student", "operator"}
BANK = {"bank": "matrix", "questions": [{"prompt": "2 + 2?", "choices": ["3", "4"], "answer": 1}]}


async def publish(c: RoomClient, ctx: dict) -> dict:
    return await c.publish(CounterVideoTrack(), sources=["camera"])


async def mute_own(c: RoomClient, ctx: dict) -> dict:
    reply = await publish(c, ctx)
    if reply["type"] == "error":
        return reply
    track_id = (await c.expect("track_published"))["track"]["track_id"]
    return await c.request({"type": "mute", "track_id": track_id, "muted": True}, "track_muted", "error")


async def unpublish_own(c: RoomClient, ctx: dict) -> dict:
    reply = await publish(c, ctx)
    if reply["type"] == "error":
        return reply
    track_id = (await c.expect("track_published"))["track"]["track_id"]
    return await c.request({"type": "unpublish", "track_id": track_id}, "track_unpublished", "error")


async def mute_victims(c: RoomClient, ctx: dict) -> dict:
    return await c.request({"type": "mute", "track_id": ctx["track_id"], "muted": True}, "track_muted", "error")


async def unpublish_victims(c: RoomClient, ctx: dict) -> dict:
    return await c.request({"type": "unpublish", "track_id": ctx["track_id"]}, "track_unpublished", "error")


async def record(c: RoomClient, ctx: dict) -> dict:
    reply = await c.request({"type": "recording", "action": "start"}, "recording_ok", "error", timeout=20)
    if reply["type"] == "recording_ok":  # stop at once: the matrix only asks who may start
        stopped = await c.request({"type": "recording", "action": "stop"}, "recording_ok", "error", timeout=30)
        assert stopped["type"] == "recording_ok", stopped
    return reply


ACTIONS = [
    Action("create session", {"admin", "instructor", "other_instructor"}, nothing, "POST", "/api/sessions",
           {"title": "New"}),
    Action("list sessions", AUTHENTICATED, scheduled, "GET", "/api/sessions"),
    Action("get session", {"admin", "instructor", "moderator", "student", "viewer"}, scheduled, "GET", S),
    Action("update session", OWNER, scheduled, "PATCH", S, {"capacity": 5}),
    Action("start session", OWNER, scheduled, "POST", S + "/start"),
    Action("end session", OWNER, live, "POST", S + "/end"),
    Action("cancel session", OWNER, scheduled, "POST", S + "/cancel"),
    Action("mint join token", OWNER, scheduled, "POST", S + "/tokens", {"identity": "new", "role": "student"}),
    Action("list participants", STAFF, live, "GET", S + "/participants"),
    Action("attendance", STAFF, live, "GET", S + "/attendance"),
    Action("list moderators", STAFF, scheduled, "GET", S + "/moderators"),
    Action("name moderator", OWNER, scheduled, "POST", S + "/moderators", {"identity": "newmod"}),
    Action("remove moderator", OWNER, with_moderator, "DELETE", S + "/moderators/ta2"),
    Action("list bans", STAFF, scheduled, "GET", S + "/bans"),
    Action("ban", STAFF, scheduled, "POST", S + "/bans", {"identity": "kid", "reason": "spam"}),
    Action("lift ban", STAFF, with_ban, "DELETE", S + "/bans/kid"),
    Action("remove participant", STAFF, with_victim, "DELETE", S + "/participants/victim"),
    Action("mute participant", STAFF, with_publishing_victim, "POST", S + "/participants/victim/mute", {}),
    Action("request tutoring", {"student", "student_elsewhere", "student_star"}, fresh_student, "POST",
           "/api/tutoring", {"note": "please"}),
    Action("tutoring dashboard", DASHBOARD, nothing, "GET", "/api/tutoring"),
    Action("dashboard json", DASHBOARD, nothing, "GET", "/api/dashboard"),
    Action("get tutoring request", TUTORING_READERS, pending_request, "GET", T),
    Action("accept tutoring", {"admin", "instructor", "other_instructor"}, pending_request, "POST",
           T + "/accept"),
    Action("reject tutoring", {"admin", "instructor", "other_instructor"}, pending_request, "POST",
           T + "/reject", {"reason": "busy"}),
    Action("end tutoring", {"admin", "instructor", "student"}, accepted_request, "POST", T + "/end"),
    Action("cancel tutoring", {"admin", "student"}, pending_request, "POST", T + "/cancel"),
    Action("tutoring join link", {"instructor", "student"}, accepted_request, "GET", T + "/join"),
    Action("list webhooks", {"admin"}, nothing, "GET", "/api/webhooks"),
    Action("add webhook", {"admin"}, nothing, "POST", "/api/webhooks", {"url": "http://127.0.0.1:9/hook"}),
    Action("get webhook", {"admin"}, a_webhook, "GET", "/api/webhooks/{wid}"),
    Action("remove webhook", {"admin"}, a_webhook, "DELETE", "/api/webhooks/{wid}"),
    Action("list api keys", {"admin"}, nothing, "GET", "/api/keys"),
    Action("create api key", {"admin"}, nothing, "POST", "/api/keys", {}),
    Action("revoke api key", {"admin"}, a_key, "DELETE", "/api/keys/{key}"),
    # Room data: a '*' token is not a token for every room.
    Action("chat history", ROOM_READERS, scheduled, "GET", "/api/rooms/{room}/chat"),
    Action("whiteboard png", ROOM_READERS, scheduled, "GET", "/api/rooms/{room}/whiteboard.png"),
    Action("chat history, ad hoc room", ROOM_READERS - {"instructor"}, adhoc_room, "GET",
           "/api/rooms/{room}/chat"),
    Action("chat history of a room named '*'", {"admin", "operator"}, star_room, "GET",
           "/api/rooms/{room}/chat"),
    Action("import quiz bank", {"admin", "instructor", "other_instructor"}, nothing, "POST", "/api/quiz/banks",
           BANK),
    # Recordings (docs/recording.md).
    Action("list recordings", AUTHENTICATED, a_recording, "GET", "/api/recordings"),
    Action("get recording", RECORDING_READERS, a_recording, "GET", "/api/recordings/{rec}"),
    Action("recording progress", RECORDING_READERS, a_recording, "POST", "/api/recordings/{rec}/progress",
           {"position": 1.0, "watched_seconds": 1.0}),
    Action("room recording status", {"admin", "moderator", "student", "viewer", "operator"}, scheduled, "GET",
           "/api/rooms/{room}/recording"),
    # The room protocol.
    Action("join session room", {"instructor", "moderator", "student", "viewer"}, live,
           protocol={"type": "ping"}, callers=PROTOCOL_CALLERS),
    Action("join a room named '*'", set(), star_room, protocol={"type": "ping"}, refused=401,
           callers=PROTOCOL_CALLERS),  # a '*' token is for no room, not for one named '*'
    Action("publish", {"instructor", "moderator"}, live, run=publish, callers=PROTOCOL_CALLERS),
    Action("mute own track", {"instructor", "moderator"}, live, run=mute_own, callers=PROTOCOL_CALLERS),
    Action("unpublish own track", {"instructor", "moderator"}, live, run=unpublish_own,
           callers=PROTOCOL_CALLERS),
    # Only `moderate` touches someone else's track; plain mute/unpublish answer "not your track" to everyone.
    Action("mute someone else's track", set(), with_publishing_victim, run=mute_victims, refused=404,
           callers=PROTOCOL_CALLERS),
    Action("unpublish someone else's track", set(), with_publishing_victim, run=unpublish_victims, refused=404,
           callers=PROTOCOL_CALLERS),
    Action("start recording", {"instructor", "moderator"}, with_publishing_victim, run=record,
           callers=PROTOCOL_CALLERS),
    Action("moderate: mute", {"instructor", "moderator"}, with_publishing_victim,
           protocol={"type": "moderate", "action": "mute", "identity": "victim"}, callers=PROTOCOL_CALLERS),
    Action("moderate: remove", {"instructor", "moderator"}, with_victim,
           protocol={"type": "moderate", "action": "remove", "identity": "victim"}, callers=PROTOCOL_CALLERS),
    Action("moderate: ban", {"instructor", "moderator"}, with_victim,
           protocol={"type": "moderate", "action": "ban", "identity": "victim"}, callers=PROTOCOL_CALLERS),
]


async def attempt_rest(env: Env, action: Action, caller: str, ctx: dict) -> tuple[int, Any]:
    path = action.path.format(**ctx)
    status, headers, raw = await env.api.raw(action.method, path, auth=env.rest_auth(caller, ctx),
                                             json=action.body)
    ctype = headers.get("Content-Type", "")
    if status >= 400:
        assert ctype.startswith("application/problem+json"), (status, raw[:300])
    return status, (raw.decode() if "json" in ctype or ctype.startswith("text/") else ctype)


PROTOCOL_STATUS = {"unauthorized": 401, "forbidden": 403, "not_found": 404}


async def attempt_protocol(env: Env, action: Action, caller: str, ctx: dict) -> tuple[int, Any]:
    token = env.room_token(caller, ctx["room"])
    c = await RoomClient(env.server.ws_base, ctx["room"], token).connect()
    env.clients.append(c)
    if c.joined["type"] == "error":
        return (401 if c.joined["code"] == "unauthorized" else 403), c.joined
    if action.run is not None:
        reply = await action.run(c, ctx)
    else:
        msg = dict(action.protocol)
        reply = await c.request(msg, "pong" if msg["type"] == "ping" else "moderated", "error")
    if reply["type"] == "error":
        return PROTOCOL_STATUS.get(reply["code"], 400), reply
    return 200, reply


@pytest.mark.parametrize("action", ACTIONS, ids=[a.name for a in ACTIONS])
async def test_permission_matrix(stoa_server, api, action: Action):
    created = await api.ok("POST", "/api/keys", auth=api.admin, json={"key": "retired"})
    await api.ok("DELETE", "/api/keys/retired", auth=api.admin)
    env = Env(stoa_server, api, (created["key"], created["secret"]))
    wrong = []
    try:
        for caller in action.callers:
            ctx = await action.prep(env)
            protocol = action.protocol is not None or action.run is not None
            if protocol:
                status, body = await attempt_protocol(env, action, caller, ctx)
            else:
                status, body = await attempt_rest(env, action, caller, ctx)
            # Over the protocol a token for another room does not authenticate for this one.
            unauthenticated = UNAUTHENTICATED | (WRONG_ROOM if protocol else set())
            if caller in action.allowed:
                ok = 200 <= status < 300
            else:
                ok = status == (401 if caller in unauthenticated else action.refused)
            if not ok:
                wrong.append(f"{caller}: {status} {body}")
            for c in env.clients:
                await c.close()
            env.clients.clear()
    finally:
        for c in env.clients:
            await c.close()
    assert not wrong, f"{action.name}: expected only {sorted(action.allowed)} to succeed:\n" + "\n".join(wrong)


async def test_effects_of_allowed_protocol_moderation(stoa_server, api):
    """What moderation does: mute stops forwarding and tells everyone who did it; remove disconnects."""
    env = Env(stoa_server, api, ("x", "y"))
    ctx = await with_publishing_victim(env)
    victim = env.clients[-1]
    watcher = await env.join(ctx["room"], "watcher", "student")
    mod = await env.join(ctx["room"], "ta", "moderator")
    reply = await mod.request({"type": "moderate", "action": "mute", "identity": "victim"}, "moderated", "error")
    assert reply["track_ids"] == [ctx["track_id"]]
    for c in (victim, watcher):
        note = await c.expect("track_muted")
        assert note == {"type": "track_muted", "track_id": ctx["track_id"], "muted": True,
                        "participant": "victim", "by": "ta"}
    from signaling.room import ROOMS
    track = stoa_server.app[ROOMS].rooms[ctx["room"]].participants["victim"].publisher.track(ctx["track_id"])
    assert track.muted is True
    # A student cannot moderate, and nobody can moderate the instructor.
    denied = await watcher.request({"type": "moderate", "action": "remove", "identity": "victim"}, "moderated", "error")
    assert denied["code"] == "forbidden"
    prof = await env.join(ctx["room"], "prof", "instructor")
    denied = await mod.request({"type": "moderate", "action": "remove", "identity": "prof"}, "moderated", "error")
    assert denied["type"] == "error"
    await mod.request({"type": "moderate", "action": "remove", "identity": "victim", "reason": "be nice"},
                      "moderated", "error")
    assert (await victim.expect("left"))["reason"] == "be nice"
    gone = await watcher.expect("participant_left")
    assert gone["identity"] == "victim"
    for c in env.clients:
        await c.close()
    del prof


async def test_a_removed_moderator_stays_removed_despite_their_token(stoa_server, api):
    env = Env(stoa_server, api, ("x", "y"))
    ctx = await live(env)
    ta = api.bearer(ctx["room"], "ta", "moderator")
    assert (await api.call("GET", f"/api/sessions/{ctx['sid']}/bans", auth=ta))[0] == 200  # named on first use
    mods = await api.ok("GET", f"/api/sessions/{ctx['sid']}/moderators", auth=api.admin)
    assert mods["moderators"] == ["ta"]
    await api.ok("DELETE", f"/api/sessions/{ctx['sid']}/moderators/ta", auth=api.bearer("*", "prof", "instructor"))
    status, _ = await api.call("GET", f"/api/sessions/{ctx['sid']}/bans", auth=ta)
    assert status == 403
    c = await RoomClient(stoa_server.ws_base, ctx["room"], stoa_server.token(ctx["room"], "ta", "moderator")).connect()
    try:
        assert c.joined["type"] == "joined"
        assert c.joined["participant"]["role"] == "moderator"  # the token's role, but no powers:
        reply = await c.request({"type": "moderate", "action": "remove", "identity": "nobody"}, "moderated", "error")
        assert reply["code"] == "forbidden"
    finally:
        await c.close()
