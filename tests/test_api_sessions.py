"""REST API over a real server: sessions, tokens, problem+json, OpenAPI, attendance JSON/CSV after a real
session, webhooks fired by a real session start, API keys."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

from classroom.webhooks import verify_signature
from shared.appkeys import KEYRING
from shared.auth import mint_token
from signaling.room import ROOMS
from storage.store import STORE
from tests.client import RoomClient
from tests.serve import eventually


async def make_session(api, instructor="prof", **extra):
    body = {"title": "Physics 101", "instructor": instructor, "capacity": 10, **extra}
    return await api.ok("POST", "/api/sessions", auth=api.admin, json=body)


async def test_openapi_lists_every_api_route_and_validates(stoa_server, api):
    status, doc = await api.call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = set()
    for route in stoa_server.app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/") and route.method not in ("HEAD", "OPTIONS"):
            served.add((route.method, path))
    # Every /api/ route is an Op of the table (none added beside it), and a recording's files are one too.
    assert served == {(m, p) for m, p in documented if p.startswith("/api/")}
    assert ("GET", "/recordings/{id}/files/{name}") in documented and ("GET", "/api/recordings") in served
    # Every request body schema in the document is a valid JSON Schema, and it is the one the server uses.
    from signaling.api.routes import OPS
    for op in OPS:
        if op.body is not None:
            schema = doc["paths"][op.path][op.method.lower()]["requestBody"]["content"]["application/json"]["schema"]
            Draft202012Validator.check_schema(schema)
            assert schema == op.body
    assert doc["paths"]["/api/sessions"]["post"]["responses"]["403"]["$ref"] == "#/components/responses/E403"


async def test_problem_json_for_errors(api):
    status, body = await api.call("GET", "/api/sessions")
    assert status == 401 and body["code"] == "unauthorized" and body["status"] == 401
    assert set(body) >= {"type", "title", "status", "detail"}
    status, body = await api.call("POST", "/api/sessions", auth=api.admin, json={"title": ""})
    assert status == 400 and "title" in body["detail"]
    status, body = await api.call("POST", "/api/sessions", auth=api.admin, json={"title": "x", "bogus": 1})
    assert status == 400 and "bogus" in body["detail"]
    status, _, raw = await api.raw("POST", "/api/sessions", auth=api.admin, data=b"{nope",
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(raw)["code"] == "bad_json"
    status, body = await api.call("GET", "/api/sessions/doesnotexist", auth=api.admin)
    assert status == 404 and body["code"] == "not_found"
    status, body = await api.call("GET", "/api/nothing-here", auth=api.admin)
    assert status == 404 and body["type"].startswith("urn:stoa:problem:")


async def test_session_lifecycle_and_transitions(api):
    s = await make_session(api, type="workshop", password="sesame")
    assert s["status"] == "scheduled" and s["has_password"] and "password_hash" not in s
    sid = s["id"]
    prof = api.bearer("*", "prof", "instructor")
    s2 = await api.ok("PATCH", f"/api/sessions/{sid}", auth=prof, json={"capacity": 20})
    assert s2["capacity"] == 20
    status, body = await api.call("POST", f"/api/sessions/{sid}/end", auth=prof)
    assert status == 409 and body["code"] == "invalid_transition"
    live = await api.ok("POST", f"/api/sessions/{sid}/start", auth=prof)
    assert live["status"] == "live" and live["actual_start"]
    mine = await api.ok("GET", "/api/sessions", auth=prof)
    assert [x["id"] for x in mine] == [sid]
    other = await api.ok("GET", "/api/sessions", auth=api.bearer("*", "someone-else", "instructor"))
    assert other == []
    ended = await api.ok("POST", f"/api/sessions/{sid}/end", auth=prof)
    assert ended["status"] == "ended"
    status, _ = await api.call("POST", f"/api/sessions/{sid}/cancel", auth=prof)
    assert status == 409


async def test_instructor_creates_own_session_and_mints_tokens(stoa_server, api):
    prof = api.bearer("*", "ada", "instructor")
    s = await api.ok("POST", "/api/sessions", auth=prof, json={"title": "Chem", "type": "class"})
    assert s["instructor"] == "ada"
    status, body = await api.call("POST", "/api/sessions", auth=prof,
                                  json={"title": "Not mine", "instructor": "bob"})
    assert status == 403
    link = await api.ok("POST", f"/api/sessions/{s['id']}/tokens", auth=prof,
                        json={"identity": "stu1", "name": "Stu", "role": "student"})
    assert link["url"] == f"/rooms/{s['room']}?token={link['token']}"
    grants = await stoa_server.app[KEYRING].verify(link["token"])
    assert (grants.room, grants.identity, grants.role, grants.can_publish) == (s["room"], "stu1", "student", False)
    status, _ = await api.call("POST", f"/api/sessions/{s['id']}/tokens", auth=prof,
                               json={"identity": "eve", "role": "instructor"})
    assert status == 403
    mod = await api.ok("POST", f"/api/sessions/{s['id']}/tokens", auth=prof,
                       json={"identity": "ta", "role": "moderator"})
    assert mod["role"] == "moderator"
    mods = await api.ok("GET", f"/api/sessions/{s['id']}/moderators", auth=prof)
    assert mods == {"instructor": "ada", "moderators": ["ta"]}


async def test_ws_admission_codes_and_no_half_join(stoa_server, api):
    s = await make_session(api, capacity=1, password="sesame")
    room = s["room"]

    async def try_join(identity, role="student", password=None):
        c = RoomClient(stoa_server.ws_base, room, stoa_server.token(room, identity, role))
        await c.connect(join=False)
        msg = {"type": "join", "token": c.token, **({"password": password} if password else {})}
        reply = await c.request(msg, "joined", "error")
        return c, reply

    c, reply = await try_join("s1", password="sesame")
    assert reply["code"] == "session_not_live"
    await c.close()
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
    c, reply = await try_join("s1")
    assert reply["code"] == "bad_password"
    await c.close()
    c1, reply = await try_join("s1", password="wrong")
    assert reply["code"] == "bad_password"
    await c1.close()
    c1, reply = await try_join("s1", password="sesame")
    assert reply["type"] == "joined" and reply["session"]["id"] == s["id"]
    c2, reply = await try_join("s2", password="sesame")
    assert reply["code"] == "session_full"
    assert set(stoa_server.app[ROOMS].rooms[room].participants) == {"s1"}, "a refused join leaves no trace"
    await c2.close()
    # Staff get in although the session is full and without the password.
    c3, reply = await try_join("prof", role="instructor")
    assert reply["type"] == "joined"
    # Ban s1 over the protocol: s1 is disconnected with a reason and cannot come back.
    out = await c3.request({"type": "moderate", "action": "ban", "identity": "s1", "reason": "spam"},
                           "moderated", "error")
    assert out["type"] == "moderated", out
    left = await c1.expect("left")
    assert "banned" in left["reason"]
    c4, reply = await try_join("s1", password="sesame")
    assert reply["code"] == "banned"
    for c in (c1, c3, c4):
        await c.close()


async def test_attendance_json_and_csv_after_a_real_session(stoa_server, api):
    s = await make_session(api)
    sid, room = s["id"], s["room"]
    await api.ok("POST", f"/api/sessions/{sid}/start", auth=api.admin)
    prof = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "prof", "instructor")).connect()
    stu = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "stu", "student", name="Stu")).connect()
    assert prof.joined["type"] == "joined" and stu.joined["type"] == "joined"
    parts = await api.ok("GET", f"/api/sessions/{sid}/participants", auth=api.admin)
    assert {p["identity"] for p in parts["participants"]} == {"prof", "stu"}
    assert parts["seats_taken"] == 1
    await stu.close()
    store = stoa_server.app[STORE]

    async def stu_left():
        ivs = await store.sessions.intervals(sid, "stu")
        return ivs and ivs[-1].left_at is not None
    await eventually(stu_left, timeout=10, what="the student's presence to close")
    await api.ok("POST", f"/api/sessions/{sid}/end", auth=api.bearer(room, "prof", "instructor"))
    gone = await prof.expect("left")
    assert "ended" in gone["reason"]
    await prof.close()

    report = await api.ok("GET", f"/api/sessions/{sid}/attendance", auth=api.admin)
    assert report["final"] and report["duration_s"] > 0
    people = {p["identity"]: p for p in report["participants"]}
    assert set(people) == {"prof", "stu"}
    stu_rep = people["stu"]
    assert stu_rep["name"] == "Stu" and len(stu_rep["intervals"]) == 1
    assert stu_rep["first_join"] <= stu_rep["last_leave"] <= report["end"]
    assert people["prof"]["present_s"] > stu_rep["present_s"] > 0, "prof stayed longer than stu"
    for p in people.values():
        assert p["ratio"] == pytest.approx(p["present_s"] / report["duration_s"], abs=0.01)
        assert p["present"] == (p["ratio"] >= report["threshold"])

    for how in ({"headers": {"Accept": "text/csv"}, "path": ""}, {"headers": {}, "path": "?format=csv"}):
        status, hdrs, raw = await api.raw("GET", f"/api/sessions/{sid}/attendance{how['path']}", auth=api.admin,
                                          headers=how["headers"])
        assert status == 200 and hdrs["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(raw.decode())))
        assert {r["identity"] for r in rows} == {"prof", "stu"}
        stu_row = next(r for r in rows if r["identity"] == "stu")
        assert stu_row["first_join"].endswith("Z") and stu_row["last_leave"].endswith("Z")
        assert "/" in stu_row["intervals"]


async def test_webhook_fired_by_a_real_session_start(stoa_server, api):
    got: list[dict] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        got.append({"headers": dict(request.headers), "body": body})
        arrived.set()
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", receive)
    receiver = TestServer(receiver_app, host="127.0.0.1", port=0)
    await receiver.start_server()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        hook = await api.ok("POST", "/api/webhooks", auth=api.admin,
                            json={"url": url, "events": ["session.started"]})
        secret = hook["secret"]
        listed = await api.ok("GET", "/api/webhooks", auth=api.admin)
        assert [h["url"] for h in listed] == [url] and "secret" not in listed[0]
        s = await make_session(api)
        await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
        await asyncio.wait_for(arrived.wait(), 10)
        delivery = got[0]
        assert verify_signature(secret, delivery["headers"], delivery["body"])
        assert not verify_signature("x" * 20, delivery["headers"], delivery["body"])
        event = json.loads(delivery["body"])
        assert event["event"] == "session.started" and event["data"]["session_id"] == s["id"]
        detail = await api.ok("GET", f"/api/webhooks/{hook['id']}", auth=api.admin)
        assert detail["deliveries"][0]["delivered_at"] is not None
        await api.ok("DELETE", f"/api/webhooks/{hook['id']}", auth=api.admin)
        assert await api.ok("GET", "/api/webhooks", auth=api.admin) == []
    finally:
        await receiver.close()


async def test_api_keys_create_use_revoke(stoa_server, api):
    created = await api.ok("POST", "/api/keys", auth=api.admin, json={"key": "lms-1"})
    auth = api.basic(created["key"], created["secret"])
    assert await api.ok("GET", "/api/sessions", auth=auth) == []
    token = mint_token(created["key"], created["secret"], room="*", identity="t", role="instructor")
    bearer = {"Authorization": f"Bearer {token}"}
    assert await api.ok("GET", "/api/sessions", auth=bearer) == []
    keys = await api.ok("GET", "/api/keys", auth=api.admin)
    assert {k["key"] for k in keys} >= {"lms-1", stoa_server.settings.api_key}
    assert all("secret" not in k for k in keys)
    operator = {"Authorization": "Bearer " + mint_token(created["key"], created["secret"], room="*",
                                                        identity="op", role="operator")}
    room_token = mint_token(created["key"], created["secret"], room="bio", identity="s", role="student")
    assert await api.ok("GET", "/api/recordings", auth=auth) == await api.ok("GET", "/api/recordings",
                                                                              auth=operator)
    await api.ok("DELETE", "/api/keys/lms-1", auth=api.admin)
    # Refused everywhere: the REST API, the recordings API and the pages.
    for path, a in (("/api/sessions", auth), ("/api/sessions", bearer), ("/api/recordings", auth),
                    ("/api/recordings", operator)):
        status, body = await api.call("GET", path, auth=a)
        assert status == 401, (path, body)
    status, _, _ = await api.raw("GET", f"/rooms/bio?token={room_token}")
    assert status == 401
    status, body = await api.call("DELETE", f"/api/keys/{stoa_server.settings.api_key}", auth=api.admin)
    assert status == 409
    status, body = await api.call("DELETE", "/api/keys/nope", auth=api.admin)
    assert status == 404


async def test_reconnect_within_grace_continues_the_same_interval(stoa_server, api):
    s = await make_session(api)
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
    room, store = s["room"], stoa_server.app[STORE]
    token = stoa_server.token(room, "stu", "student")
    first = await RoomClient(stoa_server.ws_base, room, token).connect()
    await first.close()

    async def closed():
        ivs = await store.sessions.intervals(s["id"], "stu")
        return len(ivs) == 1 and ivs[0].left_at is not None
    await eventually(closed, timeout=10, what="the presence interval to close")
    again = await RoomClient(stoa_server.ws_base, room, token).connect()
    assert again.joined["type"] == "joined"
    [interval] = await store.sessions.intervals(s["id"], "stu")
    assert interval.left_at is None, "back within 30 s: the same presence, still open"
    events = [e.type for e in await store.events.list(s["id"])]
    assert events.count("participant.joined") == 2
    await again.close()
