"""Chat latency across nodes: a member on the room's home against an edge member (docs/scaling.md, "Classroom
state across nodes").

Starts two `stoa serve --dev` nodes, a and b, on the machine's Redis (127.0.0.1:6379, a key prefix of this
run's own) with `spread_members` on, so students joining b are edge members of a room whose home is a. N
members join each node over the room protocol (WebSocket transport: they never answer the subscriber offer),
plus one sender on each node. The two senders take turns, one chat line every 1/rate s, so both variants
(sent on the home, sent on the edge) alternate in one run; every line carries its send time (time.time(); one
machine, one clock) and every member records receipt minus send. Prints p50 / p95 / p99 per (sender's node,
receiver's node).

    .venv/bin/python bench/edge_chat.py [--members 20] [--messages 40] [--rate 4]

Not part of the test suite; the clients share the cores with both servers and Redis (run it under
/work/wt/bench-lock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.chat_fanout import free_port, percentile  # noqa: E402  (one copy of the bench helpers)
from shared.auth import mint_token  # noqa: E402
from shared.config import DEV_API_KEY, DEV_API_SECRET  # noqa: E402

ROOM = "bench-edge"


def start_node(name: str, data: str, prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "STOA_REDIS_PREFIX": prefix, "STOA_SPREAD_MEMBERS": "true",
           "STOA_OVERLOAD_CONTROL": "false"}
    os.makedirs(os.path.join(data, name), exist_ok=True)
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "stoa"), "serve", "--dev", "--port", str(port),
         "--ice-address", "127.0.0.1", "--data-dir", os.path.join(data, name), "--workers", "0",
         "--redis", "redis://127.0.0.1:6379/0", "--node-id", name, "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=open(os.path.join(data, name + ".log"), "ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(http, base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with http.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{base} did not come up")
        await asyncio.sleep(0.2)


class Client:
    def __init__(self, http, base: str, identity: str, role: str, node: str):
        self.http, self.base, self.identity, self.role, self.node = http, base, identity, role, node
        self.ws = None
        self.latencies: dict[str, list[float]] = {"a": [], "b": []}  # sender's node -> ms
        self.joined: dict | None = None
        self.state = asyncio.Event()
        self.task = None

    async def connect(self) -> None:
        token = mint_token(DEV_API_KEY, DEV_API_SECRET, room=ROOM, identity=self.identity, role=self.role,
                           name=self.identity)
        self.ws = await self.http.ws_connect(f"{self.base.replace('http', 'ws')}/ws/rooms/{ROOM}?token={token}")
        self.task = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self.state.wait(), 20)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.time()
            event = json.loads(msg.data)
            if event["type"] == "joined":
                self.joined = event
            elif event["type"] == "data":
                payload = event["payload"]
                if payload.get("type") == "state":
                    self.state.set()
                elif payload.get("type") == "chat.message" and payload["data"]["text"].startswith("bench "):
                    _, node, sent = payload["data"]["text"].split()
                    self.latencies[node].append((now - float(sent)) * 1000)

    async def chat(self, node: str, n: int) -> None:
        env = {"v": 1, "type": "chat.send", "id": f"{self.identity}-{n}",
               "data": {"text": f"bench {node} {time.time():.6f}"}}
        await self.ws.send_str(json.dumps({"type": "data", "payload": env}))

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()


async def main(args) -> None:
    prefix = f"stoa-bench-{uuid.uuid4().hex[:8]}:"
    data = tempfile.mkdtemp(prefix="stoa-edge-chat-")
    print(f"node logs: {data}/a.log, {data}/b.log", file=sys.stderr)
    (pa, a), (pb, b) = start_node("a", data, prefix), start_node("b", data, prefix)
    clients: list[Client] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:  # >100 sockets
            await asyncio.gather(wait_up(http, a), wait_up(http, b))
            teacher = Client(http, a, "teacher", "instructor", "a")  # the first join places the room on a
            await teacher.connect()
            senders = {"a": Client(http, a, "send-a", "student", "a"), "b": Client(http, b, "send-b", "student", "b")}
            members = [Client(http, base, f"m{node}{i}", "student", node)
                       for node, base in (("a", a), ("b", b)) for i in range(args.members)]
            for client in (*senders.values(), *members):
                await client.connect()
            clients = [teacher, *senders.values(), *members]
            edge = [c for c in members if c.node == "b"]
            assert all(c.joined["cluster"].get("home") == "a" for c in edge), "b's members are not edge members"
            await asyncio.sleep(3)  # the joins' work (subscriber connections offered) is done before timing
            for i in range(args.messages * 2):
                node = "ab"[i % 2]
                await senders[node].chat(node, i)
                await asyncio.sleep(1 / args.rate)
            await asyncio.sleep(2)
            print(f"edge chat: {args.members} members on the home a and {args.members} edge members on b, "
                  f"{args.messages} lines sent on each node, alternating, {args.rate}/s")
            for sent in "ab":
                for recv in "ab":
                    values = [v for c in members if c.node == recv for v in c.latencies[sent]]
                    expected = args.members * args.messages
                    print(f"edge chat sent on {'home' if sent == 'a' else 'edge'} -> "
                          f"{'home' if recv == 'a' else 'edge'} members: {len(values)}/{expected} received, "
                          f"p50 {percentile(values, 50):.2f} ms, p95 {percentile(values, 95):.2f} ms, "
                          f"p99 {percentile(values, 99):.2f} ms")
            for c in clients:
                await c.close()
    finally:
        for proc in (pa, pb):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        import redis.asyncio as aioredis  # the run's keys (its streams) go with it

        client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rate", type=float, default=4.0)
    asyncio.run(main(parser.parse_args()))
