"""In-process chat fan-out latency: one chat message from a sender to N members through InteractiveRoom.

Measures send (room.handle called) -> receipt (member.send called) for each member, on real storage (a
temporary SQLite file unless --db is given), and prints p50 / p99 for each room size. The latency includes
persisting the message (validate -> persist -> ack -> fan out): on SQLite about 5 ms of it is the commit.

    .venv/bin/python bench/chat_fanout_inproc.py [--members 100 300] [--messages 50] [--db URL]

`measure(store, members, messages)` is importable (bench/chat_fanout.py can reuse it for the transport-free
baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classroom.interactive import InteractiveRoom, RoomOptions  # noqa: E402
from classroom.interactive.limits import DEFAULT_RATES, Rate  # noqa: E402


class TimedMember:
    def __init__(self, identity: str, role: str, sink: list[float], sent_at: dict[int, float]):
        self.identity, self.name, self.role, self.can_publish_data = identity, identity, role, True
        self.sink, self.sent_at = sink, sent_at

    async def send(self, message: dict) -> None:
        if message.get("type") == "chat.message":
            started = self.sent_at.get(hash(message["data"]["text"]))
            if started is not None:
                self.sink.append(time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def measure(store, members: int, messages: int, *, gc_freeze: bool = True) -> dict:
    rates = dict(DEFAULT_RATES, chat=Rate(1e6, 1e6))  # measure fan-out, not the limiter
    room = InteractiveRoom(store, uuid.uuid4().hex, f"bench-{members}", {}, options=RoomOptions(rates=rates))
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    try:
        sender = TimedMember("sender", "instructor", [], sent_at)
        await room.join(sender)
        for i in range(members):
            await room.join(TimedMember(f"m{i}", "student", latencies, sent_at))
        await room.flush()
        if gc_freeze:
            # What a server does after startup: move long-lived objects out of the collector's way, so a
            # full collection does not stall the fan-out (it otherwise dominates p99).
            gc.collect()
            gc.freeze()
        for i in range(messages):
            text = f"bench message {i} {uuid.uuid4().hex}"
            sent_at[hash(text)] = time.perf_counter()
            await room.handle(sender, {"v": 1, "type": "chat.send", "id": f"b{i}", "data": {"text": text}})
            await room.flush()
    finally:
        await room.close()
    return {"members": members, "messages": messages, "samples": len(latencies),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000}


async def main() -> None:
    from storage import open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the garbage collector as it is")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.sqlite3"
        store = await open_store(url, auto_upgrade=True)
        try:
            for n in args.members:
                r = await measure(store, n, args.messages, gc_freeze=not args.no_gc_freeze)
                print(f"in-process chat fan-out to {r['members']:4d} members: p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  ({r['samples']} receipts, {r['messages']} messages)")
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
