"""Benchmark peers, each role in its own process (run by bench/fanout.py, not by hand):

  python bench/peers.py publisher --base URL --room R --token T
      one WHIP publisher: synthetic 640x480 30 fps VP8 at ~1.5 Mbps plus Opus; prints READY, then
      publishes until SIGTERM (then DELETEs its session).
  python bench/peers.py subscribers --base URL --room R [--stoa-dev-tokens]
      WHEP viewers driven by JSON lines on stdin ({"cmd": "add", "n": K} | {"cmd": "snap"} |
      {"cmd": "quit"}), one JSON line answered on stdout per command.

Viewers do NOT decode: every RTP packet is taken from the receiver before its jitter buffer
(sfu.aiortc_seam.tap_receiver, which also stops the decoder thread) and only counted. A video frame
counts as complete when its marker-bit packet arrives and no sequence number was missing since the
previous marker, so fps is "complete frames per second" at the cost of a few integer operations
per packet instead of a VP8 decode (~3 ms per 640x480 frame, which would saturate 2 cores at 30
viewers).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import signal
import sys
import threading
import time

import aiohttp
from aiortc import RTCSessionDescription

from sfu.aiortc_seam import tap_receiver
# The synthetic media and the client peer helpers are `stoa loadtest`'s (one copy of each).
from stoa.loadtest.media import FPS, VIDEO_CLOCK, SyntheticVideo, Tone, hold_vp8_bitrate
from stoa.loadtest.peers import StreamStats, client_pc, local_offer, post_sdp


# --- publisher ---------------------------------------------------------------------------

async def run_publisher(args) -> None:
    hold_vp8_bitrate()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    pc = client_pc()
    video = SyntheticVideo()
    pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    async with aiohttp.ClientSession() as http:
        answer, location = await post_sdp(http, f"{args.base}/whip/{args.room}", args.token,
                                          await local_offer(pc))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        deadline = time.monotonic() + 15
        while pc.connectionState != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError(f"publisher did not connect ({pc.connectionState})")
            await asyncio.sleep(0.05)
        print(json.dumps({"ready": True, "location": location}), flush=True)
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=_stdin_lines, args=(loop, commands), daemon=True).start()
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            getter = asyncio.ensure_future(commands.get())
            await asyncio.wait([getter, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            line = getter.result()
            if line is None or json.loads(line)["cmd"] == "quit":
                break
            # "snap": what the publisher actually produced, so a slow publisher is not blamed on the server.
            print(json.dumps({"t": time.monotonic(), "frames": video.count, "keyframes": video.keyframes}),
                  flush=True)
        try:
            async with http.delete(args.base + location, timeout=aiohttp.ClientTimeout(total=3),
                                   headers={"Authorization": f"Bearer {args.token}"}):
                pass
        except Exception:
            pass
    await pc.close()


# --- subscribers --------------------------------------------------------------------------

class LegCounter(StreamStats):
    """Counts one received track without decoding it (the load test's header counter)."""

    __slots__ = ()

    async def on_rtp(self, packet, arrival: float) -> None:
        self.on_packet(packet.sequence_number, packet.timestamp, packet.marker, len(packet.payload))


class Viewer:
    def __init__(self, http: aiohttp.ClientSession, base: str, room: str, token: str):
        self.http, self.base, self.room, self.token = http, base, room, token
        self.pc = client_pc()
        self.video = LegCounter()
        self.audio = LegCounter()
        self.location: str | None = None

    async def start(self) -> None:
        v = self.pc.addTransceiver("video", direction="recvonly")
        a = self.pc.addTransceiver("audio", direction="recvonly")
        tap_receiver(v.receiver, self.video.on_rtp, lambda *_: None)
        tap_receiver(a.receiver, self.audio.on_rtp, lambda *_: None)
        answer, self.location = await post_sdp(self.http, f"{self.base}/whep/{self.room}", self.token,
                                               await local_offer(self.pc))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def wait_receiving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.video.frames < 3 or self.audio.packets < 3:
            if time.monotonic() > deadline:
                raise RuntimeError(f"viewer got no media in {timeout:.0f} s (state {self.pc.connectionState}, "
                                   f"video frames {self.video.frames}, audio packets {self.audio.packets})")
            await asyncio.sleep(0.05)

    def snap(self) -> dict:
        return {"vp": self.video.packets, "vo": self.video.octets, "vf": self.video.frames, "vt": self.video.timestamps,
                "ap": self.audio.packets}

    async def stop(self) -> None:
        if self.location:
            try:
                async with self.http.delete(self.base + self.location, timeout=aiohttp.ClientTimeout(total=3),
                                            headers={"Authorization": f"Bearer {self.token}"}):
                    pass
            except Exception:
                pass
        await self.pc.close()


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_subscribers(args) -> None:
    from shared.auth import mint_token
    from shared.config import DEV_API_KEY, DEV_API_SECRET

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, commands), daemon=True).start()
    loop.add_signal_handler(signal.SIGTERM, commands.put_nowait, '{"cmd": "quit"}')
    viewers: list[Viewer] = []
    lag = {"max": 0.0, "over50": 0}

    async def watch_lag() -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - t - 0.01
            lag["max"] = max(lag["max"], late)
            lag["over50"] += late > 0.05

    lag_task = asyncio.ensure_future(watch_lag())

    def reply(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    async with aiohttp.ClientSession() as http:
        while True:
            line = await commands.get()
            if line is None:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "snap":
                reply({"t": time.monotonic(), "viewers": [v.snap() for v in viewers], "lag_max": lag["max"],
                       "lag_over50": lag["over50"]})
                lag["max"] = 0.0
            elif cmd["cmd"] == "add":
                new = []
                for i in range(cmd["n"]):
                    identity = f"{args.prefix}-{len(viewers) + len(new)}"
                    token = mint_token(DEV_API_KEY, DEV_API_SECRET, room=args.room, identity=identity,
                                       role="viewer")
                    new.append(Viewer(http, args.base, args.room, token))
                try:
                    # A few at a time: ICE+DTLS setup is CPU-heavy on both sides.
                    for k in range(0, len(new), 5):
                        await asyncio.gather(*(v.start() for v in new[k:k + 5]))
                    viewers.extend(new)
                    await asyncio.gather(*(v.wait_receiving(20) for v in new))
                    reply({"ok": True, "viewers": len(viewers)})
                except Exception as exc:
                    viewers.extend(v for v in new if v not in viewers)
                    reply({"ok": False, "error": str(exc), "viewers": len(viewers)})
        lag_task.cancel()
        await asyncio.gather(*(v.stop() for v in viewers), return_exceptions=True)


def encode_cost() -> None:
    """CPU of one 640x480 VP8 encode at 1.5 Mbps, in isolation: the least a re-encoding relay pays per
    viewer and frame, whatever else it does."""
    import aiortc.codecs.vpx as vpx

    hold_vp8_bitrate()
    source = SyntheticVideo()
    frames = []
    for i in range(len(source.frames)):
        frame = source.frames[i]
        frame.pts = int(i * VIDEO_CLOCK / FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        frames.append(frame)
    encoder = vpx.Vp8Encoder()
    for frame in frames[:10]:
        encoder.encode(frame)
    start, n, octets = time.process_time(), 0, 0
    for _ in range(3):
        for frame in frames:
            payloads, _ = encoder.encode(frame)
            n += 1
            octets += sum(map(len, payloads))
    spent = time.process_time() - start
    print(json.dumps({"ms_per_frame": spent / n * 1000, "kbps": octets * 8 / n * FPS / 1000}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("publisher")
    p.add_argument("--base", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--token", default="none")
    s = sub.add_parser("subscribers")
    s.add_argument("--base", required=True)
    s.add_argument("--room", required=True)
    s.add_argument("--prefix", default="bench-viewer", help="viewer identities are PREFIX-0, PREFIX-1, ...")
    sub.add_parser("encode-cost")
    args = parser.parse_args()
    if args.role == "encode-cost":
        encode_cost()
        return
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run_publisher(args) if args.role == "publisher" else run_subscribers(args))


if __name__ == "__main__":
    main()
