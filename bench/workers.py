"""Media workers benchmark: server CPU per forwarded packet with viewers in the main process (--workers 1)
and with viewers spread over worker processes (--workers 2), runs alternating.

  .venv/bin/python bench/workers.py                               # 1 and 2 workers at 50 and 100 viewers
  .venv/bin/python bench/workers.py --workers 1,2 --counts 20 --repeats 1 --window 5       # quick look

Same parts as bench/fanout.py (whose helpers it reuses): `stoa serve --dev --workers W`, one WHIP publisher
(640x480 30 fps VP8 at ~1.5 Mbps plus Opus) and N WHEP viewers spread over --viewer-procs processes that
count RTP without decoding. After each step and a warm-up, the CPU (utime+stime) of the server process
and of each of its worker processes is read over a steady window, with the viewers' packet and frame
counters:

  µs per forwarded packet = CPU of the server and its workers over the window / RTP packets the viewers
                            received in it (video + audio, retransmissions included)

Runs alternate (1 2, 2 1, ...) so a drift in the machine's load hits both alike. Everything started here
is stopped at the end, on error and on Ctrl-C; the run is bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout import PY, ROOM, ROOT, STOA, Child, ViewerPool, cpu_seconds, free_port, run_bounded, say, wait_http  # noqa: E402


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the media workers of a server)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


@dataclass
class Row:
    workers: int
    repeat: int
    n: int
    main_cpu: float
    worker_cpu: list[float]
    us_per_packet: float
    packets_per_s: float
    fps_median: float
    fps_min: float
    complete: float  # complete frames / frames with any packet

    @property
    def total_cpu(self) -> float:
        return self.main_cpu + sum(self.worker_cpu)


async def measure(workers: int, repeat: int, counts: list[int], args, tmp: Path, started: list[Child]) -> list[Row]:
    from shared.auth import mint_token
    from shared.config import DEV_API_KEY, DEV_API_SECRET

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"PYTHONUNBUFFERED": "1"}
    label = f"workers={workers} run {repeat + 1}"
    argv = [STOA, "serve", "--dev", "--port", str(port), "--ice-address", "127.0.0.1", "--workers", str(workers),
            "--data-dir", str(tmp / f"data-{workers}-{repeat}"), "--log-level", args.server_log_level]
    server = await Child.start(f"server ({label})", argv, log=tmp / f"server-{workers}-{repeat}.log", env=env)
    started.append(server)
    await wait_http(base, server, 60)
    worker_pids = children(server.proc.pid) if workers >= 2 else []
    say(f"{label}: server pid {server.proc.pid}, worker pids {worker_pids or '-'}")
    token = mint_token(DEV_API_KEY, DEV_API_SECRET, room=ROOM, identity="bench-publisher", role="instructor")
    publisher = await Child.start("publisher", [PY, str(ROOT / "bench" / "peers.py"), "publisher", "--base", base,
                                                "--room", ROOM, "--token", token], pipes=True, env=env)
    started.append(publisher)
    await publisher.line(30)
    await asyncio.sleep(1.0)
    viewers = await ViewerPool.start(args.viewer_procs, base, env)
    started.extend(viewers.procs)
    rows = []
    have = 0
    for n in counts:
        added = await viewers.add(n - have)
        have = added["viewers"]
        if not added["ok"]:
            say(f"{label}: WARNING not every viewer started: {added['error']}")
        await asyncio.sleep(args.warmup)
        snap0 = await viewers.snap()
        main0 = cpu_or_zero(server.proc.pid)
        w0 = [cpu_or_zero(p) for p in worker_pids]
        t0 = time.monotonic()
        await asyncio.sleep(args.window)
        snap1 = await viewers.snap()
        main1 = cpu_or_zero(server.proc.pid)
        w1 = [cpu_or_zero(p) for p in worker_pids]
        elapsed = time.monotonic() - t0
        span = snap1["t"] - snap0["t"]
        pairs = list(zip(snap1["viewers"], snap0["viewers"]))
        packets = sum(a["vp"] + a["ap"] - b["vp"] - b["ap"] for a, b in pairs)
        fps = [(a["vf"] - b["vf"]) / span for a, b in pairs]
        any_frames = sum(a["vt"] - b["vt"] for a, b in pairs)
        cpu = (main1 - main0) + sum(b - a for a, b in zip(w0, w1))
        row = Row(workers, repeat, len(pairs), (main1 - main0) / elapsed, [(b - a) / elapsed for a, b in zip(w0, w1)],
                  cpu / packets * 1e6 if packets else float("inf"), packets / span, statistics.median(fps), min(fps),
                  sum(a["vf"] - b["vf"] for a, b in pairs) / any_frames if any_frames else 0.0)
        rows.append(row)
        say(f"{label}: N={row.n}: main {row.main_cpu:.3f} CPU s/s, workers "
            f"{' + '.join(f'{c:.3f}' for c in row.worker_cpu) or '-'} CPU s/s, {row.us_per_packet:.1f} µs/packet, "
            f"{row.packets_per_s:.0f} packets/s, fps median {row.fps_median:.1f} min {row.fps_min:.1f}, "
            f"{100 * row.complete:.1f}% frames complete")
        if server.proc.returncode is not None:
            raise RuntimeError(f"server died:\n{server.tail()}")
    for child in (*viewers.procs, publisher, server):
        await child.stop()
    return rows


def report(rows: list[Row], args) -> str:
    out = [f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; window {args.window:.0f} s "
           f"after {args.warmup:.0f} s warm-up; --workers 1 = viewers in the main process", "",
           "| workers | run | viewers | main CPU s/s | worker CPU s/s | total CPU s/s | µs / forwarded packet "
           "| packets/s | fps median | fps min | frames complete |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.workers} | {r.repeat + 1} | {r.n} | {r.main_cpu:.3f} | "
                   f"{' + '.join(f'{c:.3f}' for c in r.worker_cpu) or '-'} | {r.total_cpu:.3f} | {r.us_per_packet:.1f} "
                   f"| {r.packets_per_s:.0f} | {r.fps_median:.1f} | {r.fps_min:.1f} | {100 * r.complete:.1f}% |")
    out.append("")
    for n in sorted({r.n for r in rows}):
        med = {w: statistics.median(r.us_per_packet for r in rows if r.n == n and r.workers == w)
               for w in sorted({r.workers for r in rows if r.n == n})}
        out.append(f"median µs/packet at {n} viewers: " + ", ".join(f"{w} worker(s) {v:.1f}" for w, v in med.items()))
    return "\n".join(out)


async def run(args) -> int:
    started: list[Child] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stoa-bench-workers-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            for rep in range(args.repeats):
                order = args.workers if rep % 2 == 0 else args.workers[::-1]
                for w in order:
                    rows += await measure(w, rep, args.counts, args, tmp, started)
        except Exception as exc:
            say(f"benchmark failed: {exc}")
            for c in started:
                if c.log:
                    say(f"--- {c.name} log tail ---\n{c.tail()}")
            return 1
        finally:
            await asyncio.gather(*(c.stop() for c in started), return_exceptions=True)
    print()
    print(report(rows, args))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="values of `stoa serve --workers` to compare")
    parser.add_argument("--counts", default="50,100", help="viewer counts, added step by step")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, order alternated")
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--viewer-procs", type=int, default=4)
    parser.add_argument("--server-log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    args.workers = [int(x) for x in args.workers.split(",")]
    args.counts = sorted(int(x) for x in args.counts.split(","))

    return run_bounded(run(args), args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
