"""Resume over the room protocol (docs/protocol.md, "Resume"): a resumable participant whose socket
drops is kept for the grace period and taken back by a join with its resume token; after the grace it
leaves as before. Real server, real WebSockets; the grace runs on a FakeClock the tests move."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.fixtures.clock import FakeClock
from tests.serve import eventually

ROOM = "resume"


async def recv_type(ws, kind: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended while waiting for {kind}: {msg}")
        data = json.loads(msg.data)
        if data["type"] == kind:
            return data


@pytest.fixture
def server_clock():
    return FakeClock()


def room(server):
    from signaling.room import ROOMS
    return server.app[ROOMS].rooms.get(ROOM)


async def test_a_dropped_socket_resumes_the_same_participant(stoa_server):
    url = f"{stoa_server.ws_base}/ws/rooms/{ROOM}"
    token = stoa_server.token(ROOM, "ann", "student")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await ws.send_json({"type": "join", "token": token, "resumable": True})
        joined = await recv_type(ws, "joined")
        resume = joined["resume"]
        kept = room(stoa_server).participants["ann"]
        await ws.close()
        await eventually(lambda: kept.suspended is not None, 10, interval=0.05)
        assert room(stoa_server).participants["ann"] is kept  # still in its place

        ws = await http.ws_connect(url)
        await ws.send_json({"type": "join", "token": token, "resumable": True, "resume": resume})
        again = await recv_type(ws, "joined")
        assert again["resumed"] is True and again["resume"] == resume
        assert room(stoa_server).participants["ann"] is kept and kept.suspended is None
        await ws.send_json({"type": "ping", "t": 1})
        assert (await recv_type(ws, "pong"))["t"] == 1

        # A wrong token is an ordinary join: a new participant replaces the kept one.
        await ws.close()
        await eventually(lambda: kept.suspended is not None, 10, interval=0.05)
        ws = await http.ws_connect(url)
        await ws.send_json({"type": "join", "token": token, "resume": "not-the-token"})
        fresh = await recv_type(ws, "joined")
        assert "resumed" not in fresh and "resume" not in fresh
        assert room(stoa_server).participants["ann"] is not kept
        await ws.close()


async def test_after_the_grace_the_participant_leaves(stoa_server, server_clock):
    from signaling.ws import RESUME_GRACE

    url = f"{stoa_server.ws_base}/ws/rooms/{ROOM}"
    async with aiohttp.ClientSession() as http:
        watcher = await http.ws_connect(url)
        await watcher.send_json({"type": "join", "token": stoa_server.token(ROOM, "tom", "instructor")})
        await recv_type(watcher, "joined")
        ws = await http.ws_connect(url)
        await ws.send_json({"type": "join", "token": stoa_server.token(ROOM, "bo", "student"), "resumable": True})
        await recv_type(ws, "joined")
        kept = room(stoa_server).participants["bo"]
        await ws.close()
        await eventually(lambda: kept.suspended is not None, 10, interval=0.05)
        server_clock.advance(RESUME_GRACE - 0.5)
        for _ in range(3):  # turns for a timer that (wrongly) woke: it must not have
            await asyncio.sleep(0)
        assert room(stoa_server).participants["bo"] is kept and kept.suspended is not None
        server_clock.advance(0.5)
        left = await recv_type(watcher, "participant_left")
        assert left["identity"] == "bo"
        assert "bo" not in room(stoa_server).participants
        await watcher.close()


async def test_leave_is_not_kept_for_a_resume(stoa_server):
    url = f"{stoa_server.ws_base}/ws/rooms/{ROOM}"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await ws.send_json({"type": "join", "token": stoa_server.token(ROOM, "cy", "student"), "resumable": True})
        await recv_type(ws, "joined")
        await ws.send_json({"type": "leave"})
        await eventually(lambda: room(stoa_server) is None or "cy" not in room(stoa_server).participants, 10,
                         interval=0.05)
        await ws.close()
