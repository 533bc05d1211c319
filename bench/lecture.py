"""A lecture on one machine: one synthetic publisher (640x480 30 fps VP8 ~1.5 Mbps + Opus) and N cheap WHEP
viewers, driven by `stoa loadtest`, against a fresh `stoa serve` per point.

  .venv/bin/python bench/lecture.py                              # 100, 200, 300, 400 viewers
  .venv/bin/python bench/lecture.py --counts 100,200 --duration 20
  .venv/bin/python bench/lecture.py --workers 1,2                # passes --workers N to `stoa serve`

For every (viewers, workers) point, in an order that alternates between worker settings from one count to
the next, it prints: the server's CPU s/s per process (the serve process and any child it started),
µs of server CPU per forwarded packet (all server CPU over the measured window / RTP packets the viewers
received in it), viewers admitted and refused, loss, fps (complete frames) and join time (WHEP POST to
first RTP) p50/p95, and the load client's CPU s/s per process with µs of its viewer processes' CPU per
received packet (`--client-rx drain,tap` alternates the cheap viewers' two ways of reading their
sockets). Viewers join at --join-rate per second. Everything runs on 127.0.0.1; each point is
bounded by --duration plus the joins; the whole run by --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOA = str(Path(sys.executable).parent / "stoa")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def metrics(port: int) -> dict[str, float]:
    """The server's /metrics, summed by name over labels (workers), plus the worst worker lag."""
    import re
    import urllib.request

    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return out
    for name, value in re.findall(r"^(stoa_[a-z_]+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        if name == "stoa_media_worker_lag_smoothed_seconds":
            out["worker_lag_max"] = max(out.get("worker_lag_max", 0.0), float(value))
        out[name] = out.get(name, 0.0) + float(value)
    return out


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("stoa serve exited at start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("stoa serve did not listen in time")


def run_point(n: int, workers: int | None, args, tmp: Path, rx: str = "drain") -> dict:
    port = free_port()
    argv = [STOA, "serve", "--dev", "--port", str(port), "--ice-address", "127.0.0.1",
            "--data-dir", str(tmp / f"data-{n}-{workers}"), "--log-level", "warning"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    log = open(tmp / f"serve-{n}-{workers}.log", "wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        wait_http(port, server)
        time.sleep(1.0)
        report = tmp / f"loadtest-{n}-{workers}.json"
        lt = subprocess.Popen([STOA, "loadtest", "--dev", "--url", f"http://127.0.0.1:{port}", "--room", "lecture",
                               "--viewers", str(n), "--publishers", "1", "--cheap", "--duration", str(args.duration),
                               "--join-rate", str(args.join_rate), "--publisher-video", args.publisher_video,
                               "--client-rx", rx, "--json", str(report)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, text=True,
                              start_new_session=True)
        cpu0 = cpu1 = None
        t0 = t1 = 0.0
        per0: dict[int, float] = {}
        per1: dict[int, float] = {}
        m0: dict[str, float] = {}
        m1: dict[str, float] = {}
        c0: dict[int, float] = {}  # the load client's processes (its publisher process is the first child)
        c1: dict[int, float] = {}
        worker_lag = 0.0
        tail = []
        for line in lt.stdout:
            tail = (tail + [line.rstrip()])[-12:]
            if args.verbose:
                print("   ", line.rstrip(), flush=True)
            if " measuring " in line and cpu0 is None:
                per0 = {p: cpu_seconds(p) for p in process_tree(server.pid)}
                c0 = {p: cpu_seconds(p) for p in process_tree(lt.pid)}
                cpu0, t0 = sum(per0.values()), time.monotonic()
                m0 = metrics(port)
            elif " measuring " in line:
                worker_lag = max(worker_lag, metrics(port).get("worker_lag_max", 0.0))
            elif (" leaving " in line or line.startswith("viewers:")) and cpu0 is not None and cpu1 is None:
                per1 = {p: cpu_seconds(p) for p in process_tree(server.pid)}
                c1 = {p: cpu_seconds(p) for p in process_tree(lt.pid)}
                cpu1, t1 = sum(per1.values()), time.monotonic()
                m1 = metrics(port)
        rc = lt.wait(timeout=120)
        if not report.exists():
            raise RuntimeError(f"stoa loadtest failed (exit {rc}):\n" + "\n".join(tail))
        data = json.loads(report.read_text())
        s = data["summary"]
        span = max(1e-6, t1 - t0) if cpu1 is not None else 0.0
        cpu = (cpu1 - cpu0) / span if span else float("nan")
        procs = [(p, (per1.get(p, 0.0) - per0.get(p, 0.0)) / span) for p in per1] if span else []
        packets = s["packets_per_s"] * args.duration
        delta = {k: (m1.get(k, 0.0) - m0.get(k, 0.0)) / span for k in m1} if span and m0 else {}
        media = {"received_pps": delta.get("stoa_rtp_received_packets_total"),
                  "forwarded_pps": delta.get("stoa_rtp_forwarded_packets_total"),
                  "shed_video_pps": (delta.get("stoa_shed_video_packets_total", 0.0)
                                     + delta.get("stoa_media_worker_shed_video_packets_total", 0.0)),
                  "relay_dropped_pps": delta.get("stoa_relay_dropped_packets_total", 0.0),
                  "worker_lag_max": worker_lag}
        client = {p: (c1[p] - c0.get(p, 0.0)) / span for p in c1} if span else {}
        kids = sorted(p for p in client if p != lt.pid)
        viewer_cpu = sum(client[p] for p in kids[1:]) if len(kids) > 1 else float("nan")
        media["client_cpu"] = sum(client.values()) if client else float("nan")
        media["client_procs"] = [round(client[p], 3) for p in [lt.pid] + kids]
        media["client_viewer_us"] = viewer_cpu / s["packets_per_s"] * 1e6 if s["packets_per_s"] else float("nan")
        # Viewers neither admitted nor refused: what state they ended in and why (a join must never die silently).
        lost = [r for r in data["viewers"] if r["state"] not in ("joined", "left", "refused")]
        s["unanswered"] = {st: sum(1 for r in lost if r["state"] == st) for st in sorted({r["state"] for r in lost})}
        s["unanswered_errors"] = sorted({r["error"] for r in lost if r["error"]})[:4]
        if lost:  # what the server said meanwhile
            log.flush()
            text = (tmp / f"serve-{n}-{workers}.log").read_text(errors="replace").splitlines()
            s["server_errors"] = [ln[:200] for ln in text if "ERROR" in ln or "Traceback" in ln][:5]
        return {"viewers": n, "workers": workers, "rx": rx, "summary": s, "cpu": cpu, "server": media,
                "procs": [round(c, 3) for _, c in sorted(procs)],
                "us_per_packet": cpu * span / packets * 1e6 if packets and span else float("nan")}
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()


def fmt(x, scale=1.0, digits=2, unit="") -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="100,200,300,400", help="viewer counts")
    parser.add_argument("--workers", default="", help="comma-separated values for `stoa serve --workers` "
                                                      "(default: not passed)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per point")
    parser.add_argument("--join-rate", type=float, default=20.0, help="viewers joining per second")
    parser.add_argument("--publisher-video", choices=("loop", "live"), default="loop",
                        help="the load client's publisher: VP8 encoded once and looped (default), or live")
    parser.add_argument("--client-rx", default="drain",
                        help="comma-separated `stoa loadtest --client-rx` values to alternate (drain, tap)")
    parser.add_argument("--max-seconds", type=float, default=1500, help="bound on the whole run")
    parser.add_argument("--verbose", action="store_true", help="show stoa loadtest's progress lines")
    parser.add_argument("--output", help="also write the table here")
    args = parser.parse_args()
    counts = [int(x) for x in args.counts.split(",")]
    workers: list[int | None] = [int(x) for x in args.workers.split(",")] if args.workers else [None]
    variants = [(w, rx) for w in workers for rx in args.client_rx.split(",")]
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("--max-seconds exceeded")))
    signal.alarm(int(args.max_seconds))
    rows = []
    with tempfile.TemporaryDirectory(prefix="stoa-lecture-") as tmpdir:
        for i, n in enumerate(counts):
            order = variants if i % 2 == 0 else variants[::-1]  # alternate, so drift hits every setting alike
            for w, rx in order:
                print(f"[{time.strftime('%H:%M:%S')}] {n} viewers, workers {w or 'default'}, client rx {rx}", flush=True)
                row = run_point(n, w, args, Path(tmpdir), rx)
                s = row["summary"]
                print(f"    admitted {s['admitted']}, refused {s['refused']}, server {row['cpu']:.2f} CPU s/s "
                      f"{row['procs']}, {row['us_per_packet']:.1f} µs/packet, loss {fmt(s['loss_overall'], 100, 3, '%')}, "
                      f"fps p50 {fmt(s['fps_p50'], digits=1)}, join p95 {fmt(s['join_p95'], digits=2)} s", flush=True)
                if s.get("unanswered"):
                    print(f"    neither admitted nor refused: {s['unanswered']}, errors {s['unanswered_errors']}; "
                          f"server log errors: {s.get('server_errors')}", flush=True)
                v = row["server"]
                per_viewer = (v["forwarded_pps"] / s["admitted"]) if v["forwarded_pps"] and s["admitted"] else None
                print(f"    where the frames go: the publisher sent {fmt(s.get('publisher_fps'), digits=1)} fps; the "
                      f"server received {fmt(v['received_pps'], digits=0)} pkt/s and forwarded "
                      f"{fmt(v['forwarded_pps'], digits=0)} pkt/s ({fmt(per_viewer, digits=1)} per viewer); the "
                      f"viewers received {s['packets_per_s']:.0f} pkt/s "
                      f"({s['packets_per_s'] / max(1, s['admitted']):.1f} per viewer); shed "
                      f"{v['shed_video_pps']:.0f} video pkt/s, relay drops {v['relay_dropped_pps']:.0f}/s; worker lag "
                      f"up to {v['worker_lag_max'] * 1000:.0f} ms; load client's loop lag up to "
                      f"{fmt(s.get('client_lag_max'), 1000, 0)} ms", flush=True)
                print(f"    load client: {v['client_cpu']:.2f} CPU s/s {v['client_procs']} (coordinator, publisher, "
                      f"viewers), {v['client_viewer_us']:.1f} µs of viewer-process CPU per received packet", flush=True)
                rows.append(row)
    out = [f"machine: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.duration:g} s per point, joins at "
           f"{args.join_rate:g}/s, cheap viewers (`stoa loadtest --cheap`) and the publisher on the same machine",
           "",
           "| workers | client rx | viewers | admitted | refused | server CPU s/s (per process) | µs / forwarded packet "
           "| loss | fps p50 / p5 | join p50 / p95 | first video p50 / p95 | client CPU s/s | client µs / packet |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        per = " + ".join(f"{c:.2f}" for c in r["procs"]) if len(r["procs"]) > 1 else ""
        out.append(f"| {r['workers'] or '-'} | {r['rx']} | {r['viewers']} | {s['admitted']} | {s['refused']} "
                   f"| {r['cpu']:.2f}{f' ({per})' if per else ''} | {r['us_per_packet']:.1f} "
                   f"| {fmt(s['loss_overall'], 100, 3, '%')} | {fmt(s['fps_p50'], digits=1)} / {fmt(s['fps_p5'], digits=1)} "
                   f"| {fmt(s['join_p50'])} / {fmt(s['join_p95'])} s "
                   f"| {fmt(s.get('join_video_p50'))} / {fmt(s.get('join_video_p95'))} s "
                   f"| {r['server']['client_cpu']:.2f} | {r['server']['client_viewer_us']:.1f} |")
    text = "\n".join(out)
    print()
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
