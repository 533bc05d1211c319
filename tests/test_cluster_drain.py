"""`stoa drain` against real `stoa serve` processes (docs/scaling.md, "Draining a node"): with two nodes on Redis
the drained node's participants are sent to the other node and it exits when empty; alone, it refuses new
joins, keeps its room until the deadline, then exits."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.client import RoomClient
from tests.serve import ServeProcess, eventually
from tests.test_cluster import moved_to, readiness, redis_client, teacher_and_student_on, two_nodes  # noqa: F401

pytestmark = pytest.mark.slow
STOA = str(Path(sys.executable).parent / "stoa")


async def stoa_drain(server: ServeProcess, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(STOA, "drain", "--dev", "--url", server.base, *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def output(proc: asyncio.subprocess.Process, timeout: float = 40) -> str:
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return out.decode()


def test_stoa_drain_help_says_what_it_does():
    import subprocess
    out = subprocess.run([STOA, "drain", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for words in ("--deadline", "new joins", "redirect", "finalizes the recordings", "Exit status"):
        assert words in out.stdout, words


async def test_stoa_drain_sends_a_nodes_participants_to_another_node_and_it_exits(
        tmp_path, redis_url, redis_prefix, redis_client):  # noqa: F811
    async with two_nodes(tmp_path, redis_url, redis_prefix) as (a, b, http, clients):
        await teacher_and_student_on(a, "drained", clients)
        drain = await stoa_drain(a, "--deadline", "30")
        await moved_to(clients, "b", b, "drained")
        out = await output(drain)
        assert drain.returncode == 0, out
        assert out.startswith(f"draining node a at {a.base}\n"), out
        assert "node a has exited" in out.splitlines()[-1], out
        assert a.proc.wait(15) == 0
        assert "drain: node a is empty" in a.log.read_text()
        assert await redis_client.hget(redis_prefix + "room_node_map", "drained") == "b"
        again = await RoomClient(b.base.replace("http", "ws"), "drained",
                                 b.token("drained", "t", "instructor")).connect()
        clients.append(again)
        assert again.joined["type"] == "joined"


async def test_stoa_drain_of_a_lone_node_refuses_new_joins_and_exits_at_its_deadline(tmp_path):
    server = ServeProcess(tmp_path, "--workers", "0", env={"STOA_LOG_LEVEL": "info"})
    clients = []
    try:
        async with aiohttp.ClientSession() as http:
            await server.wait_up(http)
            ws = server.base.replace("http", "ws")
            refused = await stoa_drain(server, "--api-key", "nobody", "--api-secret", "x" * 32)
            out = await output(refused)
            assert refused.returncode == 2 and "refused the drain (401)" in out, out

            stays = await RoomClient(ws, "solo", server.token("solo", "t", "instructor")).connect()
            clients.append(stays)
            assert stays.joined["type"] == "joined"
            started = time.monotonic()
            drain = await stoa_drain(server, "--deadline", "4")
            await eventually(readiness(http, server, 503), 5, "/readyz to say 503")
            late = RoomClient(ws, "solo", server.token("solo", "s", "student"))
            clients.append(late)
            await late.connect(join=False)
            reply = await late.request({"type": "join", "token": late.token}, "joined", "error")
            assert reply["code"] == "draining", reply
            # Nowhere to move it: the room goes on until the deadline, then the shutdown closes it.
            pong = await stays.request({"type": "ping", "t": 2}, "pong")
            assert pong["t"] == 2
            left = await stays.expect("left", timeout=15)
            assert left["code"] == "closed"
            assert time.monotonic() - started >= 3.5
            out = await output(drain)
            assert drain.returncode == 0, out
            assert "1 participant(s) left (rooms: solo 1)" in out, out
            assert "has exited" in out.splitlines()[-1], out
            assert server.proc.wait(15) == 0
            assert "reached its deadline with 1 participant(s) left in solo" in server.log.read_text()
    finally:
        for c in clients:
            await c.close()
        server.stop()
