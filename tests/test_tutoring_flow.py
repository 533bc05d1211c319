"""1:1 tutoring end to end on a real server: REST calls, the /ws/notify channel, and the tutoring room over
the real room protocol with real aiortc peers."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from signaling.room import ROOMS
from tests.client import RoomClient
from tests.media import CounterVideoTrack


class Notify:
    """A /ws/notify listener that keeps every message."""

    def __init__(self, server, identity: str, role: str, name: str = ""):
        self.url = f"{server.ws_base}/ws/notify?token={server.token('*', identity, role, name=name or identity)}"
        self.messages: list[dict] = []
        self._new = asyncio.Condition()

    async def connect(self) -> "Notify":
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url)
        self.reader = asyncio.ensure_future(self._read())
        await self.wait("ready")
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                async with self._new:
                    self.messages.append(json.loads(msg.data))
                    self._new.notify_all()

    async def wait(self, kind: str, timeout: float = 10.0, **match) -> dict:
        def found():
            for m in self.messages:
                key = m.get("event") if m["type"] == "tutoring" else m["type"]
                if key == kind and all(m.get("request", {}).get(k) == v for k, v in match.items()):
                    return m
            return None

        async def loop():
            async with self._new:
                await self._new.wait_for(found)
                return found()
        return await asyncio.wait_for(loop(), timeout)

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages if m["type"] == "tutoring"]

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        await self.http.close()


async def test_request_notify_accept_media_end(stoa_server, api):
    prof_n = await Notify(stoa_server, "prof", "instructor", "Prof P").connect()
    other_prof_n = await Notify(stoa_server, "prof2", "instructor").connect()
    stu_n = await Notify(stoa_server, "stu", "student", "Stu S").connect()
    bystander_n = await Notify(stoa_server, "other-student", "student").connect()
    stu = api.bearer("*", "stu", "student", name="Stu S")
    prof = api.bearer("*", "prof", "instructor", name="Prof P")

    req = await api.ok("POST", "/api/tutoring", auth=stu,
                       json={"course_ref": "PHYS-101", "lesson_ref": "L4", "note": "momentum?"})
    assert req["status"] == "pending"
    seen = await prof_n.wait("tutoring.requested", id=req["id"])
    assert [r["id"] for r in seen["view"]["pending"]] == [req["id"]]
    assert seen["view"]["counts"]["pending"] == 1 and seen["request"]["note"] == "momentum?"
    await other_prof_n.wait("tutoring.requested", id=req["id"])
    mine = await stu_n.wait("tutoring.requested", id=req["id"])
    assert mine["view"]["counts"]["pending"] == 1

    accepted = await api.ok("POST", f"/api/tutoring/{req['id']}/accept", auth=prof)
    room = accepted["session"]["room"]
    assert accepted["request"]["status"] == "accepted" and accepted["session"]["type"] == "tutoring"
    assert accepted["join"]["role"] == "instructor" and accepted["join"]["room"] == room
    note = await stu_n.wait("tutoring.accepted", id=req["id"])
    assert note["room"] == room and note["join"]["role"] == "student"
    assert note["view"]["counts"]["active"] == 1 and note["view"]["active"][0]["room"] == room
    other = await other_prof_n.wait("tutoring.accepted", id=req["id"])
    assert "join" not in other and other["view"]["pending"] == []
    # A second instructor cannot take it any more.
    status, body = await api.call("POST", f"/api/tutoring/{req['id']}/accept",
                                  auth=api.bearer("*", "prof2", "instructor"))
    assert status == 409

    teacher = await RoomClient(stoa_server.ws_base, room, accepted["join"]["token"]).connect()
    student = await RoomClient(stoa_server.ws_base, room, note["join"]["token"]).connect()
    assert teacher.joined["type"] == "joined" and student.joined["type"] == "joined", (teacher.joined, student.joined)
    assert student.joined["session"]["type"] == "tutoring"
    # Nobody else gets into the tutoring room, even with a valid token for it.
    intruder = await RoomClient(stoa_server.ws_base, room,
                                stoa_server.token(room, "other-student", "student")).connect()
    assert intruder.joined["type"] == "error" and intruder.joined["code"] == "forbidden"
    await intruder.close()

    video = CounterVideoTrack()
    reply = await teacher.publish(video, sources=["camera"])
    assert reply["type"] == "answer"
    received = await student.wait_track("video", timeout=15)
    await received.wait_frames(30, timeout=20)
    assert received.counters == sorted(received.counters) and received.counters[-1] > received.counters[0]

    ended = await api.ok("POST", f"/api/tutoring/{req['id']}/end", auth=stu)
    assert ended["status"] == "ended" and ended["ended_by"] == "stu"
    assert ended["duration_s"] > 0
    for n in (stu_n, prof_n):
        msg = await n.wait("tutoring.ended", id=req["id"])
        assert msg["request"]["duration_s"] == ended["duration_s"]
    assert (await prof_n.wait("tutoring.ended"))["view"]["counts"]["completed"] == 1
    left = await teacher.expect("left")
    assert "ended" in left["reason"]
    await student.expect("left")
    session = await api.ok("GET", f"/api/sessions/{accepted['session']['id']}", auth=api.admin)
    assert session["status"] == "ended"
    view = await api.ok("GET", "/api/tutoring", auth=stu)
    assert view["role"] == "student" and view["counts"]["completed"] == 1
    assert view["completed"][0]["duration_s"] == ended["duration_s"]
    # The bystander student never heard about someone else's request.
    assert bystander_n.events() == []

    for c in (teacher, student):
        await c.close()
    for n in (prof_n, other_prof_n, stu_n, bystander_n):
        await n.close()


async def test_reject_reason_reaches_the_student(stoa_server, api):
    stu_n = await Notify(stoa_server, "stu", "student").connect()
    stu = api.bearer("*", "stu", "student")
    req = await api.ok("POST", "/api/tutoring", auth=stu, json={"note": "help"})
    status, body = await api.call("POST", "/api/tutoring", auth=stu, json={"note": "again"})
    assert status == 409 and body["code"] == "conflict", "one open request per student"
    rejected = await api.ok("POST", f"/api/tutoring/{req['id']}/reject",
                            auth=api.bearer("*", "prof", "instructor"), json={"reason": "office hours at 3pm"})
    assert rejected["status"] == "rejected"
    msg = await stu_n.wait("tutoring.rejected", id=req["id"])
    assert msg["request"]["reason"] == "office hours at 3pm"
    assert msg["view"]["closed"][0]["reason"] == "office hours at 3pm"
    status, _ = await api.call("GET", f"/api/tutoring/{req['id']}/join", auth=stu)
    assert status == 409
    await stu_n.close()


async def test_student_cancels_and_instructor_queue_updates(stoa_server, api):
    prof_n = await Notify(stoa_server, "prof", "instructor").connect()
    stu = api.bearer("*", "stu", "student")
    req = await api.ok("POST", "/api/tutoring", auth=stu, json={})
    await prof_n.wait("tutoring.requested", id=req["id"])
    await api.ok("POST", f"/api/tutoring/{req['id']}/cancel", auth=stu)
    msg = await prof_n.wait("tutoring.cancelled", id=req["id"])
    assert msg["view"]["pending"] == []
    assert not stoa_server.app[ROOMS].rooms
    await prof_n.close()


async def test_notify_refuses_other_roles_and_bad_tokens(stoa_server, api):
    async with aiohttp.ClientSession() as http:
        for token, status in ((stoa_server.token("*", "v", "viewer"), 403), ("garbage", 401), ("", 401)):
            async with http.get(f"{stoa_server.base}/ws/notify?token={token}") as r:
                assert r.status == status
                assert r.headers["Content-Type"].startswith("application/problem+json")
