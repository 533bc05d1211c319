"""A reconnect with the same identity replaces the old session, over two real WebSockets (tests/client.py):
the old socket is told why and closed (4001), gets no more events, cannot act as the user, and its close
does not make the room hear that the user left. Also the WebSocket size limits."""

from __future__ import annotations

import json

import aiohttp

from signaling.room import CLOSE_REPLACED, REPLACED, ROOMS
from signaling.schemas import MAX_FRAME_BYTES
from storage.store import STORE
from tests.client import RoomClient
from tests.fixtures.classroom_e2e import Member
from tests.serve import eventually

ROOM = "reconnect"


def chats(member: Member) -> list[dict]:
    return [p["data"] for p in member.of_type("chat.message")]


async def test_a_second_join_replaces_the_first_websocket(stoa_server):
    session = None
    from tests.fixtures.api import ApiClient
    async with aiohttp.ClientSession() as http:
        api = ApiClient(stoa_server, http)
        session = await api.ok("POST", "/api/sessions", auth=api.admin,
                               json={"title": "Reconnects", "instructor": "prof", "room": ROOM, "capacity": 10})
        await api.ok("POST", f"/api/sessions/{session['id']}/start", auth=api.admin)

        teacher = await Member(stoa_server, ROOM, "prof", "instructor", channel=False).start()
        bo = await Member(stoa_server, ROOM, "bo", "student", channel=False).start()
        old = await Member(stoa_server, ROOM, "ann", "student", channel=False, name="Ann").start()
        await old.ok("chat.send", {"text": "first connection"})
        new = await Member(stoa_server, ROOM, "ann", "student", channel=False, name="Ann").start()
        try:
            # The old socket is told why, then closed with a clear reason.
            left = await old.client.expect("left")
            assert left["reason"] == REPLACED
            await eventually(lambda: old.client.ws.closed, 10, "the old socket to close", interval=0.02)
            assert old.client.ws.close_code == CLOSE_REPLACED
            events = old.client.events
            assert events[-1] == left, f"nothing after `left`: {events[events.index(left):]}"

            # It cannot act as the user any more (its socket is closed; sending fails or is ignored).
            try:
                await old.send("chat.send", {"text": "from the old socket"})
            except Exception:
                pass
            await teacher.ok("chat.send", {"text": "after the replacement"})
            await bo.wait(lambda p: p.get("type") == "chat.message" and p["data"]["text"] == "after the replacement")
            await new.wait(lambda p: p.get("type") == "chat.message" and p["data"]["text"] == "after the replacement")
            assert not any(c["text"] == "after the replacement" for c in chats(old)), "no events after `left`"
            assert await new.ok("chat.send", {"text": "second connection"})

            # Nobody heard that Ann left: no participant_left, no "Ann left" line.
            await bo.wait(lambda p: p.get("type") == "chat.message" and p["data"]["text"] == "second connection")
            texts = [c["text"] for c in chats(bo)]
            assert "from the old socket" not in texts
            assert not any("Ann left" in t for t in texts), texts
            assert not [e for e in bo.client.events if e["type"] == "participant_left"]

            # The room and the session still have Ann, on the new connection.
            room = stoa_server.app[ROOMS].rooms[ROOM]
            assert room.participants["ann"].session_id != old.client.joined["participant"].get("session_id", "")
            assert not room.participants["ann"].replaced
            status, body = await api.call("GET", f"/api/sessions/{session['id']}/participants", auth=api.admin)
            ann = next(p for p in body["participants"] if p["identity"] == "ann")
            assert ann["live"] is not None and ann["connections"] == 1
            intervals = await stoa_server.app[STORE].sessions.intervals(session["id"])
            assert [i.left_at for i in intervals if i.identity == "ann"] == [None], "Ann is still present"
        finally:
            for m in (teacher, bo, old, new):
                await m.close()


async def test_a_lone_participant_reconnecting_keeps_the_room(stoa_server):
    """The room is never empty in between, so it is not dropped from under the new connection."""
    first = await RoomClient(stoa_server.ws_base, "alone", stoa_server.token("alone", "ada", "instructor")).connect()
    second = await RoomClient(stoa_server.ws_base, "alone", stoa_server.token("alone", "ada", "instructor")).connect()
    try:
        await first.expect("left")
        rooms = stoa_server.app[ROOMS].rooms
        assert "alone" in rooms and set(rooms["alone"].participants) == {"ada"}
        third = await RoomClient(stoa_server.ws_base, "alone", stoa_server.token("alone", "bo", "student")).connect()
        assert {p["identity"] for p in third.joined["room"]["participants"]} == {"ada", "bo"}
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_websocket_size_limits_answer_too_large(stoa_server):
    client = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "big", "student")).connect()
    try:
        # Over 128 KiB: too_large, and the connection stays up.
        reply = await client.request('{"type": "ping", "pad": "' + "x" * 200_000 + '"}', "error")
        assert reply["code"] == "too_large" and not client.ws.closed
        assert (await client.request({"type": "ping", "t": 1}, "pong"))["t"] == 1
        # Over 256 KiB: too_large first, then the socket closes with 1009 and a reason.
        await client.send(json.dumps({"type": "ping", "pad": "y" * (MAX_FRAME_BYTES + 10)}))
        reply = await client.wait_for("error")
        assert reply["code"] == "too_large" and "256 KiB" in reply["message"]
        await eventually(lambda: client.ws.closed, 10, "the socket to close", interval=0.02)
        assert client.ws.close_code == 1009
    finally:
        await client.close()
