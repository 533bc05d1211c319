"""Classroom messages over the real transports: the data channel, and the WebSocket fallback."""

from __future__ import annotations

import asyncio
import json

from tests.client import RoomClient

ROOM = "history"


async def join(server, identity, role) -> RoomClient:
    return await RoomClient(server.ws_base, ROOM, server.token(ROOM, identity, role)).connect()


async def wait_channel(client: RoomClient, timeout: float = 10.0) -> None:
    async def poll():
        while client.data_channel is None or client.data_channel.readyState != "open":
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


def payloads(client: RoomClient) -> list[dict]:
    """Everything the classroom sent this client, over either transport."""
    ws = [e["payload"] for e in client.events if e["type"] == "data"]
    return ws + client.data_messages


async def wait_payload(client: RoomClient, pred, timeout: float = 10.0) -> dict:
    async def poll():
        while True:
            for p in payloads(client):
                if pred(p):
                    return p
            await asyncio.sleep(0.02)
    return await asyncio.wait_for(poll(), timeout)


async def test_chat_over_data_channels_reaches_everyone(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await wait_channel(student)
    await wait_channel(teacher)
    # The state snapshot arrives on join (over the WebSocket, before the channel opens).
    state = await wait_payload(student, lambda p: p.get("type") == "state")
    assert "chat" in state["data"]
    student.data_channel.send(json.dumps({"v": 1, "type": "chat.send", "id": "m1",
                                          "data": {"text": "Is the homework due Friday?"}}))
    ack = await wait_payload(student, lambda p: p.get("type") == "ack" and p.get("id") == "m1")
    assert ack["data"]
    got = await wait_payload(teacher, lambda p: "Friday" in json.dumps(p) and p.get("type") != "ack")
    assert got
    # It came over the data channel, not the WebSocket.
    assert any("Friday" in json.dumps(m) for m in teacher.data_messages)
    await teacher.close()
    await student.close()


async def test_websocket_fallback_carries_the_same_flow(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await student.send({"type": "data", "payload": {"v": 1, "type": "chat.send", "id": "w1",
                                                    "data": {"text": "over the socket"}}})
    ack = await wait_payload(student, lambda p: p.get("type") == "ack" and p.get("id") == "w1")
    assert ack
    await wait_payload(teacher, lambda p: "over the socket" in json.dumps(p) and p.get("type") != "ack")
    bad = {"type": "data", "payload": {"v": 1, "type": "poll.create", "id": "p1",
                                       "data": {"question": "?", "options": ["a", "b"]}}}
    await student.send(bad)
    err = await wait_payload(student, lambda p: p.get("type") == "error" and p.get("id") == "p1")
    assert err["code"] == "forbidden"
    await teacher.close()
    await student.close()


async def test_join_and_leave_become_system_messages(stoa_server):
    teacher = await join(stoa_server, "teacher", "instructor")
    student = await join(stoa_server, "student", "student")
    await wait_payload(teacher, lambda p: "student joined" in json.dumps(p))
    await student.close()
    await wait_payload(teacher, lambda p: "student left" in json.dumps(p))
    await teacher.close()


def test_ad_hoc_rooms_get_a_key_that_fits_the_session_id_columns():
    from signaling.classroom_bridge import session_key

    key = session_key("a-very-long-room-name-for-the-thursday-physics-lab", None)
    assert len(key) == 32 and key == session_key("a-very-long-room-name-for-the-thursday-physics-lab", None)
    assert key != session_key("another-room", None)
