"""Several `stoa serve` nodes on one Redis (docs/scaling.md, "Several nodes"): the node registry, the Redis
heartbeat and /readyz, and routing a room's joins to its home node. Real Redis; each test keys its data
under its own prefix, and the outage tests stop a private redis-server of their own, never the shared one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from signaling.cluster import GONE_S, Cluster, Node
from tests.serve import ServeProcess, eventually, free_port

pytestmark = pytest.mark.slow
SDP = "application/sdp"


def node(tmp_path, name: str, redis_url: str, prefix: str, *extra: str, env: dict | None = None) -> ServeProcess:
    (tmp_path / name).mkdir(exist_ok=True)  # a node started again keeps its data directory
    return ServeProcess(tmp_path / name, "--workers", "0", "--redis", redis_url, "--node-id", name, *extra,
                        env={"STOA_REDIS_PREFIX": prefix, "STOA_LOG_LEVEL": "info", "STOA_DEBUG_HOOKS": "true",
                             "STOA_OVERLOAD_CONTROL": "false", **(env or {})})  # a loaded CI box is not a full node


def upgrade(dsn: str) -> None:
    """Nodes share one PostgreSQL database (as a cluster must, docs/scaling.md): its schema first."""
    out = subprocess.run([str(Path(sys.executable).parent / "stoa"), "db", "upgrade", "--database", dsn],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, redis_url: str, prefix: str):
    """Nodes a and b up, an HTTP session, and a list of room clients closed (then the nodes stopped) at the end."""
    a, b = node(tmp_path, "a", redis_url, prefix), node(tmp_path, "b", redis_url, prefix)
    clients: list = []
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.wait_up(http), b.wait_up(http))
            yield a, b, http, clients
    finally:
        for c in clients:
            await c.close()
        a.stop()
        b.stop()


async def teacher_and_student_on(server, room: str, clients: list) -> None:
    """A teacher and a student joined on `server` over the room protocol (closed by two_nodes)."""
    from tests.client import RoomClient

    for identity, role in (("t", "instructor"), ("s", "student")):
        client = await RoomClient(server.base.replace("http", "ws"), room, server.token(room, identity, role)).connect()
        clients.append(client)
        assert client.joined["type"] == "joined"


async def moved_to(clients: list, node_id: str, server, room: str) -> None:
    """Each client got `redirect` to `room` on `server`, then its socket closed with 4307."""
    for client in clients:
        moved = await client.expect("redirect", timeout=15)
        assert moved["node"] == node_id and moved["page"] == f"{server.base}/rooms/{room}"
        await eventually(lambda c=client: c.ws.closed, 5, "the moved socket to close")
        assert client.ws.close_code == 4307


async def records(client, prefix: str) -> dict[str, Node]:
    return {k: Node.from_json(v) for k, v in (await client.hgetall(prefix + "nodes")).items()}


def readiness(http, server, status: int):
    """A check for eventually(): /readyz's body once it answers `status`."""
    async def check():
        got, body = await readyz(http, server)
        return body if got == status else None
    return check


async def readyz(http, server) -> tuple[int, dict]:
    try:
        async with http.get(server.base + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status, await resp.json()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return 0, {"error": repr(exc)}


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop, pause and restart."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait_up(self) -> None:
        client = aioredis.Redis.from_url(self.url, socket_timeout=1)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    assert time.monotonic() < deadline, "the private redis-server did not start"
                    await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def redis_client(redis_url, redis_prefix):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=redis_prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_two_nodes_agree_on_each_rooms_home(redis_url, redis_prefix, redis_client):
    """Placement is one Lua script: nodes placing the same rooms at the same moment get one home each."""
    census = {"a": {}, "b": {"busy-room": 3}}
    clusters = [Cluster(aioredis.Redis.from_url(redis_url, decode_responses=True), node_id=n,
                        address=f"http://{n}.example:8080", prefix=redis_prefix, census=lambda n=n: census[n])
                for n in ("a", "b")]
    for c in clusters:
        await c.start()
    try:
        rooms = [f"room{i}" for i in range(20)]
        homes = await asyncio.gather(*(c.home(r) for r in rooms for c in clusters))
        seen = {}
        for (room, c), home in zip(((r, c) for r in rooms for c in clusters), homes):
            seen.setdefault(room, set()).add(c.node_id if home is None else home.id)
        assert all(len(h) == 1 for h in seen.values()), seen
        stored = await redis_client.hgetall(redis_prefix + "room_node_map")
        assert stored.pop("busy-room") == "b", "a node's record claims the rooms it serves"
        assert {r: h.pop() for r, h in seen.items()} == stored
        # b carries 3 participants and a none: a takes the new rooms, whichever node was asked first.
        assert set(stored.values()) == {"a"}
        # A node counted gone loses its rooms to the next one asked.
        census["a"] = {}
        await clusters[0].close()
        clusters = clusters[1:]
        await asyncio.sleep(0)
        assert await clusters[0].home("room0") is None  # deleted with a's record at its shutdown
        assert (await redis_client.hget(redis_prefix + "room_node_map", "room0")) == "b"
    finally:
        for c in clusters:
            await c.close()


async def test_nodes_register_refresh_and_are_gone_5_s_after_their_last_refresh(
        tmp_path, redis_url, redis_prefix, redis_client):
    a, b = node(tmp_path, "a", redis_url, redis_prefix), node(tmp_path, "b", redis_url, redis_prefix)
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.wait_up(http), b.wait_up(http))
            found = await records(redis_client, redis_prefix)
            assert set(found) == {"a", "b"}
            assert found["a"].address == a.base and found["b"].address == b.base
            assert found["a"].participants == 0 and found["a"].rooms == {}
            first = found["b"].updated_at
            await asyncio.sleep(2.5)
            assert (await records(redis_client, redis_prefix))["b"].updated_at > first, "refreshed every 2 s"
            assert await readyz(http, a) == (200, {"status": "ready", "node": "a", "redis": "ok",
                                                   "draining": False})
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(10)
            killed = time.time()
            last = (await records(redis_client, redis_prefix))["b"]
            assert last.alive(killed), "a killed node counts as alive until GONE_S after its last refresh"
            await asyncio.sleep(max(0.0, last.updated_at + GONE_S - time.time()) + 0.1)
            assert not (await records(redis_client, redis_prefix))["b"].alive(time.time())
            assert (await records(redis_client, redis_prefix))["a"].alive(time.time())
        a.stop()
        assert "a" not in await records(redis_client, redis_prefix), "a stopped node removes its record"
    finally:
        a.stop()
        b.stop()


async def test_a_hung_or_restarted_redis_is_detected_and_the_node_serves_on(tmp_path, redis_prefix):
    from tests.client import RoomClient

    redis = PrivateRedis(tmp_path)
    redis.start()
    await redis.wait_up()
    a = node(tmp_path, "a", redis.url, redis_prefix)
    clients = []
    try:
        async with aiohttp.ClientSession() as http:
            await a.wait_up(http)
            ws = a.base.replace("http", "ws")
            teacher = await RoomClient(ws, "lecture", a.token("lecture", "t", "instructor")).connect()
            clients.append(teacher)
            assert teacher.joined["type"] == "joined"

            redis.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
            stopped = time.monotonic()
            body = await eventually(readiness(http, a, 503), 8, "/readyz to say 503")
            assert time.monotonic() - stopped < 5.0
            assert body["redis"] == "down" and body["status"] == "degraded"
            assert "Redis is not answering" in a.log.read_text()
            # The node serves on: the room it hosts, and a new room, placed here without Redis.
            pong = await teacher.request({"type": "ping", "t": 1}, "pong")
            assert pong["t"] == 1
            student = await RoomClient(ws, "other", a.token("other", "s", "student")).connect()
            clients.append(student)
            assert student.joined["type"] == "joined"
            await asyncio.sleep(3)
            redis.proc.send_signal(signal.SIGCONT)
            await eventually(readiness(http, a, 200), 8, "/readyz to say 200")
            assert "Redis answers again after" in a.log.read_text()

            redis.kill()  # a restart: everything it held is gone
            await eventually(readiness(http, a, 503), 8, "/readyz to say 503")
            redis.start()
            await redis.wait_up()
            await eventually(readiness(http, a, 200), 8, "/readyz to say 200")
            client = aioredis.Redis.from_url(redis.url, decode_responses=True)
            try:
                # Registered again, with the rooms it served meanwhile claimed as its own.
                record = (await records(client, redis_prefix))["a"]
                assert record.rooms == {"lecture": 1, "other": 1}
                assert await client.hgetall(redis_prefix + "room_node_map") == {"lecture": "a", "other": "a"}
            finally:
                await client.aclose()
    finally:
        for c in clients:
            await c.close()
        a.stop()
        redis.kill()


async def test_joins_are_sent_to_the_rooms_home_node(tmp_path, redis_url, redis_prefix, redis_client):
    from tests.client import RoomClient

    async with two_nodes(tmp_path, redis_url, redis_prefix) as (a, b, http, clients):
        teacher = await RoomClient(a.base.replace("http", "ws"), "physics",
                                   a.token("physics", "t", "instructor")).connect()
        clients.append(teacher)
        assert teacher.joined["type"] == "joined"  # asked first, and no busier than b: a is home
        assert await redis_client.hget(redis_prefix + "room_node_map", "physics") == "a"

        # The room protocol on b: a `redirect` message, then close code 4307.
        student = RoomClient(b.base.replace("http", "ws"), "physics", b.token("physics", "s", "student"))
        clients.append(student)
        await student.connect(join=False)
        moved = await student.request({"type": "join", "token": student.token}, "redirect", "joined", "error")
        assert moved == {
            "type": "redirect", "node": "a", "reason": "room physics is served by node a",
            "page": f"{a.base}/rooms/physics", "url": f"{a.base.replace('http', 'ws')}/ws/rooms/physics"}
        await eventually(lambda: student.ws.closed, 5, "the redirected socket to close")
        assert student.ws.close_code == 4307

        # WHIP on b: 307 to the same path on a, the query kept (RFC 9725 4.5). (WHEP is served on b:
        # test_a_teachers_broadcast_on_a_is_decoded_by_viewers_on_b_and_c.)
        publisher = b.token("physics", "obs", "instructor")
        async with http.post(f"{b.base}/whip/physics?password=x", data="v=0\r\n", allow_redirects=False,
                             headers={"Content-Type": SDP, "Authorization": f"Bearer {publisher}"}) as resp:
            assert resp.status == 307
            assert resp.headers["Location"] == f"{a.base}/whip/physics?password=x"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        # The page on b: 307 to the page on a.
        token = b.token("physics", "v", "viewer")
        async with http.get(f"{b.base}/rooms/physics?token={token}", allow_redirects=False) as resp:
            assert resp.status == 307 and resp.headers["Location"] == f"{a.base}/rooms/physics?token={token}"
        # A bad token is refused where it lands; nothing is placed for it.
        async with http.post(f"{b.base}/whip/chemistry", data="v=0\r\n",
                             headers={"Content-Type": SDP, "Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        assert await redis_client.hget(redis_prefix + "room_node_map", "chemistry") is None
        # The relay between nodes takes only requests signed with the cluster's key.
        async with http.get(f"{a.base}/cluster/relay/physics?node=x&udp=127.0.0.1:9&ts={int(time.time())}"
                            "&sig=00") as resp:
            assert resp.status == 403

        # a's record says what it carries; a new room asked for on a goes to the less loaded b.
        async def a_carries_physics():
            return (await records(redis_client, redis_prefix))["a"].rooms == {"physics": 1}
        await eventually(a_carries_physics, 5, "a's record to list the room")
        async with http.get(f"{a.base}/rooms/chemistry?token={a.token('chemistry', 's', 'student')}",
                            allow_redirects=False) as resp:
            assert resp.status == 307 and resp.headers["Location"].startswith(f"{b.base}/rooms/chemistry?")
        assert await redis_client.hget(redis_prefix + "room_node_map", "chemistry") == "b"
        chem = await RoomClient(b.base.replace("http", "ws"), "chemistry",
                                b.token("chemistry", "s", "student")).connect()
        clients.append(chem)
        assert chem.joined["type"] == "joined"


async def test_sigterm_sends_a_nodes_room_participants_to_another_node(tmp_path, redis_url, redis_prefix,
                                                                       redis_client):
    from tests.client import RoomClient

    async with two_nodes(tmp_path, redis_url, redis_prefix) as (a, b, http, clients):
        await teacher_and_student_on(a, "history", clients)
        a.proc.send_signal(signal.SIGTERM)
        await moved_to(clients, "b", b, "history")
        assert await redis_client.hget(redis_prefix + "room_node_map", "history") == "b"
        assert a.proc.wait(15) == 0
        again = await RoomClient(b.base.replace("http", "ws"), "history",
                                 b.token("history", "t", "instructor")).connect()
        clients.append(again)
        assert again.joined["type"] == "joined"


def test_one_node_without_redis_loads_no_redis_code(tmp_path):
    """No `redis` setting: no cluster code path at all, and /readyz says ready."""
    script = (
        "import sys, asyncio\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from stoa.app import build_app\n"
        "from shared.config import load_settings\n"
        f"s = load_settings(environ={{}}, overrides={{'dev': True, 'data_dir': {str(tmp_path)!r}}})\n"
        "async def main():\n"
        "    async with TestClient(TestServer(build_app(s))) as c:\n"
        "        r = await c.get('/readyz')\n"
        "        print(r.status, await r.text())\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith(('redis.', 'signaling.cluster'))))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == '200 {"status": "ready"}' and lines[-1] == "[]", out.stdout


async def metric(http, server, name: str, labels: str = "") -> float:
    async with http.get(server.base + "/metrics") as resp:
        text = await resp.text()
    line = next((l for l in text.splitlines() if l.startswith(f"{name}{labels} ")), None)
    assert line is not None, f"{name}{labels} is not in /metrics"
    return float(line.split()[-1])


async def test_a_teachers_broadcast_on_a_is_decoded_by_viewers_on_b_and_c(
        tmp_path, redis_url, redis_prefix, redis_client):
    """WHEP viewers are served where they land; the home relays the broadcast once per node, over UDP in
    authenticated datagrams; keyframe requests come back from the edges, and a lossy link is repaired."""
    from tests.media import CounterVideoTrack, ToneAudioTrack
    from tests.test_whip_whep import WhepViewer, WhipPublisher, assert_counters_healthy

    room = "lecture"
    nodes = {n: node(tmp_path, n, redis_url, redis_prefix) for n in ("a", "b", "c")}
    a, b, c = nodes.values()
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(n.wait_up(http) for n in nodes.values()))
            async with http.post(f"{a.base}/debug/relay-loss?rate=0.05") as resp:
                assert resp.status == 200  # 5% of the datagrams from a to the edges are lost
            teacher = await WhipPublisher(http, a.base, room, a.token(room, "teacher", "instructor")).publish(
                CounterVideoTrack(), ToneAudioTrack())
            peers.append(teacher.pc)
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "a"
            viewers = []
            for name, server in (("b1", b), ("b2", b), ("c1", c)):
                viewer = await WhepViewer(http, server.base, room, server.token(room, name, "viewer")).start()
                peers.append(viewer.pc)
                viewers.append(viewer)
            for viewer in viewers:
                await eventually(lambda v=viewer: "video" in v.collectors, 15, "the relayed video track")
                await viewer.collectors["video"].wait_frames(30, timeout=20)
            for viewer in viewers:
                assert_counters_healthy(viewer.collectors["video"].counters)
                assert viewer.collectors["audio"].frames > 0
            # Once per node: b carries two viewers over one link.
            assert await metric(http, a, "stoa_relay_node_links", '{node="b"}') == 1
            assert await metric(http, a, "stoa_relay_node_links", '{node="c"}') == 1
            assert await metric(http, b, "stoa_relay_edge_rooms") == 1
            for reason in ("bad_tag", "replay", "malformed"):  # unknown_link: early datagrams, racing the hello
                assert await metric(http, b, "stoa_relay_rejected_datagrams_total", f'{{reason="{reason}"}}') == 0
            assert await metric(http, a, "stoa_relay_node_repairs_total") > 0, "the edges' NACK misses were resent"
            # The viewers' sessions are b's and c's: their session URLs answer there.
            assert viewers[0].location.startswith(f"/whep/{room}/")
            async with http.delete(b.base + viewers[1].location,
                                   headers={"Authorization": f"Bearer {viewers[1].token}"}) as resp:
                assert resp.status == 200
            before = len(viewers[0].collectors["video"].counters)
            await eventually(lambda: len(viewers[0].collectors["video"].counters) > before + 20, 10,
                             "b's remaining viewer to keep decoding")

            # SIGKILL c: the home stops its link; c's viewer POSTs again on b and decodes there within 5 s.
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait(10)
            killed = time.monotonic()
            again = await WhepViewer(http, b.base, room, b.token(room, "c1", "viewer")).start()
            peers.append(again.pc)
            await eventually(lambda: "video" in again.collectors and again.collectors["video"].counters, 10,
                             "c's viewer decoding on b")
            assert time.monotonic() - killed < 5.0
            assert await metric(http, b, "stoa_relay_edge_rooms") == 1, "b's one link carries it"

            async def c_link_gone():
                async with http.get(a.base + "/metrics") as resp:
                    return 'stoa_relay_node_links{node="c"}' not in await resp.text()
            await eventually(c_link_gone, 15, "a to stop relaying to the dead node")
            before = len(viewers[0].collectors["video"].counters)
            await eventually(lambda: len(viewers[0].collectors["video"].counters) > before + 20, 10,
                             "the room to go on on a")
    finally:
        for pc in peers:
            await pc.close()
        for server in nodes.values():
            server.stop()


async def shut_down(nodes: dict, peers: list, stopped=None) -> None:
    """The end of a multi-node test: `stopped` (a SIGSTOPped node) continued, peers closed, nodes stopped."""
    if stopped is not None and stopped.proc.poll() is None:
        stopped.proc.send_signal(signal.SIGCONT)
    for pc in peers:
        await pc.close()
    for server in nodes.values():
        server.stop()


async def tree_viewers(http, nodes: dict, room: str, peers: list) -> dict:
    """A teacher publishing on a, then a WHEP viewer on b (a's one edge node with relay_fanout 1) and one on
    c (sent down to b): {"b1": viewer, "c1": viewer}, both with their relayed video track."""
    from tests.media import CounterVideoTrack, ToneAudioTrack
    from tests.test_whip_whep import WhepViewer, WhipPublisher

    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    await asyncio.gather(*(n.wait_up(http) for n in nodes.values()))
    teacher = await WhipPublisher(http, a.base, room, a.token(room, "teacher", "instructor")).publish(
        CounterVideoTrack(), ToneAudioTrack())
    peers.append(teacher.pc)
    viewers = {}
    for name, server in (("b1", b), ("c1", c)):  # b first: it is a's one edge node
        viewer = viewers[name] = await WhepViewer(http, server.base, room, server.token(room, name, "viewer")).start()
        peers.append(viewer.pc)
        await eventually(lambda v=viewer: "video" in v.collectors, 15, f"{name}'s relayed video track")
    return viewers


async def test_a_relay_tree_home_to_edge_to_edge_is_decoded_on_the_third_node(
        tmp_path, redis_url, redis_prefix, redis_client):
    """relay_fanout 1: the home a relays the room to one edge node, b; c's relay request is sent down to b,
    which relays onward, one copy per hop. Keyframe requests and NACK misses flow back up: c's viewer starts
    on a keyframe and its relay's losses (b drops 5% on purpose) are repaired from b."""
    from tests.test_whip_whep import assert_counters_healthy

    room = "tree"
    nodes = {n: node(tmp_path, n, redis_url, redis_prefix, env={"STOA_RELAY_FANOUT": "1"}) for n in ("a", "b", "c")}
    a, b, c = nodes.values()
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(n.wait_up(http) for n in nodes.values()))
            async with http.post(f"{b.base}/debug/relay-loss?rate=0.05") as resp:
                assert resp.status == 200  # 5% of what b relays onward to c is lost
            viewers = await tree_viewers(http, nodes, room, peers)
            for viewer in viewers.values():
                await viewer.collectors["video"].wait_frames(30, timeout=20)
                assert_counters_healthy(viewer.collectors["video"].counters)
                assert viewer.collectors["audio"].frames > 0
            # One copy per hop: a sends to b only, b sends on to c.
            assert await metric(http, a, "stoa_relay_node_links", '{node="b"}') == 1
            async with http.get(a.base + "/metrics") as resp:
                assert 'stoa_relay_node_links{node="c"}' not in await resp.text()
            assert await metric(http, b, "stoa_relay_node_links", '{node="c"}') == 1
            assert await metric(http, c, "stoa_relay_edge_rooms") == 1
            for reason in ("bad_tag", "replay", "malformed"):  # unknown_link: early datagrams, racing the hello
                assert await metric(http, c, "stoa_relay_rejected_datagrams_total", f'{{reason="{reason}"}}') == 0
            assert await metric(http, b, "stoa_relay_node_repairs_total") > 0, "c's NACK misses were resent by b"
    finally:
        for pc in peers:
            await pc.close()
        for server in nodes.values():
            server.stop()


async def test_a_relay_trees_edge_whose_parent_hangs_relays_from_the_home_again(
        tmp_path, redis_url, redis_prefix, redis_client):
    """relay_fanout 1: a relays to b, b onward to c. b hangs (SIGSTOP: its sockets stay open, its relay goes
    silent). c probes b, its parent (not the room's home a, which answers), finds it gone, and asks a again
    naming b as lost: a drops b and relays to c itself. c's WHEP viewer decodes on the session it had."""
    room = "tree-hang"
    nodes = {n: node(tmp_path, n, redis_url, redis_prefix, env={"STOA_RELAY_FANOUT": "1"}) for n in ("a", "b", "c")}
    a, b, c = nodes.values()
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            viewers = await tree_viewers(http, nodes, room, peers)
            for viewer in viewers.values():
                await viewer.collectors["video"].wait_frames(20, timeout=20)
            assert await metric(http, b, "stoa_relay_node_links", '{node="c"}') == 1
            session = viewers["c1"].location

            b.proc.send_signal(signal.SIGSTOP)
            hung = time.monotonic()
            video = viewers["c1"].collectors["video"]
            before = len(video.counters)
            await eventually(lambda: len(video.counters) > before + 20, 20, "c's viewer to decode again")
            again = time.monotonic() - hung
            log = c.log.read_text()
            assert "no media for" in log and "node b does not answer" in log, "c probed its parent b"
            assert "comes from node a again" in log
            assert await metric(http, a, "stoa_relay_node_links", '{node="c"}') == 1
            assert viewers["c1"].location == session
            print(f"c's viewer decodes again {again:.2f} s after its parent b hung")
    finally:
        await shut_down(nodes, peers, stopped=b)


async def test_raised_hands_survive_a_dead_home_in_order(tmp_path, redis_url, redis_prefix, redis_client, pg_dsn):
    """Hands raised on a, one lowered; SIGKILL a. On b, the room's new home, the queue read back from the shared
    database is the same (who, in raise order, the lowered one not back), for the teacher and the students."""
    from types import SimpleNamespace

    from tests.fixtures.classroom_e2e import Member

    room = "hands"
    upgrade(pg_dsn)
    a, b = (node(tmp_path, n, redis_url, redis_prefix, "--database", pg_dsn) for n in ("a", "b"))
    members: list[Member] = []

    def on(server, identity: str, role: str = "student") -> Member:
        at = SimpleNamespace(ws_base=server.base.replace("http", "ws"),
                             token=lambda r, i, ro, name=None: server.token(r, i, ro))
        member = Member(at, room, identity, role, channel=False)  # classroom messages over the WebSocket
        members.append(member)
        return member

    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.wait_up(http), b.wait_up(http))
            teacher = await on(a, "t", "instructor").start()
            students = {i: await on(a, i).start() for i in ("s2", "s0", "s1")}
            for identity in ("s2", "s0", "s1"):  # raise order, not name order
                await students[identity].ok("hand.raise")
            await students["s0"].ok("hand.lower")
            await teacher.wait(lambda p: p.get("type") == "hand.queue"
                               and [h["identity"] for h in p["data"]["queue"]] == ["s2", "s1"])
            before = [(h["identity"], h["position"]) for h in teacher.of_type("hand.queue")[-1]["data"]["queue"]]
            assert before == [("s2", 1), ("s1", 2)]

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            # What the page does: join through b saying a was lost; b finds a gone and takes the room.
            probe = on(b, "t", "instructor").client
            await probe.connect(join=False)
            moved = await probe.request({"type": "join", "token": probe.token, "lost": "a"}, "redirect", "error")
            assert moved["type"] == "redirect" and moved["node"] == "b", moved
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "b"

            teacher_b = await on(b, "t", "instructor").start()
            after = [(h["identity"], h["position"]) for h in teacher_b.state()["hands"]["queue"]]
            assert after == before
            s1 = await on(b, "s1").start()
            assert s1.state()["hands"] == {"raised": True, "position": 2, "count": 2}
            s0 = await on(b, "s0").start()
            assert s0.state()["hands"] == {"raised": False, "position": None, "count": 2}
            # The queue goes on from there: lowering on b is stored and published as before.
            await teacher_b.ok("hand.lower", {"identity": "s2"})
            await s1.wait(lambda p: p.get("type") == "hand.state" and p["data"]["position"] == 1)
    finally:
        for m in members:
            await m.close()
        a.stop()
        b.stop()


@pytest.mark.parametrize("death,names", [("SIGKILL", "abc"), ("SIGSTOP", "abc"), ("SIGKILL", "ab")])
async def test_an_edges_whep_viewers_keep_their_sessions_when_the_home_dies(
        tmp_path, redis_url, redis_prefix, redis_client, death, names):
    """A teacher on a, WHEP viewers on the edge c. a dies (SIGKILL: its relay socket closes; SIGSTOP: a hung
    home, the socket stays open and the relay goes silent). c probes a, finds it gone, places the room again
    (on b, the least loaded) and relays from there; the teacher's new WHIP POST lands there, and c's viewers
    decode the new publisher's frames on the sessions they had. With two nodes the edge b is the least loaded
    one left: it becomes the home, and its viewers follow the teacher publishing there."""
    from tests.media import CounterVideoTrack, ToneAudioTrack
    from tests.test_whip_whep import WhepViewer, WhipPublisher

    room = "rehome"
    nodes = {n: node(tmp_path, n, redis_url, redis_prefix) for n in names}
    a, b, c = nodes["a"], nodes["b"], nodes[names[-1]]  # c: the edge of the viewers (b with two nodes)
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(n.wait_up(http) for n in nodes.values()))
            teacher = await WhipPublisher(http, a.base, room, a.token(room, "teacher", "instructor")).publish(
                CounterVideoTrack(), ToneAudioTrack())
            peers.append(teacher.pc)
            viewers = []
            for name in ("c1", "c2"):
                viewer = await WhepViewer(http, c.base, room, c.token(room, name, "viewer")).start()
                peers.append(viewer.pc)
                viewers.append(viewer)
            for viewer in viewers:
                await eventually(lambda v=viewer: "video" in v.collectors, 15, "the relayed video track")
                await viewer.collectors["video"].wait_frames(20, timeout=20)
            sessions = [v.location for v in viewers]

            a.proc.send_signal(getattr(signal, death))
            killed = time.monotonic()
            await teacher.pc.close()

            quick = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))  # a hung a never answers

            async def republish():  # what OBS does: POST again (through any node) until one takes it
                publisher = WhipPublisher(quick, b.base, room, b.token(room, "teacher", "instructor"))
                try:
                    return await publisher.publish(CounterVideoTrack(first=30000), ToneAudioTrack())
                except (aiohttp.ClientError, asyncio.TimeoutError, AssertionError):
                    await publisher.pc.close()
                    return None
            try:
                teacher = await eventually(republish, 10, "the teacher's WHIP POST to be taken", interval=0.2)
            finally:
                await quick.close()
            peers.append(teacher.pc)
            for viewer in viewers:
                await eventually(lambda v=viewer: sum(n >= 30000 for n in v.collectors["video"].counters) >= 20,
                                 15, "c's viewer to decode the new publisher's frames")
            again = time.monotonic() - killed
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "b"
            log = c.log.read_text()
            if death == "SIGSTOP":
                assert "no media for" in log, "a hung home is noticed by the relay's silence"
            if c is b:
                assert "is served by this node now" in log
                assert await metric(http, b, "stoa_relay_edge_rooms") == 0
            else:
                assert "comes from node b again" in log
                assert await metric(http, c, "stoa_relay_edge_rooms") == 1
                assert await metric(http, b, "stoa_relay_node_links", '{node="c"}') == 1
            # The same sessions: no new POST; their URLs still answer on c.
            assert [v.location for v in viewers] == sessions
            for viewer in viewers:
                async with http.delete(c.base + viewer.location,
                                       headers={"Authorization": f"Bearer {viewer.token}"}) as resp:
                    assert resp.status == 200
            print(f"{death} ({names}): the edge's viewers decode the new publisher {again:.2f} s after a died")
    finally:
        await shut_down(nodes, peers, stopped=a)
