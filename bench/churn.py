"""Memory comes back: viewers churn (join and leave in a loop) against a `stoa serve`, then everyone leaves.

  .venv/bin/python bench/churn.py                           # 100 viewers, 10 minutes
  .venv/bin/python bench/churn.py --viewers 30 --minutes 1  # a quick look

One publisher (synthetic 640x480 VP8 + Opus) stays; in each cycle --viewers cheap WHEP viewers
(stoa.loadtest.peers.Viewer) join, receive for --hold seconds and leave. After every cycle the server's RSS,
open file descriptors and asyncio tasks (GET /debug/load, served with debug_hooks on) are printed. At the
end: RSS against its value after the first cycle (target: within 10%), and fds and tasks against the
baseline taken before the first viewer joined.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.auth import mint_token  # noqa: E402
from shared.config import DEV_API_KEY, DEV_API_SECRET  # noqa: E402
from stoa.loadtest.media import hold_vp8_bitrate  # noqa: E402
from stoa.loadtest.peers import Publisher, Viewer  # noqa: E402

STOA = str(Path(sys.executable).parent / "stoa")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind: udp / tcp / unix sockets, files, pipes, anon inodes."""
    nets: dict[str, str] = {}
    for proto in ("udp", "udp6", "tcp", "tcp6", "unix"):
        try:
            with open(f"/proc/net/{proto}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    inode = cols[6] if proto == "unix" else cols[9]
                    nets[inode] = proto.rstrip("6")
        except OSError:
            pass
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            kind = nets.get(target[8:-1], "socket")
        elif target.startswith("/"):
            kind = "file " + os.path.basename(target)
        else:
            kind = target.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def children(pid: int) -> list[int]:
    """The server's media worker processes (`stoa serve --workers`, default: one per core)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return sorted(out)


async def server_state(http: aiohttp.ClientSession, base: str, pid: int, trim: bool = False) -> dict:
    async with http.get(base + "/debug/load" + ("?trim=1" if trim else "")) as resp:
        load = await resp.json()
    workers = [{"rss": round(rss_mb(c), 1), "fds": fds(c)} for c in children(pid)]
    return {"rss": rss_mb(pid), "fds": fds(pid), "fd_kinds": fd_kinds(pid), "tasks": load["tasks"],
            "pcs": load["peer_connections"], "workers": workers}


async def main_async(args) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="stoa-churn-")
    server = subprocess.Popen([STOA, "serve", "--dev", "--port", str(port), "--ice-address", "127.0.0.1",
                               "--data-dir", tmp, "--log-level", "warning"],
                              env={**os.environ, "STOA_DEBUG_HOOKS": "true"}, cwd=ROOT, start_new_session=True)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(150):
                try:
                    async with http.get(base + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
            hold_vp8_bitrate()
            pub = Publisher(http, base, "churn", mint_token(DEV_API_KEY, DEV_API_SECRET, room="churn",
                                                            identity="teacher", role="instructor"))
            await pub.start()
            await asyncio.sleep(2)
            base_state = await server_state(http, base, server.pid)
            print(f"baseline: {base_state}", flush=True)
            states = []
            end = time.monotonic() + args.minutes * 60
            cycle = 0
            # The viewers' own HTTP session: its keep-alive connections (a server fd and task each) go with it.
            vhttp = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            while time.monotonic() < end:
                viewers = [Viewer(vhttp, base, "churn", mint_token(DEV_API_KEY, DEV_API_SECRET, room="churn",
                                                                    identity=f"c{cycle}-{i}", role="viewer"),
                                  cheap=True) for i in range(args.viewers)]
                for k in range(0, len(viewers), 20):  # 20 at a time, as a class arriving
                    await asyncio.gather(*(v.join() for v in viewers[k:k + 20]), return_exceptions=True)
                await asyncio.sleep(args.hold)
                got = sum(1 for v in viewers if v.video.frames > 0)
                await asyncio.gather(*(v.leave() for v in viewers), return_exceptions=True)
                await asyncio.sleep(1.5)
                state = await server_state(http, base, server.pid)
                states.append(state)
                print(f"cycle {cycle + 1}: {got}/{len(viewers)} viewers got video; server {state}", flush=True)
                cycle += 1
            await vhttp.close()
            await asyncio.sleep(12)  # the server trims freed heap at most every 10 s once connections closed
            final = await server_state(http, base, server.pid)
            trimmed = await server_state(http, base, server.pid, trim=True)
            await pub.stop()
        first = states[0]
        rss_ok = final["rss"] <= first["rss"] * 1.10
        print()
        print(f"{cycle} cycles of {args.viewers} viewers in {args.minutes:g} min")
        print(f"RSS: {base_state['rss']:.0f} MB before, {first['rss']:.0f} MB after the first cycle, "
              f"{max(s['rss'] for s in states):.0f} MB at most, {final['rss']:.0f} MB at the end "
              f"({(final['rss'] / first['rss'] - 1) * 100:+.1f}% against the first cycle: "
              f"{'within 10%' if rss_ok else 'MORE than 10%'})")
        print(f"RSS after gc.collect() and malloc_trim(0) (GET /debug/load?trim=1): {trimmed['rss']:.0f} MB "
              f"({(trimmed['rss'] / first['rss'] - 1) * 100:+.1f}% against the first cycle)")
        print(f"fds: {base_state['fds']} baseline, {final['fds']} at the end (after the viewers' HTTP session closed); tasks: {base_state['tasks']} "
              f"baseline, {final['tasks']} at the end; peer connections {base_state['pcs']} -> {final['pcs']}")
        for i, (b, f1, fin, tr) in enumerate(zip(base_state["workers"], first["workers"], final["workers"],
                                                 trimmed["workers"])):
            print(f"media worker {i}: RSS {b['rss']:.0f} MB before, {f1['rss']:.0f} MB after the first cycle, "
                  f"{fin['rss']:.0f} MB at the end ({(fin['rss'] / f1['rss'] - 1) * 100:+.1f}%), {tr['rss']:.0f} MB "
                  f"after the trim ({(tr['rss'] / f1['rss'] - 1) * 100:+.1f}%); fds {b['fds']} -> {fin['fds']}")
        ok = rss_ok and final["fds"] <= base_state["fds"] and final["tasks"] <= base_state["tasks"]
        return 0 if ok else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each cycle's viewers stay")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
