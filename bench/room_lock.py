"""How long one room's lock is held per chat message, and what that allows: N members send M chat lines
each, all at once, through InteractiveRoom on real storage (a temporary SQLite file unless --db is given).
Prints the messages per second the room handled and the p50 / p99 time of the storage transaction that
runs under the room lock (docs/interactive.md, "The room lock and the commit").

    .venv/bin/python bench/room_lock.py [--members 20] [--messages 25] [--db URL]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classroom.interactive import InteractiveRoom, RoomOptions  # noqa: E402
from classroom.interactive.limits import DEFAULT_RATES, Rate  # noqa: E402
from storage import open_store  # noqa: E402


class Member:
    def __init__(self, identity: str):
        self.identity, self.name, self.role, self.can_publish_data = identity, identity, "student", True

    async def send(self, message: dict) -> None:
        pass


class TimedRoom(InteractiveRoom):
    """Times each handler's transaction (the part of a message that holds the lock)."""

    held: list[float]

    async def _in_transaction(self, fn, ctx):
        started = time.perf_counter()
        try:
            return await super()._in_transaction(fn, ctx)
        finally:
            self.held.append(time.perf_counter() - started)


async def measure(url: str, members: int, messages: int) -> str:
    store = await open_store(url, check=False)
    await store.upgrade()
    rates = dict(DEFAULT_RATES, chat=Rate(1e9, 1e9))  # the lock, not the per-identity limit, is measured
    room = TimedRoom(store, uuid.uuid4().hex, "bench", {}, options=RoomOptions(rates=rates))
    room.held = []
    crowd = [Member(f"m{i}") for i in range(members)]
    for m in crowd:
        await room.join(m)
    started = time.perf_counter()
    await asyncio.gather(*(room.handle(m, {"v": 1, "type": "chat.send", "data": {"text": f"line {i}"}})
                           for i in range(messages) for m in crowd))
    elapsed = time.perf_counter() - started
    await room.close()
    await store.close()
    held = sorted(room.held)
    return (f"{url.split(':')[0]}: {len(held)} chat.send from {members} members at once: "
            f"{len(held) / elapsed:.0f}/s; transaction under the lock p50 {held[len(held) // 2] * 1000:.2f} ms, "
            f"p99 {held[int(len(held) * 0.99)] * 1000:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--messages", type=int, default=25)
    ap.add_argument("--db", help="a storage URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='stoa-lock-')}/stoa.sqlite3"
    print(asyncio.run(measure(url, args.members, args.messages)))


if __name__ == "__main__":
    main()
