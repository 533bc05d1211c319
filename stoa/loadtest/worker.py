"""One load-test process (started by `stoa loadtest`, not by hand): `python -m stoa.loadtest.worker`.

Reads one JSON line on stdin:
  {"url", "room", "cheap", "rx" ("drain" or "tap": how cheap viewers read), "t0" (unix time),
   "window": [start, end] (unix times),
   "viewers": [[index, token, join_at], ...], "publishers": [token, ...]}
and writes JSON lines on stdout: {"ready": true} once its publishers are up, {"progress": {...}} every
second, then {"result": {...}} with every viewer's counters at the window's start and end.
A line "stop" on stdin (or SIGTERM) ends it early; everything it opened is closed on the way out.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time

import aiohttp

from sfu.aiortc_seam import RtpDrain
from stoa.loadtest.peers import Publisher, Viewer


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def sleep_until(unix_time: float) -> None:
    delay = unix_time - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def run(cfg: dict, stop: asyncio.Event) -> None:
    lag = {"max": 0.0}

    async def watch_lag() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lag["max"] = max(lag["max"], time.monotonic() - t - 0.05)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        publishers = [Publisher(http, cfg["url"], cfg["room"], token, video=cfg.get("publisher_video", "loop"))
                      for token in cfg.get("publishers", [])]
        viewers: dict[int, Viewer] = {}
        drain = RtpDrain() if cfg.get("cheap") and cfg.get("rx", "drain") == "drain" else None
        tasks: list[asyncio.Task] = []
        lag_task = asyncio.ensure_future(watch_lag())
        try:
            if publishers:
                if cfg.get("hold_bitrate", True) and cfg.get("publisher_video") == "live":
                    from stoa.loadtest.media import hold_vp8_bitrate
                    hold_vp8_bitrate()
                await asyncio.gather(*(p.start() for p in publishers))
            emit({"ready": True})

            async def join(index: int, token: str, at: float) -> None:
                await sleep_until(at)
                viewer = viewers[index]
                try:
                    await viewer.join()
                except Exception as exc:  # one viewer's failure is a figure, not the end of the run
                    viewer.state, viewer.error = "failed", f"{type(exc).__name__}: {exc}"

            for index, token, at in cfg.get("viewers", []):
                viewers[index] = Viewer(http, cfg["url"], cfg["room"], token, cheap=cfg.get("cheap", True),
                                        drain=drain)
                tasks.append(asyncio.ensure_future(join(index, token, at)))

            async def progress() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    emit({"progress": {
                        "t": time.time(),
                        "states": _count(v.state for v in viewers.values()),
                        "receiving": sum(1 for v in viewers.values() if v.video.packets or v.audio.packets),
                        "packets": sum(v.video.packets + v.audio.packets for v in viewers.values()),
                        "frames": sum(v.video.frames for v in viewers.values()),
                        "lag_max": lag["max"],
                        "published_frames": sum(p.video.count for p in publishers)}})
                    lag["max"] = 0.0

            progress_task = asyncio.ensure_future(progress())
            start, end = cfg["window"]
            snaps: dict[str, dict] = {}
            for name, at in (("start", start), ("end", end)):
                waiter = asyncio.ensure_future(sleep_until(at))
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                snaps[name] = {"t": time.time(), "viewers": {i: v.snap() for i, v in viewers.items()}}
                if stop.is_set():
                    snaps.setdefault("start", snaps[name])
                    snaps["end"] = snaps[name]
                    break
            progress_task.cancel()
            emit({"result": {
                "window": [snaps["start"]["t"], snaps["end"]["t"]],
                "viewers": [{"index": i, "state": v.state, "error": v.error, "join": v.join_time,
                             "join_video": v.video_join_time,
                             "connected": v.connected,
                             "start": snaps["start"]["viewers"][i], "end": snaps["end"]["viewers"][i]}
                            for i, v in viewers.items()],
                "publishers": [{"frames": p.video.count, "keyframes": p.video.keyframes} for p in publishers]}})
        finally:
            lag_task.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(v.leave() for v in viewers.values()), return_exceptions=True)
            await asyncio.gather(*(p.stop() for p in publishers), return_exceptions=True)
            if drain is not None:
                drain.close()


def _count(states) -> dict:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    if not (cfg.get("cheap") and cfg.get("rx", "drain") == "drain"):  # RtpDrain needs asyncio's own loop
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        def read_stdin() -> None:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=read_stdin, daemon=True).start()
        await run(cfg, stop)

    asyncio.run(go())


if __name__ == "__main__":
    main()
