"""`stoa loadtest`: N WHEP viewers (and optionally WHIP publishers of synthetic media) against a Stoa
server, spread over processes; a progress line each second, then per-viewer delivery, loss, join time
and fps with their p50/p95. Modelled on LiveKit's `lk load-test`.

  run(LoadTest(...), tokens) -> dict   the report as data (what --json writes)
  format_report(report, per_viewer)    the text the command prints
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LoadTest:
    url: str
    room: str
    viewers: int
    publishers: int = 0
    publisher_video: str = "loop"   # "loop" (encoded once, LoopedVideo) or "live" (SyntheticVideo)
    duration: float = 30.0          # the measured window, after the last viewer was started
    join_rate: float = 20.0         # viewers started per second, over all processes
    cheap: bool = False
    processes: int = 0              # 0: chosen from the viewer count
    rx: str = "drain"               # cheap viewers' receive: "drain" (batched, RtpDrain) or "tap" (per datagram)
    settle: float = 3.0             # seconds between the last join and the window's start
    publisher_tokens: list[str] = field(default_factory=list)
    viewer_tokens: list[str] = field(default_factory=list)

    def process_count(self) -> int:
        if self.processes > 0:
            return self.processes
        per = 100 if self.cheap else 20  # what one client loop carries without becoming the bottleneck
        return max(1, min(8, math.ceil(self.viewers / per)))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.progress: dict = {}
        self.result: dict | None = None
        self.ready = asyncio.Event()
        self.log: list[str] = []

    async def pump(self) -> None:
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                self.ready.set()
                return
            try:
                msg = json.loads(raw)
            except ValueError:
                self.log.append(raw.decode(errors="replace").rstrip())
                continue
            if "progress" in msg:
                self.progress = msg["progress"]
            elif "result" in msg:
                self.result = msg["result"]
            elif msg.get("ready"):
                self.ready.set()

    async def stop(self, grace: float = 15.0) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
            except (ConnectionError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def run(test: LoadTest, *, say: Callable[[str], None] = print) -> dict:
    """Start the processes, print progress, and return the report (see `summarize`)."""
    k = test.process_count()
    t0 = time.time() + 2.0  # time for the processes to start and the publishers to connect
    pub_workers = 1 if test.publishers else 0
    ramp = test.viewers / test.join_rate if test.join_rate > 0 else 0.0
    cmd = [sys.executable, "-m", "stoa.loadtest.worker"]
    workers: list[_Worker] = []
    shares: list[list] = [[] for _ in range(k)]
    pub_worker: _Worker | None = None
    published: dict[str, tuple[float, int]] = {}  # window start/end: (time, frames the publishers sent)
    client_lag = 0.0  # the viewer processes' worst loop lag within the window
    for i in range(test.viewers):
        shares[i % k].append([i, test.viewer_tokens[i], 0.0])
    try:
        if pub_workers:
            proc = await _spawn(cmd)
            w = pub_worker = _Worker(proc)
            workers.append(w)
            pump = asyncio.ensure_future(w.pump())
            _send(proc, {"url": test.url, "room": test.room, "publishers": test.publisher_tokens,
                         "publisher_video": test.publisher_video, "viewers": [], "window": [0, 1e12]})
            try:
                await asyncio.wait_for(w.ready.wait(), 60)
            except asyncio.TimeoutError:
                raise RuntimeError("the publishers did not connect within 60 s") from None
            if w.proc.returncode is not None or pump.done():
                raise RuntimeError("the publisher process exited: " + " | ".join(w.log[-5:]))
            say(f"{test.publishers} publisher(s) connected")
            t0 = time.time() + 2.0
        start = t0 + ramp + test.settle
        end = start + test.duration
        for share in shares:
            for entry in share:
                entry[2] = t0 + entry[0] / test.join_rate if test.join_rate > 0 else t0
        viewer_workers = []
        for share in shares:
            proc = await _spawn(cmd)
            w = _Worker(proc)
            viewer_workers.append(w)
            asyncio.ensure_future(w.pump())
            _send(proc, {"url": test.url, "room": test.room, "cheap": test.cheap, "rx": test.rx, "viewers": share,
                         "window": [start, end]})
        workers.extend(viewer_workers)
        say(f"{test.viewers} {'cheap ' if test.cheap else ''}viewer(s) over {len(viewer_workers)} process(es), "
            f"joining at {test.join_rate:g}/s; measuring {test.duration:g} s from t={start - t0:.1f} s")
        last_packets, last_t = 0, time.time()
        while any(w.result is None and w.proc.returncode is None for w in viewer_workers):
            await asyncio.sleep(1.0)
            now = time.time()
            packets = sum(w.progress.get("packets", 0) for w in viewer_workers)
            states: dict[str, int] = {}
            for w in viewer_workers:
                for s, n in w.progress.get("states", {}).items():
                    states[s] = states.get(s, 0) + n
            receiving = sum(w.progress.get("receiving", 0) for w in viewer_workers)
            lag = max((w.progress.get("lag_max", 0.0) for w in viewer_workers), default=0.0)
            phase = "joining" if now < start else ("measuring" if now < end else "leaving")
            if phase == "measuring":
                client_lag = max(client_lag, lag)
            if pub_worker is not None and phase != "joining":
                published.setdefault("start" if phase == "measuring" else "end",
                                     (now, pub_worker.progress.get("published_frames", 0)))
            say(f"t={now - t0:5.1f}s {phase:9} joined {states.get('joined', 0)}/{test.viewers} "
                f"receiving {receiving} refused {states.get('refused', 0)} failed {states.get('failed', 0)} "
                f"| {(packets - last_packets) / max(1e-6, now - last_t):7.0f} pkt/s | client lag {lag * 1000:.0f} ms")
            last_packets, last_t = packets, now
            if now > end + 60:
                raise RuntimeError("the viewer processes did not report within 60 s of the window's end")
        results = [w.result for w in viewer_workers]
        if any(r is None for r in results):
            logs = " | ".join(line for w in viewer_workers for line in w.log[-3:])
            raise RuntimeError(f"a viewer process exited without a result: {logs}")
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    report = summarize(test, results)
    if "start" in published and "end" in published:
        (t0p, f0), (t1p, f1) = published["start"], published["end"]
        # What the synthetic publishers encoded and sent: the ceiling of every viewer's fps.
        report["summary"]["publisher_fps"] = (f1 - f0) / max(1e-6, t1p - t0p) / max(1, test.publishers)
    report["summary"]["client_lag_max"] = client_lag
    return report


async def _spawn(cmd: list[str]) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, env=env)


def _send(proc: asyncio.subprocess.Process, cfg: dict) -> None:
    proc.stdin.write((json.dumps(cfg) + "\n").encode())


def summarize(test: LoadTest, results: list[dict]) -> dict:
    """Per-viewer figures over the measured window, and p50/p95 across viewers."""
    rows = []
    for r in results:
        span = max(1e-6, r["window"][1] - r["window"][0])
        for v in r["viewers"]:
            (vp0, vo0, vf0, ve0), (ap0, _, _, ae0) = v["start"]["v"], v["start"]["a"]
            (vp1, vo1, vf1, ve1), (ap1, _, _, ae1) = v["end"]["v"], v["end"]["a"]
            expected = (ve1 - ve0) + (ae1 - ae0)
            got = (vp1 - vp0) + (ap1 - ap0)
            rows.append({
                "viewer": v["index"], "state": v["state"], "error": v["error"], "join_s": v["join"],
                "join_video_s": v.get("join_video"),
                "connected": v["connected"],
                "video_kbps": (vo1 - vo0) * 8 / span / 1000, "fps": (vf1 - vf0) / span,
                "packets_per_s": got / span, "packets": got,
                "loss": max(0.0, 1 - got / expected) if expected > 0 else (1.0 if v["state"] == "joined" else None),
                "retransmits": v["end"]["x"] - v["start"]["x"],
            })
    rows.sort(key=lambda row: row["viewer"])
    admitted = [r for r in rows if r["state"] in ("joined", "left")]
    joins = [r["join_s"] for r in admitted if r["join_s"] is not None]
    video_joins = [r["join_video_s"] for r in admitted if r["join_video_s"] is not None]
    fps = [r["fps"] for r in admitted]
    loss = [r["loss"] for r in admitted if r["loss"] is not None]
    total_expected = sum(r["packets"] / (1 - r["loss"]) for r in admitted if r["loss"] is not None and r["loss"] < 1)
    summary = {
        "viewers": test.viewers, "admitted": len(admitted),
        "refused": sum(r["state"] == "refused" for r in rows),
        "failed": sum(r["state"] == "failed" for r in rows),
        # POSTed (or not yet started) and still without an answer when the window ended
        "unanswered": sum(r["state"] in ("waiting", "joining") for r in rows),
        "no_media": sum(1 for r in admitted if not r["packets"]),
        "join_p50": percentile(joins, 0.5), "join_p95": percentile(joins, 0.95),
        "join_max": max(joins) if joins else None, "joins_measured": len(joins),
        "join_video_p50": percentile(video_joins, 0.5), "join_video_p95": percentile(video_joins, 0.95),
        "fps_p50": percentile(fps, 0.5), "fps_p5": percentile(fps, 0.05), "fps_min": min(fps) if fps else None,
        "loss_p50": percentile(loss, 0.5), "loss_p95": percentile(loss, 0.95),
        "loss_overall": (1 - sum(r["packets"] for r in admitted) / total_expected) if total_expected else None,
        "video_kbps_p50": percentile([r["video_kbps"] for r in admitted], 0.5),
        "packets_per_s": sum(r["packets_per_s"] for r in rows),
        "refusals": sorted({r["error"] for r in rows if r["state"] == "refused"})[:3],
        "errors": sorted({r["error"] for r in rows if r["state"] == "failed"})[:3],
    }
    return {"config": {"url": test.url, "room": test.room, "viewers": test.viewers, "publishers": test.publishers,
                       "cheap": test.cheap, "duration": test.duration, "join_rate": test.join_rate},
            "summary": summary, "viewers": rows}


def _fmt(x, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}{unit}"


def format_report(report: dict, per_viewer: bool = False) -> str:
    s = report["summary"]
    out = []
    if per_viewer:
        out.append("viewer  state    join s video s   fps   loss    video kbps  pkt/s  retx")
        for r in report["viewers"]:
            out.append(f"{r['viewer']:6d}  {r['state']:<8} {_fmt(r['join_s'], digits=3):>6} "
                       f"{_fmt(r['join_video_s'], digits=3):>7} {r['fps']:5.1f} "
                       f"{_fmt(r['loss'], '%', 100):>7} {r['video_kbps']:11.0f} {r['packets_per_s']:6.0f} "
                       f"{r['retransmits']:5d}" + (f"  {r['error']}" if r["error"] else ""))
        out.append("")
    out.append(f"viewers: {s['viewers']} started, {s['admitted']} admitted, {s['refused']} refused, "
               f"{s['failed']} failed, {s['unanswered']} without an answer by the window's end, "
               f"{s['no_media']} admitted without media")
    out.append(f"join (WHEP POST -> first RTP): p50 {_fmt(s['join_p50'], ' s', digits=3)}, "
               f"p95 {_fmt(s['join_p95'], ' s', digits=3)}, max {_fmt(s['join_max'], ' s', digits=3)} "
               f"({s['joins_measured']} measured); to the first video packet (a keyframe): "
               f"p50 {_fmt(s['join_video_p50'], ' s', digits=3)}, p95 {_fmt(s['join_video_p95'], ' s', digits=3)}")
    out.append(f"video fps (complete frames): p50 {_fmt(s['fps_p50'], digits=1)}, p5 {_fmt(s['fps_p5'], digits=1)}, "
               f"min {_fmt(s['fps_min'], digits=1)}"
               + (f"; the publisher sent {s['publisher_fps']:.1f} fps" if s.get("publisher_fps") is not None else "")
               + (f"; viewer processes' loop lag up to {s['client_lag_max'] * 1000:.0f} ms"
                  if s.get("client_lag_max") is not None else ""))
    out.append(f"loss: p50 {_fmt(s['loss_p50'], '%', 100)}, p95 {_fmt(s['loss_p95'], '%', 100)}, "
               f"overall {_fmt(s['loss_overall'], '%', 100, 3)}")
    out.append(f"delivery: video {_fmt(s['video_kbps_p50'], ' kbps', digits=0)} per viewer (p50), "
               f"{s['packets_per_s']:.0f} packets/s to all viewers")
    for msg in s["refusals"]:
        out.append(f"refused: {msg}")
    for msg in s["errors"]:
        out.append(f"failed: {msg}")
    return "\n".join(out)


def statistics_ok(report: dict) -> bool:
    """True when every admitted viewer got media (the command's exit status)."""
    s = report["summary"]
    return s["admitted"] > 0 and s["no_media"] == 0 and s["failed"] == 0


__all__ = ["LoadTest", "run", "summarize", "format_report", "percentile", "statistics_ok"]
