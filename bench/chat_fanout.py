"""Chat fan-out latency through a real server: send -> receipt of one chat message at every member.

Starts `stoa serve --dev` on 127.0.0.1 (a subprocess, SQLite in a temporary data dir), joins N members over
the room protocol from worker processes, and has one instructor (in this process) send chat messages. Each
message carries its send time (time.time(); all processes share the clock); every member records receipt
time minus send time. Prints p50 / p99 per (transport, members).

Transports: "datachannel" (each member answers the subscriber offer; classroom messages travel on the data
channel "stoa", over a real aiortc peer connection on loopback) and "websocket" (members never answer the
offer, so the bridge falls back to the room WebSocket).

    .venv/bin/python bench/chat_fanout.py [--members 100 300] [--transports datachannel websocket]
                                          [--messages 20] [--procs 3]

Not part of the test suite. The client processes share the machine's cores with the server, so the figures
include their JSON parsing and scheduling; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MARK = "bench:"
WARM = "warm:"
TYPES: "collections.Counter[str]" = None  # set per process: message types seen (diagnostics)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def tokens_for(room: str, identities: list[str], role: str = "student") -> list[str]:
    from shared.auth import mint_token
    from shared.config import DEV_API_KEY, DEV_API_SECRET

    return [mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=i, role=role, name=i) for i in identities]


class Stamped(list):
    """Stands in for RoomClient's message lists: times bench messages on arrival and keeps nothing else big."""

    def __init__(self, sink: list[float], keep_protocol: bool):
        super().__init__()
        self.sink = sink
        self.keep_protocol = keep_protocol
        self.replies: list[dict] = []  # acks and errors (the sender's)
        self.warm = False              # saw the warm-up line: the join storm before it has drained

    def append(self, item) -> None:
        now = time.time()
        payload = item.get("payload") if item.get("type") == "data" else item
        TYPES[str(item.get("type")) + "/" + str(payload.get("type") if isinstance(payload, dict) else None)] += 1
        if isinstance(payload, dict) and payload.get("type") == "chat.message":
            text = payload.get("data", {}).get("text", "")
            if text.startswith(MARK):
                self.sink.append(now - float(text.split(":")[2]))
            elif text.startswith(WARM):
                self.warm = True
            return
        if isinstance(payload, dict) and payload.get("type") in ("ack", "error"):
            self.replies.append(payload)
        if self.keep_protocol and item.get("type") != "data":
            super().append(item)


def make_client(base_ws: str, room: str, token: str, channel: bool, sink: list[float]):
    from tests.client import RoomClient

    class BenchClient(RoomClient):
        async def _answer(self, event) -> None:
            if channel:
                await super()._answer(event)

    client = BenchClient(base_ws, room, token)
    client.events = Stamped(sink, keep_protocol=True)
    client.data_messages = Stamped(sink, keep_protocol=False)
    return client


async def _worker(base_ws: str, room: str, tokens: list[str], channel: bool, conn) -> None:
    global TYPES
    TYPES = collections.Counter()
    sink: list[float] = []
    clients = [make_client(base_ws, room, t, channel, sink) for t in tokens]
    for i in range(0, len(clients), 10):
        await asyncio.gather(*(c.connect() for c in clients[i:i + 10]), return_exceptions=True)
    opened = 0
    if channel:
        deadline = time.monotonic() + 30 + len(clients)
        while time.monotonic() < deadline:
            opened = sum(1 for c in clients if c.data_channel is not None and c.data_channel.readyState == "open")
            if opened == len(clients):
                break
            await asyncio.sleep(0.2)
    joined = sum(1 for c in clients if c.joined and c.joined.get("type") == "joined")
    conn.send({"joined": joined, "opened": opened})
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, conn.recv)) == "status":
        conn.send({"warm": sum(1 for c in clients if c.events.warm or c.data_messages.warm)})
    conn.send({"latencies": sink, "types": dict(TYPES)})
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in clients), return_exceptions=True), 60)


def worker_main(base_ws, room, tokens, channel, conn) -> None:
    asyncio.run(_worker(base_ws, room, tokens, channel, conn))


async def wait_http(base: str, timeout: float = 30) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not come up")
            await asyncio.sleep(0.2)


async def send_chat(sender, channel: bool, text: str) -> None:
    env = {"v": 1, "type": "chat.send", "id": text[:32], "data": {"text": text}}
    if channel:
        sender.data_channel.send(json.dumps(env))
    else:
        await sender.send({"type": "data", "payload": env})


async def run_case(port: int, members: int, channel: bool, messages: int, procs: int, case: int) -> dict:
    base_ws = f"ws://127.0.0.1:{port}"
    room = f"bench-{case}-{members}-{'dc' if channel else 'ws'}"
    identities = [f"m{i:03d}" for i in range(members)]
    toks = tokens_for(room, identities)
    ctx = mp.get_context("spawn")
    pipes, children = [], []
    for k in range(procs):
        share = toks[k::procs]
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(base_ws, room, share, channel, child), daemon=True)
        p.start()
        pipes.append(parent)
        children.append(p)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    ready = await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in pipes))
    setup_s = time.monotonic() - started
    joined = sum(r["joined"] for r in ready)
    opened = sum(r["opened"] for r in ready)

    sender = make_client(base_ws, room, tokens_for(room, ["sender"], "instructor")[0], channel, [])
    await sender.connect()
    if channel:
        while sender.data_channel is None or sender.data_channel.readyState != "open":
            await asyncio.sleep(0.05)
    # Every join fans out to everyone (participant_joined and a system chat line: members^2 messages). Send
    # a warm-up line and measure only once every member has it, i.e. once that backlog has drained.
    warm_started = time.monotonic()
    await send_chat(sender, channel, f"{WARM}0")
    while True:
        await asyncio.sleep(0.5)
        for p in pipes:
            p.send("status")
        warm = sum(r["warm"] for r in await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in pipes)))
        if warm >= joined or time.monotonic() - warm_started > 300:
            break
    drain_s = time.monotonic() - warm_started
    await asyncio.sleep(1.0)
    for seq in range(messages):
        await send_chat(sender, channel, f"{MARK}{seq}:{time.time():.6f}")
        await asyncio.sleep(0.25)  # under the chat limit (5/s)
    await asyncio.sleep(3.0)
    for p in pipes:
        p.send("stop")
    results = await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in pipes))
    lat = [x for r in results for x in r["latencies"]]
    if len(lat) < members * messages:
        print(f"message types seen by worker 0: {results[0]['types']}", file=sys.stderr)
    replies = sender.events.replies + sender.data_messages.replies
    errors = [r for r in replies if r["type"] == "error"]
    if errors or len(replies) < messages:
        print(f"sender: {len(replies) - len(errors)} acks, errors: {errors[:3]}", file=sys.stderr)
    await sender.close()
    for c in children:
        await loop.run_in_executor(None, c.join, 90)
        if c.is_alive():
            c.terminate()
    return {"transport": "datachannel" if channel else "websocket", "members": members, "joined": joined,
            "channels_open": opened if channel else None, "setup_s": round(setup_s, 1), "join_drain_s": round(drain_s, 1),
            "expected": members * messages, "received": len(lat),
            "p50_ms": round(1000 * percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(1000 * percentile(lat, 99), 1) if lat else None,
            "max_ms": round(1000 * max(lat), 1) if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None}


async def main(args) -> int:
    global TYPES
    TYPES = collections.Counter()
    port = free_port()
    data = tempfile.mkdtemp(prefix="stoa-chat-bench-")
    server = subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", args.profile] if args.profile else []), "-m", "stoa.cli", "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
         "--ice-address", "127.0.0.1", "--data-dir", data, "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "server.log"), "w"))
    rows = []
    try:
        await wait_http(f"http://127.0.0.1:{port}")
        case = 0
        for transport in args.transports:
            for members in args.members:
                case += 1
                row = await run_case(port, members, transport == "datachannel", args.messages, args.procs, case)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    print()
    print("| transport | members | joined | channels open | received / expected | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['transport']} | {r['members']} | {r['joined']} | {r['channels_open'] if r['channels_open'] is not None else '-'} "
              f"| {r['received']} / {r['expected']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--transports", nargs="+", default=["websocket", "datachannel"],
                    choices=["websocket", "datachannel"])
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--procs", type=int, default=3, help="client worker processes")
    ap.add_argument("--profile", metavar="FILE", help="run the server under cProfile and write its stats to FILE")
    sys.exit(asyncio.run(main(ap.parse_args())))
