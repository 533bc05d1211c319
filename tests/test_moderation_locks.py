"""Muted by the staff (the participant cannot unmute until allowed), the data refused joins carry for the
room page's screens, `left` codes, and lowering every hand. Real server, real aiortc peers."""

from __future__ import annotations

import time

from signaling.room import ROOMS
from storage.store import STORE
from storage.interactive import InteractiveRepository
from tests.client import RoomClient
from tests.fixtures.classroom_e2e import Member, close_all, start_all
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import apply_answer, client_pc, make_offer
from tests.serve import eventually

ROOM = "locks"


async def join(server, room, identity, role, **kw) -> RoomClient:
    client = await RoomClient(server.ws_base, room, server.token(room, identity, role, **kw)).connect()
    assert client.joined["type"] == "joined", client.joined
    return client


async def test_staff_mute_holds_until_allowed_and_survives_a_republish(stoa_server):
    teacher = await join(stoa_server, ROOM, "prof", "instructor")
    student = await join(stoa_server, ROOM, "ann", "student", name="Ann", can_publish=True)
    other = await join(stoa_server, ROOM, "bo", "student")
    try:
        await student.publish(ToneAudioTrack(), CounterVideoTrack(), sources=["microphone", "camera"])
        room = stoa_server.app[ROOMS].rooms[ROOM]
        await eventually(lambda: len(room.tracks()) == 2, what="two tracks published")
        mic = next(t for t in room.tracks() if t.source == "microphone")

        out = await teacher.request({"type": "moderate", "action": "mute", "identity": "ann",
                                     "track_id": mic.track_id}, "moderated", "error")
        assert out["type"] == "moderated" and out["track_ids"] == [mic.track_id]
        seen = await other.expect("track_muted")
        assert seen == {"type": "track_muted", "track_id": mic.track_id, "muted": True, "participant": "ann",
                        "by": "prof"}

        # The student cannot unmute it herself; the server says why.
        refused = await student.request({"type": "mute", "track_id": mic.track_id, "muted": False}, "error")
        assert refused["code"] == "muted_by_moderator" and refused["track_id"] == mic.track_id
        assert mic.muted
        # Muting herself again is fine (nothing to refuse).
        await student.send({"type": "mute", "track_id": mic.track_id, "muted": True})

        # Asking reaches the staff, not the classmates.
        reply = await student.request({"type": "unmute_request", "track_id": mic.track_id}, "unmute_requested",
                                      "error")
        assert reply["type"] == "unmute_requested"
        asked = await teacher.expect("unmute_request")
        assert (asked["identity"], asked["source"], asked["name"]) == ("ann", "microphone", "Ann")
        assert not [e for e in other.events if e["type"] == "unmute_request"]

        # Stopping and publishing the microphone again does not unmute it: the mute is the source's.
        await student.pub.close()
        student.pub = client_pc()
        tr = student.pub.addTransceiver(ToneAudioTrack(), direction="sendonly")
        offer = await make_offer(student.pub)
        answer = await student.request({"type": "publish", "sdp": offer, "reset": True,
                                        "tracks": [{"mid": tr.mid, "source": "microphone"}]}, "answer", "error")
        await apply_answer(student.pub, answer["sdp"])
        await eventually(lambda: any(t.source == "microphone" and t.track_id != mic.track_id for t in room.tracks()),
                         what="a new microphone track")
        mic2 = next(t for t in room.tracks() if t.source == "microphone")
        assert mic2.muted
        refused = await student.request({"type": "mute", "track_id": mic2.track_id, "muted": False}, "error")
        assert refused["code"] == "muted_by_moderator"

        # Nor does leaving and joining again: the room keeps the mute for her identity.
        await student.close()
        student = await join(stoa_server, ROOM, "ann", "student", name="Ann", can_publish=True)
        assert student.joined["participant"]["muted_by_staff"] == ["microphone"]
        await student.publish(ToneAudioTrack(), sources=["microphone"])
        await eventually(lambda: any(t.source == "microphone" and t.track_id != mic2.track_id for t in room.tracks()),
                         what="the rejoined student's microphone")
        mic2 = next(t for t in room.tracks() if t.source == "microphone")
        assert mic2.muted

        # A student cannot allow herself; the teacher can.
        denied = await student.request({"type": "moderate", "action": "allow_unmute", "identity": "ann"}, "error")
        assert denied["code"] == "forbidden"
        ok = await teacher.request({"type": "moderate", "action": "allow_unmute", "identity": "ann",
                                    "track_id": mic2.track_id}, "moderated", "error")
        assert ok["type"] == "moderated" and ok["track_ids"] == [mic2.track_id]
        allowed = await student.expect("unmute_allowed")
        assert allowed["sources"] == ["microphone"] and allowed["by"] == "prof"
        assert mic2.muted, "allowing does not turn anyone's microphone on"
        await student.send({"type": "mute", "track_id": mic2.track_id, "muted": False})
        await eventually(lambda: not mic2.muted, what="the student unmuted after the teacher allowed it")

        nothing = await teacher.request({"type": "moderate", "action": "allow_unmute", "identity": "ann"},
                                        "moderated", "error")
        assert nothing["code"] == "not_found"
        stray = await student.request({"type": "unmute_request", "track_id": mic2.track_id}, "unmute_requested",
                                      "error")
        assert stray["code"] == "not_found"
    finally:
        for c in (teacher, student, other):
            await c.close()


async def test_refused_joins_carry_what_the_page_shows(stoa_server, api):
    start = time.time() + 3600
    s = await api.ok("POST", "/api/sessions", auth=api.admin,
                     json={"title": "Optics", "instructor": "prof", "capacity": 5, "password": "lens",
                           "scheduled_start": start})
    room = s["room"]

    async def refusal(identity, role="student", password=None, token=None):
        c = RoomClient(stoa_server.ws_base, room, token or stoa_server.token(room, identity, role))
        await c.connect(join=False)
        reply = await c.request({"type": "join", "token": c.token, **({"password": password} if password else {})},
                                "joined", "error")
        await c.close()
        return reply

    r = await refusal("ann")
    assert (r["code"], r["status"], r["title"], r["session_id"]) == ("session_not_live", "scheduled", "Optics", s["id"])
    assert abs(r["scheduled_start"] - start) < 1
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
    assert (await refusal("ann"))["password"] == "required"
    assert (await refusal("ann", password="nope"))["password"] == "wrong"
    await api.ok("POST", f"/api/sessions/{s['id']}/bans", auth=api.admin, json={"identity": "eve", "reason": "spam"})
    r = await refusal("eve", password="lens")
    assert (r["code"], r["reason"]) == ("banned", "spam")
    r = await refusal("ann", token=stoa_server.token("elsewhere", "ann", "student"))
    assert (r["code"], r["reason"]) == ("unauthorized", "other_room")
    r = await refusal("ann", token=stoa_server.token(room, "ann", "student", ttl=-60))
    assert (r["code"], r["reason"]) == ("unauthorized", "expired")

    # Ban in the room: the banned student's `left` carries the reason, not who pressed the button.
    prof = await join(stoa_server, room, "prof", "instructor")
    ann = RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "ann", "student"))
    await ann.connect(join=False)
    assert (await ann.request({"type": "join", "token": ann.token, "password": "lens"}, "joined", "error"))["type"] == "joined"
    out = await api.ok("POST", f"/api/sessions/{s['id']}/bans", auth=api.admin,
                       json={"identity": "ann", "reason": "shared the answers"})
    assert out is not None
    left = await ann.expect("left")
    assert (left["code"], left["ban_reason"]) == ("banned", "shared the answers")
    assert "apikey" not in left["reason"] and "shared the answers" in left["reason"]
    await ann.close()

    await api.ok("POST", f"/api/sessions/{s['id']}/end", auth=api.admin)
    left = await prof.expect("left")
    assert (left["code"], left["title"]) == ("ended", "Optics")
    await prof.close()
    r = await refusal("bo", password="lens")
    assert (r["code"], r["status"]) == ("session_not_live", "ended") and "recording_id" not in r


async def test_removed_participant_gets_left_with_code(stoa_server):
    teacher = await join(stoa_server, ROOM, "prof", "instructor")
    student = await join(stoa_server, ROOM, "ann", "student")
    try:
        await teacher.request({"type": "moderate", "action": "remove", "identity": "ann", "reason": "take a break"},
                              "moderated")
        left = await student.expect("left")
        assert (left["code"], left["reason"], left["by"]) == ("removed", "take a break", "prof")
    finally:
        await teacher.close()
        await student.close()


async def test_lower_all_hands(stoa_server, api):
    s = await api.ok("POST", "/api/sessions", auth=api.admin, json={"title": "Hands", "instructor": "prof"})
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
    prof = Member(stoa_server, s["room"], "prof", "instructor")
    students = [Member(stoa_server, s["room"], f"s{i}") for i in range(3)]
    await start_all([prof, *students])
    try:
        for m in students:
            await m.ok("hand.raise")
        denied = await students[0].call("hand.lower_all")
        assert denied["code"] == "forbidden"
        lowered = await prof.ok("hand.lower_all")
        assert sorted(lowered["lowered"]) == ["s0", "s1", "s2"]
        await students[1].wait(lambda p: p.get("type") == "hand.state" and not p["data"]["raised"]
                               and p["data"]["count"] == 0)
        assert await InteractiveRepository(stoa_server.app[STORE]).raised_hands(s["id"]) == []
    finally:
        await close_all([prof, *students])
