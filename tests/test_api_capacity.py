"""Capacity through the real WebSocket join path: concurrent joins against a small capacity admit exactly
that many; the others get `session_full` and leave no trace in the room. A server whose `max_participants`
is below a session's capacity refuses joins with `room_full` (503 over WHIP/WHEP) and gives the seat back."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import pytest

from signaling.room import ROOMS
from storage.store import STORE
from tests.peers import client_pc, make_offer
from tests.serve import eventually


@pytest.fixture
def server_settings(server_settings, request):
    """`@pytest.mark.parametrize("server_settings", [N], indirect=True)`: the server takes at most N per room."""
    limit = getattr(request, "param", None)
    return server_settings if limit is None else dataclasses.replace(server_settings, max_participants=limit)


async def live_session(api, title: str, capacity: int) -> dict:
    """A started session taught by "prof" with `capacity` seats."""
    s = await api.ok("POST", "/api/sessions", auth=api.admin,
                     json={"title": title, "instructor": "prof", "capacity": capacity})
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
    return s


async def test_concurrent_ws_joins_admit_exactly_capacity(stoa_server, api):
    capacity, tries = 8, 24
    s = await live_session(api, "Small room", capacity)
    room = s["room"]
    gate = asyncio.Event()

    async def one(http, i):
        ws = await http.ws_connect(f"{stoa_server.ws_base}/ws/rooms/{room}")
        await gate.wait()
        await ws.send_str(json.dumps({"type": "join", "token": stoa_server.token(room, f"s{i}", "student")}))
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] in ("joined", "error"):
                return ws, data

    async with aiohttp.ClientSession() as http:
        pending = [asyncio.ensure_future(one(http, i)) for i in range(tries)]
        await asyncio.sleep(0.2)
        gate.set()
        results = await asyncio.gather(*pending)
        replies = [r for _, r in results]
        joined = [r for r in replies if r["type"] == "joined"]
        full = [r for r in replies if r["type"] == "error"]
        assert len(joined) == capacity
        assert len(full) == tries - capacity and {r["code"] for r in full} == {"session_full"}
        assert len(stoa_server.app[ROOMS].rooms[room].participants) == capacity
        assert await stoa_server.app[STORE].sessions.seats_taken(s["id"]) == capacity
        # The instructor still gets in: staff take no seat.
        ws = await http.ws_connect(f"{stoa_server.ws_base}/ws/rooms/{room}")
        await ws.send_str(json.dumps({"type": "join", "token": stoa_server.token(room, "prof", "instructor")}))
        first = json.loads((await ws.receive()).data)
        assert first["type"] == "joined"
        await ws.close()
        for w, _ in results:
            await w.close()


async def _ws_join(http, server, room: str, identity: str):
    ws = await http.ws_connect(f"{server.ws_base}/ws/rooms/{room}")
    await ws.send_str(json.dumps({"type": "join", "token": server.token(room, identity, "student")}))
    async for msg in ws:
        data = json.loads(msg.data)
        if data["type"] in ("joined", "error"):
            return ws, data
    raise AssertionError(f"{identity}: the socket closed before a join reply")


async def _admitted(server, session_id: str) -> set[str]:
    return {a["identity"] for a in await server.app[STORE].sessions.admissions(session_id)}


@pytest.mark.parametrize("server_settings", [2], indirect=True)
async def test_ws_join_refused_by_a_full_server_gives_the_seat_back(stoa_server, api):
    store = stoa_server.app[STORE]
    s = await live_session(api, "Bigger than the server", 3)
    room = s["room"]
    async with aiohttp.ClientSession() as http:
        ws0, r0 = await _ws_join(http, stoa_server, room, "s0")
        ws1, r1 = await _ws_join(http, stoa_server, room, "s1")
        assert r0["type"] == r1["type"] == "joined"
        ws2, r2 = await _ws_join(http, stoa_server, room, "s2")
        assert r2["type"] == "error" and r2["code"] == "room_full", r2
        await ws2.close()
        # The refusal took nothing: no seat, no admission, no presence.
        assert await store.sessions.seats_taken(s["id"]) == 2
        assert await _admitted(stoa_server, s["id"]) == {"s0", "s1"}
        assert {i.identity for i in await store.sessions.intervals(s["id"])} == {"s0", "s1"}
        # Room on the server again: the third seat is still free for a newcomer.
        await ws0.close()
        participants = stoa_server.app[ROOMS].rooms[room].participants
        await eventually(lambda: "s0" not in participants, 5, "s0 to leave the room", interval=0.02)
        ws3, r3 = await _ws_join(http, stoa_server, room, "s3")
        assert r3["type"] == "joined", r3
        assert set(participants) == {"s1", "s3"}
        assert await store.sessions.seats_taken(s["id"]) == 3  # s0 keeps the seat it left (reconnects)
        assert await _admitted(stoa_server, s["id"]) == {"s0", "s1", "s3"}
        await ws1.close()
        await ws3.close()


@pytest.mark.parametrize("server_settings", [1], indirect=True)
async def test_whep_join_refused_by_a_full_server_gives_the_seat_back(stoa_server, api):
    store = stoa_server.app[STORE]
    s = await live_session(api, "Lecture hall", 2)
    room = s["room"]

    async def whep(http, identity: str):
        pc = client_pc()
        pc.addTransceiver("video", direction="recvonly")
        token = stoa_server.token(room, identity, "student")
        async with http.post(f"{stoa_server.base}/whep/{room}", data=await make_offer(pc), headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as resp:
            return pc, resp.status, resp.headers.get("Location"), await resp.text()

    async with aiohttp.ClientSession() as http:
        ws0, r0 = await _ws_join(http, stoa_server, room, "s0")
        assert r0["type"] == "joined"
        pc1, status, _, body = await whep(http, "s1")
        await pc1.close()
        assert status == 503 and "room full" in body, (status, body)
        assert await store.sessions.seats_taken(s["id"]) == 1
        assert await _admitted(stoa_server, s["id"]) == {"s0"}
        await ws0.close()
        participants = stoa_server.app[ROOMS].rooms[room].participants
        await eventually(lambda: not participants, 5, "s0 to leave the room", interval=0.02)
        pc2, status, location, body = await whep(http, "s2")
        try:
            assert status == 201, (status, body)
            assert await store.sessions.seats_taken(s["id"]) == 2
            assert await _admitted(stoa_server, s["id"]) == {"s0", "s2"}
            async with http.delete(stoa_server.base + location, headers={
                    "Authorization": f"Bearer {stoa_server.token(room, 's2', 'student')}"}) as resp:
                assert resp.status == 200
        finally:
            await pc2.close()
