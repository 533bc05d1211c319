"""Capacity through the real WebSocket join path: concurrent joins against a small capacity admit exactly
that many; the others get `session_full` and leave no trace in the room."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from stoa.appkeys import ROOMS, STORE


async def test_concurrent_ws_joins_admit_exactly_capacity(stoa_server, api):
    capacity, tries = 8, 24
    s = await api.ok("POST", "/api/sessions", auth=api.admin,
                     json={"title": "Small room", "instructor": "prof", "capacity": capacity})
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)
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
