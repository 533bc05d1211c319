"""A Chromium instructor publishes camera and screen to Stoa on loopback; the send side, second by second.

  flock -w 1200 /tmp/stoa-heavy.lock .venv/bin/python bench/browser_publish.py            # 20 s
  .venv/bin/python bench/browser_publish.py --seconds 30 --screen canvas --viewer

The server is `stoa serve --dev` in a process of its own (loopback, ICE on 127.0.0.1). Headless Chromium
(flags of tests/browser.py: fake camera and microphone, fake capture UI) opens the room page as the
instructor, publishes a 1280x720 camera through the page's own `publish()` and, --share-after seconds
later, a 1920x1080 screen (contentHint "detail"); t counts from the camera's publish. Every --every seconds the page's publisher connection is read with getStats():

- `availableOutgoingBitrate` of the selected candidate pair: the browser's bandwidth estimate;
- per video track (outbound-rtp, by mid): sent bitrate from bytesSent, frame size, fps and
  qualityLimitationReason.

--screen display uses getDisplayMedia (Chromium's fake capture source, 1920x1080 when asked for it),
--screen canvas a 1920x1080 canvas with moving detail through captureStream(30). --camera fake is
Chromium's fake camera (a simple pattern: about 700 kbps at 720p whatever the estimate); --camera clip
feeds it a generated 720p clip of scrolling noise (--use-file-for-fake-video-capture), which can use
what the estimate allows. --viewer adds a student page and prints the frame size it
decodes for each track. At the end: the first second at which both tracks had their full size and at
least --target kbps each, and the figures over the last 10 s. Nothing here is asserted; it only prints.

--limit-kbps K puts the server in a network namespace behind a veth pair whose publisher-to-server
direction a tbf qdisc holds to K kbps (root needed; loopback is never shaped), to see the estimate back
off to what the link carries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
STOA = str(Path(PY).parent / "stoa")
ROOM = "bench"

# A canvas "screen": a slide-like page whose text and a noise band move, so the encoder has detail to
# spend bits on (a still canvas would be encoded in a few kbps and prove nothing about bandwidth).
CANVAS_SCREEN_JS = """() => {
  const W = 1920, H = 1080;
  const noise = document.createElement('canvas');
  noise.width = W + 256; noise.height = 240;
  const ng = noise.getContext('2d');
  const img = ng.createImageData(noise.width, noise.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const v = (Math.random() * 255) | 0; img.data[i] = v; img.data[i + 1] = 255 - v; img.data[i + 2] = v; img.data[i + 3] = 255;
  }
  ng.putImageData(img, 0, 0);
  const c = document.createElement('canvas');
  c.width = W; c.height = H;
  const g = c.getContext('2d');
  let n = 0;
  const draw = () => {
    n += 1;
    g.fillStyle = '#fafafa'; g.fillRect(0, 0, W, H);
    g.fillStyle = '#123'; g.font = '28px monospace';
    for (let y = 40; y < H; y += 36) g.fillText(`line ${y} frame ${n} ` + 'x'.repeat((y + n) % 90), 20 + (n % 40), y);
    g.drawImage(noise, -((n * 8) % 256), 0, W + 256, 240, 0, 300 + (n * 5) % 500, W + 256, 240);
  };
  draw();
  setInterval(draw, 1000 / 30);
  return c.captureStream(30);
}"""


def write_y4m(path: Path, width: int = 1280, height: int = 720, fps: int = 20, frames: int = 40) -> None:
    """A looping 4:2:0 clip for Chromium's fake camera: scrolling noise over a gradient, so that the
    encoder has detail to spend bits on (the built-in fake pattern needs ~700 kbps at 720p)."""
    import numpy as np

    rng = np.random.default_rng(1)
    block = 8  # 8x8 blocks: detail that VP8 can code at 720p without its quality scaler stepping down
    noise = rng.integers(0, 256, size=(height // block, width * 2 // block), dtype=np.uint8)
    noise = np.repeat(np.repeat(noise, block, axis=0), block, axis=1)
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :]
    u = np.full((height // 2, width // 2), 110, np.uint8)
    v = np.tile(np.linspace(90, 170, width // 2, dtype=np.float32).astype(np.uint8), (height // 2, 1))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            shift = (i * 16) % width
            y = (noise[:, shift:shift + width] * 0.5 + ramp * 0.5).astype(np.uint8)
            f.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())


CAMERA_JS = """async () => {
  const s = window.stoa.state;
  s.camera = await navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: true });
  await window.stoa.publish();
  const cam = s.camera.getVideoTracks()[0].getSettings();
  return [cam.width, cam.height, cam.frameRate];
}"""

SCREEN_JS = """async ([screenMode, canvasJs]) => {
  const s = window.stoa.state;
  let screen;
  if (screenMode === 'canvas') screen = eval(canvasJs)();
  else screen = await navigator.mediaDevices.getDisplayMedia({
    video: { width: { ideal: 1920 }, height: { ideal: 1080 }, frameRate: { ideal: 30 } }, audio: false });
  for (const t of screen.getVideoTracks()) t.contentHint = 'detail';
  s.screen = screen;
  await window.stoa.publish();
  const scr = screen.getVideoTracks()[0].getSettings();
  return [scr.width, scr.height, scr.frameRate];
}"""

SOURCES_JS = """() => {
  const s = window.stoa.state, out = {};
  for (const tr of s.pub.getTransceivers())
    if (tr.sender.track && tr.sender.track.kind === 'video')
      out[tr.mid] = s.screen && s.screen.getTracks().includes(tr.sender.track) ? 'screen' : 'camera';
  return out;
}"""

# Per mid: the outbound video stats of the publisher; plus the selected pair's estimate.
SEND_STATS_JS = """async () => {
  const pc = window.stoa.state.pub;
  if (!pc) return null;
  const mids = new Map();
  for (const tr of pc.getTransceivers()) if (tr.sender.track) mids.set(tr.mid, tr.sender.track.kind);
  const report = await pc.getStats();
  let estimate = null;
  const out = [];
  report.forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.availableOutgoingBitrate !== undefined)
      estimate = s.availableOutgoingBitrate;
    if (s.type === 'outbound-rtp' && s.kind === 'video')
      out.push({ mid: s.mid, bytes: s.bytesSent, width: s.frameWidth || 0, height: s.frameHeight || 0,
                 fps: s.framesPerSecond || 0, qlr: s.qualityLimitationReason || '' });
  });
  return { estimate, out, t: performance.now() };
}"""

RECV_STATS_JS = """async () => {
  const pc = window.stoa.state.sub;
  if (!pc) return [];
  const info = window.stoa.state.trackInfo;
  const out = [];
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      const t = info.get(s.mid) || {};
      out.push({ source: t.source || s.mid, width: s.frameWidth || 0, height: s.frameHeight || 0, decoded: s.framesDecoded || 0 });
    }
  });
  return out;
}"""


class ShapedLink:
    """--limit-kbps: the server in a network namespace of its own behind a veth pair whose root-side
    egress (the publisher's uplink) is held to `kbps` by a tbf qdisc. Needs root; removed at the end."""

    def __init__(self, kbps: int):
        tag = os.getpid() % 100000
        self.ns, self.outer, self.inner = f"stoa-bwe-{tag}", f"sbwe{tag}a", f"sbwe{tag}b"
        self.host, self.server_ip = "10.213.0.1", "10.213.0.2"
        self.kbps = kbps

    def up(self) -> None:
        import subprocess

        steps = [
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner],
            ["ip", "link", "set", self.inner, "netns", self.ns],
            ["ip", "addr", "add", f"{self.host}/30", "dev", self.outer],
            ["ip", "link", "set", self.outer, "up"],
            ["ip", "-n", self.ns, "addr", "add", f"{self.server_ip}/30", "dev", self.inner],
            ["ip", "-n", self.ns, "link", "set", self.inner, "up"],
            ["ip", "-n", self.ns, "link", "set", "lo", "up"],
            ["tc", "qdisc", "add", "dev", self.outer, "root", "tbf", "rate", f"{self.kbps}kbit",
             "burst", "15kb", "latency", "100ms"],
        ]
        for step in steps:
            subprocess.run(step, check=True)

    def down(self) -> None:
        import subprocess

        subprocess.run(["ip", "netns", "del", self.ns], check=False)  # takes both ends of the veth along
        subprocess.run(["ip", "link", "del", self.outer], check=False, stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_http(url: str, proc, timeout: float = 30.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the server exited at start-up (code {proc.returncode})")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout} s")
            await asyncio.sleep(0.2)


async def run(args) -> int:
    from playwright.async_api import async_playwright

    from shared.auth import mint_token
    from shared.config import DEV_API_KEY, DEV_API_SECRET
    from tests.browser import CHROMIUM, _browser_env, chromium_args

    tmp = Path(tempfile.mkdtemp(prefix="stoa-bench-publish-"))
    port = free_port()
    link = ShapedLink(args.limit_kbps) if args.limit_kbps else None
    address = link.server_ip if link else "127.0.0.1"
    base = f"http://{address}:{port}"
    prefix = ["ip", "netns", "exec", link.ns] if link else []
    if link:
        link.up()
        print(f"server in netns {link.ns} at {address}; publisher uplink limited to {args.limit_kbps} kbps (tbf)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.stoa_src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.stoa_src).resolve()), env.get("PYTHONPATH")]))
    log = open(tmp / "server.log", "wb")
    server = await asyncio.create_subprocess_exec(
        *prefix, STOA, "serve", "--dev", "--host", address, "--port", str(port), "--ice-address", address,
        "--data-dir", str(tmp / "data"),
        cwd=ROOT, env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    pw = None
    try:
        await wait_http(f"{base}/healthz", server)
        pw = await async_playwright().start()
        home = tmp / "chromium"
        home.mkdir()
        browser_args = chromium_args()
        if args.camera == "clip":
            write_y4m(tmp / "camera.y4m")
            browser_args.append(f"--use-file-for-fake-video-capture={tmp / 'camera.y4m'}")
        if link:  # Chromium maps even IP literals through the resolver rules: let the server's through
            browser_args = [a + f" , EXCLUDE {address}" if a.startswith("--host-resolver-rules=") else a
                            for a in browser_args]
            browser_args.append(f"--unsafely-treat-insecure-origin-as-secure={base}")  # getUserMedia over http
        context = await pw.chromium.launch_persistent_context(
            str(home / "profile"), executable_path=CHROMIUM, headless=True, args=browser_args,
            env=_browser_env(home), viewport={"width": 1280, "height": 800})

        def token(identity: str, role: str) -> str:
            return mint_token(DEV_API_KEY, DEV_API_SECRET, room=ROOM, identity=identity, role=role, name=identity)

        teacher = await context.new_page()
        await teacher.goto(f"{base}/rooms/{ROOM}?token={token('teacher', 'instructor')}")
        await teacher.wait_for_function("window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1")
        async def share() -> None:
            nonlocal screen
            screen = await teacher.evaluate(SCREEN_JS, [args.screen, CANVAS_SCREEN_JS])
            full["screen"] = tuple(screen[:2])
            print(f"{time.monotonic() - start:5.1f} share started: {args.screen} {screen} [w, h, fps]")

        student = None
        if args.viewer:
            ctx2 = await context.browser.new_context()
            student = await ctx2.new_page()
            await student.goto(f"{base}/rooms/{ROOM}?token={token('student', 'student')}")
        start = time.monotonic()
        camera = await teacher.evaluate(CAMERA_JS)
        full = {"camera": tuple(camera[:2])}
        screen = None
        if args.share_after <= 0:
            await share()
        else:
            await teacher.wait_for_function("window.stoa.state.ownTracks.size === 2", timeout=30000)
        print(f"{'t/s':>5} {'estimate':>9} | {'camera kbps':>11} {'size':>9} {'fps':>4} {'limit':>9} | "
              f"{'screen kbps':>11} {'size':>9} {'fps':>4} {'limit':>9}" + ("  | viewer decodes" if student else ""))
        rows = []
        prev = None
        reached = None
        print(f"capture: camera {camera} [w, h, fps]")
        sources = {}
        while time.monotonic() - start < args.seconds:
            await asyncio.sleep(args.every)
            if screen is None and time.monotonic() - start >= args.share_after:
                await share()
            sources = await teacher.evaluate(SOURCES_JS)
            snap = await teacher.evaluate(SEND_STATS_JS)
            if snap is None:
                continue
            t = time.monotonic() - start
            per = {}
            for o in snap["out"]:
                src = sources.get(o["mid"], o["mid"])
                kbps = 0.0
                if prev is not None:
                    before = next((p for p in prev["out"] if p["mid"] == o["mid"]), None)
                    dt = (snap["t"] - prev["t"]) / 1000
                    if before is not None and dt > 0:
                        kbps = (o["bytes"] - before["bytes"]) * 8 / dt / 1000
                per[src] = (kbps, o)
            prev = snap
            est = (snap["estimate"] or 0) / 1000
            cells = []
            for src in ("camera", "screen"):
                kbps, o = per.get(src, (0.0, {"width": 0, "height": 0, "fps": 0, "qlr": "-"}))
                cells.append(f"{kbps:11.0f} {o['width']:>4}x{o['height']:<4} {o['fps']:4.0f} {o['qlr']:>9}")
            viewer = ""
            if student is not None:
                got = await student.evaluate(RECV_STATS_JS)
                viewer = "  | " + ", ".join(f"{g['source']} {g['width']}x{g['height']}" for g in got)
            print(f"{t:5.1f} {est:9.0f} | {cells[0]} | {cells[1]}{viewer}", flush=True)
            rows.append((t, est, per))
            ok = screen is not None and all(src in per and per[src][0] >= args.target
                     and (per[src][1]["width"], per[src][1]["height"]) == full[src] for src in ("camera", "screen"))
            if ok and reached is None:
                reached = t
        tail = [r for r in rows if r[0] >= args.seconds - 10]
        if tail:
            def mean(values):
                values = list(values)
                return sum(values) / len(values) if values else 0.0
            print(f"last 10 s: estimate {mean(r[1] for r in tail):.0f} kbps; camera "
                  f"{mean(r[2].get('camera', (0,))[0] for r in tail):.0f} kbps; screen "
                  f"{mean(r[2].get('screen', (0,))[0] for r in tail):.0f} kbps")
        print(f"both tracks at full size and >= {args.target:.0f} kbps: "
              + (f"first at {reached:.1f} s" if reached is not None else "never"))
        await context.close()
        return 0
    finally:
        if pw is not None:
            await pw.stop()
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except asyncio.TimeoutError:
                server.kill()
                await server.wait()
        log.close()
        if link:
            link.down()
        if args.keep_logs:
            shutil.copy(tmp / "server.log", Path(args.keep_logs) / "browser_publish-server.log")
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--screen", choices=("display", "canvas"), default="display",
                        help="getDisplayMedia's fake source, or a 1920x1080 canvas with moving detail")
    parser.add_argument("--camera", choices=("fake", "clip"), default="fake",
                        help="Chromium's fake camera pattern, or a generated 720p noise clip (y4m) as the camera")
    parser.add_argument("--share-after", type=float, default=2.0,
                        help="seconds from publishing the camera to starting the share (0: one offer for both)")
    parser.add_argument("--target", type=float, default=1500.0, help="kbps each track should reach")
    parser.add_argument("--viewer", action="store_true", help="add a student page; print what it decodes")
    parser.add_argument("--limit-kbps", type=int, default=0,
                        help="run the server behind a veth pair held to this rate (root; network namespace)")
    parser.add_argument("--stoa-src", help="run the server from this source tree (A/B a change)")
    parser.add_argument("--keep-logs", help="copy the server log into this directory")
    args = parser.parse_args()
    sys.exit(asyncio.run(asyncio.wait_for(run(args), args.seconds + 120)))


if __name__ == "__main__":
    main()
