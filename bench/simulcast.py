"""Simulcast against a single stream: what each viewer receives second by second, and the server's CPU per packet.

  /work/wt/bench-lock .venv/bin/python bench/simulcast.py              # 4 variants, then reversed; 20 s each
  .venv/bin/python bench/simulcast.py --rounds 1 --seconds 15 --workers 2 --simulcast on

Each variant is a fresh `stoa serve --dev --workers N` in its own process (tests/serve.py), with `STOA_SIMULCAST`
true (the room page publishes the camera in three layers, docs/simulcast.md) or false (one stream), and N 0
(viewers in the main process) or 2 (viewers on two media workers, each layer relayed on its own stream;
docs/scaling.md). One headless
Chromium (tests/browser.py's flags; fake camera) opens the room page as the instructor, who turns the camera
on, and two students: `small` has the camera's tile forced to 240x135 (as tests/test_browser_simulcast.py
does; the page reports that size as `video_size`), `full` leaves it at its normal size. Once both decode,
every --every seconds each student's getStats gives the decoded frameWidth and the inbound video bitrate,
and the publisher's outbound video bitrate (all layers) is read from the instructor's page. Over the
measured window, the server's CPU (/proc/<pid>/stat of its process tree, as bench/lecture.py) is divided
by the RTP packets it forwarded (/metrics `stoa_rtp_forwarded_packets_total`, audio included).
Variants alternate (in order, then reversed, ...) so drift on a shared machine hits all alike. Everything runs
on 127.0.0.1; nothing is asserted, it only prints. The run is bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lecture import cpu_seconds, process_tree  # noqa: E402
from tests.browser import CHROMIUM, _browser_env, chromium_args  # noqa: E402
from tests.serve import ServeProcess, eventually  # noqa: E402

ROOM = "bench"
SMALL = (240, 135)

RESIZE_JS = """(size) => { for (const v of document.querySelectorAll('#stage .tile video')) {
    if (v.closest('.tile').dataset.trackId) v.style.cssText = size ? `width:${size[0]}px !important;`
      + `height:${size[1]}px !important;max-width:none !important` : ''; } }"""

# The student's inbound camera: decoded width, bytes, frames and packets (summed over its video entries).
INBOUND_JS = """async () => {
  const pc = window.stoa.state.sub;
  const out = {width: 0, bytes: 0, decoded: 0, packets: 0, t: performance.now()};
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.width = Math.max(out.width, s.frameWidth || 0); out.bytes += s.bytesReceived || 0;
      out.decoded += s.framesDecoded || 0; out.packets += s.packetsReceived || 0; } });
  return out; }"""

SENT_JS = """async () => {
  const pc = window.stoa.state.pub;
  const out = {bytes: 0, layers: 0, t: performance.now()};
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.bytes += s.bytesSent || 0; if (s.active !== false && (s.frameWidth || 0) > 0) out.layers += 1; } });
  return out; }"""


def forwarded_packets(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(r"^stoa_rtp_forwarded_packets_total(?:\{[^}]*\})? (\S+)$", text, re.M))


def kbps(now: dict, before: dict) -> float:
    dt = (now["t"] - before["t"]) / 1000
    return (now["bytes"] - before["bytes"]) * 8 / dt / 1000 if dt > 0 else 0.0


async def variant(context_of, simulcast: bool, workers: int, tmp: Path, args) -> dict:
    import aiohttp

    where = tmp / f"{'on' if simulcast else 'off'}-{workers}-{time.monotonic_ns()}"
    where.mkdir()
    server = ServeProcess(where, "--workers", str(workers),
                          env={"STOA_SIMULCAST": "true" if simulcast else "false"})
    contexts = []
    try:
        async with aiohttp.ClientSession() as http:
            await server.wait_up(http)

        async def page(identity: str, role: str):
            ctx = await context_of()
            contexts.append(ctx)
            p = await ctx.new_page()
            await p.goto(f"{server.base}/rooms/{ROOM}?token={server.token(ROOM, identity, role)}")
            await eventually(lambda: p.evaluate("!!(window.stoa && window.stoa.state.ws && "
                                                "window.stoa.state.ws.readyState === 1)"), 20, f"{identity} joined")
            return p

        teacher = await page("teach", "instructor")
        viewers = {"small": await page("small", "student"), "full": await page("full", "student")}
        await teacher.click("#btn-camera")
        for name, p in viewers.items():
            await eventually(lambda p=p: _decoding(p), 20, f"{name} decodes the camera", interval=0.25)
        await viewers["small"].evaluate(RESIZE_JS, list(SMALL))

        timeline = {name: [] for name in viewers}
        sent = []
        prev = {name: await p.evaluate(INBOUND_JS) for name, p in viewers.items()}
        prev_sent = await teacher.evaluate(SENT_JS)
        first = {name: dict(prev[name]) for name in viewers}
        pids = process_tree(server.proc.pid)
        cpu0, t0, fwd0 = sum(cpu_seconds(p) for p in pids), time.monotonic(), forwarded_packets(server.port)
        start = time.monotonic()
        for tick in range(1, int(args.seconds / args.every) + 1):
            await asyncio.sleep(max(0.0, start + tick * args.every - time.monotonic()))
            for name, p in viewers.items():
                now = await p.evaluate(INBOUND_JS)
                timeline[name].append((tick * args.every, now["width"], kbps(now, prev[name])))
                prev[name] = now
            now_sent = await teacher.evaluate(SENT_JS)
            sent.append((kbps(now_sent, prev_sent), now_sent["layers"]))
            prev_sent = now_sent
        pids = process_tree(server.proc.pid)
        cpu1, t1, fwd1 = sum(cpu_seconds(p) for p in pids), time.monotonic(), forwarded_packets(server.port)
        span, fwd = t1 - t0, fwd1 - fwd0
        received = {name: prev[name]["packets"] - first[name]["packets"] for name in viewers}
        decoded = {name: prev[name]["decoded"] - first[name]["decoded"] for name in viewers}
        return {"simulcast": simulcast, "workers": workers, "timeline": timeline, "sent": sent, "cpu": (cpu1 - cpu0) / span,
                "fwd_pps": fwd / span, "us_per_packet": (cpu1 - cpu0) / fwd * 1e6 if fwd else float("nan"),
                "video_pkts": received, "decoded": decoded, "span": span}
    except BaseException:
        server.stop()
        print("--- stoa serve log (tail) ---\n" + "\n".join(server.log.read_text(errors="replace").splitlines()[-40:]),
              flush=True)
        raise
    finally:
        for ctx in contexts:
            try:
                await asyncio.wait_for(ctx.close(), 10)
            except Exception:
                pass
        server.stop()


async def _decoding(page) -> bool:
    s = await page.evaluate(INBOUND_JS)
    return s["decoded"] > 5 and s["width"] > 0


def label_of(simulcast: bool, workers: int) -> str:
    return f"simulcast {'on ' if simulcast else 'off'} workers {workers}"


def report(r: dict) -> None:
    label = label_of(r["simulcast"], r["workers"])
    for name, points in r["timeline"].items():
        line = " | ".join(f"t={t:g} {w} {k:.0f}kbps" for t, w, k in points)
        mean = sum(k for _, _, k in points) / max(1, len(points))
        widths = sorted({w for _, w, _ in points})
        print(f"  {label} {name:>5}: {line}", flush=True)
        print(f"  {label} {name:>5}: mean {mean:.0f} kbps, widths {widths}, {r['decoded'][name]} frames decoded, "
              f"{r['video_pkts'][name] / r['span']:.0f} video pkt/s", flush=True)
    up = sum(k for k, _ in r["sent"]) / max(1, len(r["sent"]))
    layers = max((n for _, n in r["sent"]), default=0)
    print(f"  {label}: publisher sends {up:.0f} kbps of video ({layers} encoding(s) running at most); server "
          f"{r['cpu']:.3f} CPU s/s, {r['fwd_pps']:.0f} forwarded pkt/s, {r['us_per_packet']:.1f} µs CPU per "
          f"forwarded packet", flush=True)


async def run(args) -> list[dict]:
    from playwright.async_api import async_playwright

    variants = [(on, n) for on in args.simulcast for n in args.workers]
    order = []
    for i in range(args.rounds):
        order += variants if i % 2 == 0 else variants[::-1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="stoa-bench-simulcast-") as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "chromium"
        home.mkdir()
        pw = await async_playwright().start()
        try:
            browser = await pw.chromium.launch_persistent_context(
                str(home / "profile"), executable_path=CHROMIUM, headless=True, args=chromium_args(),
                env=_browser_env(home), viewport={"width": 1024, "height": 640})
            try:
                async def context_of():
                    return await browser.browser.new_context(viewport={"width": 1024, "height": 640})

                for simulcast, workers in order:
                    print(f"[{time.strftime('%H:%M:%S')}] {label_of(simulcast, workers)}: instructor "
                          f"camera, students 'small' ({SMALL[0]}x{SMALL[1]} tile) and 'full'", flush=True)
                    row = await variant(context_of, simulcast, workers, tmp, args)
                    report(row)
                    rows.append(row)
            finally:
                await browser.close()
        finally:
            await pw.stop()
    return rows


def summary(rows: list[dict], args) -> None:
    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for simulcast, workers in [(on, n) for on in args.simulcast for n in args.workers]:
        mine = [r for r in rows if r["simulcast"] == simulcast and r["workers"] == workers]
        if not mine:
            continue

        def mean(values):
            values = list(values)
            return sum(values) / len(values) if values else float("nan")

        per = {name: mean(k for r in mine for _, _, k in r["timeline"][name]) for name in mine[0]["timeline"]}
        print(f"{label_of(simulcast, workers)} ({len(mine)} run(s)): "
              + ", ".join(f"{name} {k:.0f} kbps" for name, k in per.items())
              + f"; publisher {mean(k for r in mine for k, _ in r['sent']):.0f} kbps; server "
              f"{mean(r['cpu'] for r in mine):.3f} CPU s/s, {mean(r['us_per_packet'] for r in mine):.1f} µs per "
              f"forwarded packet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds measured per variant")
    parser.add_argument("--every", type=float, default=1.0, help="sampling interval")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the variants (in order, then reversed)")
    parser.add_argument("--workers", type=lambda v: [int(n) for n in v.split(",")], default=[0, 2],
                        help="`stoa serve --workers` values to alternate, comma-separated (0: viewers in the "
                             "main process)")
    parser.add_argument("--simulcast", type=lambda v: [{"on": True, "off": False}[x] for x in v.split(",")],
                        default=[True, False], help="on, off or on,off")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="bound on the whole run (default: 60 s per variant run)")
    args = parser.parse_args()
    if args.max_seconds is None:
        args.max_seconds = 60.0 * args.rounds * len(args.workers) * len(args.simulcast)
    rows = asyncio.run(asyncio.wait_for(run(args), args.max_seconds))
    summary(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
