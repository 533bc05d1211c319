"""The recorder's own CPU per second of media, without a server: what `stoa serve --record` adds per track.

Encodes 10 s of 640x480 30 fps VP8 at 1.5 Mbps and of 48 kHz Opus once, up front, then feeds the RTP
packets to a `TrackRecorder` at real-time pace (one frame's packets per 1/30 s, one Opus packet per 20 ms)
and reads this process's CPU time, with and without a recorder, and prints the difference per second
of media. The recorder's worker thread (depacketize, mux, fsync once a second) is included, since it
shares the process.

    .venv/bin/python bench/recorder_cost.py [--seconds 10] [--keep DIR]

Not part of the test suite. `bench/fanout.py --record` measures the same cost inside a running server,
where 30 viewers' noise is larger than this figure; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import sys
import tempfile
import time

import av
import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recorder.track_recorder import TrackRecorder  # noqa: E402


def video_frames(seconds: int) -> list[list[RtpPacket]]:
    """RTP packets of each VP8 frame: pre-rendered noise over a moving gradient, at 1.5 Mbps."""
    encoder = Vp8Encoder()
    encoder.target_bitrate = 1_500_000
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 64, (480, 640, 3), dtype=np.uint8)
    frames, seq = [], 0
    for i in range(seconds * 30):
        img = np.roll(noise, i * 3, axis=1) + np.uint8(i % 128)
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=(i == 0))
        group = []
        for j, payload in enumerate(payloads):
            group.append(RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=timestamp, ssrc=1,
                                   marker=j == len(payloads) - 1, payload=payload))
            seq += 1
        frames.append(group)
    return frames


def audio_frames(seconds: int) -> list[list[RtpPacket]]:
    """One Opus packet per 20 ms of a 440 Hz tone."""
    encoder = OpusEncoder()
    t = np.arange(960 * seconds * 50) / 48000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    frames = []
    for i in range(seconds * 50):
        chunk = np.repeat(pcm[i * 960:(i + 1) * 960, None], 2, axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, timestamp = encoder.encode(frame)
        frames.append([RtpPacket(payload_type=111, sequence_number=i & 0xFFFF, timestamp=timestamp, ssrc=2,
                                 marker=False, payload=p) for p in payloads])
    return frames


async def feed(frames: list[list[RtpPacket]], rate: int, recorder: TrackRecorder | None) -> tuple[float, float]:
    """Feed at real-time pace; returns (CPU seconds, wall seconds), recorder close included."""
    start, cpu = time.monotonic(), time.process_time()
    for k, group in enumerate(frames):
        await asyncio.sleep(max(0.0, start + k / rate - time.monotonic()))
        if recorder is not None:
            now = time.time()
            for packet in group:
                recorder.feed(packet, now)
    if recorder is not None:
        await recorder.close()
    return time.process_time() - cpu, time.monotonic() - start


async def measure(kind: str, frames, rate: int, directory: str) -> dict:
    def make():
        if kind == "video":
            return TrackRecorder(os.path.join(directory, "video.webm"), "video", "video/VP8", 90000,
                                 width=640, height=480)
        return TrackRecorder(os.path.join(directory, "audio.webm"), "audio", "audio/opus", 48000)

    alone, wall = await feed(frames, rate, None)
    recorder = make()
    recorded, _ = await feed(frames, rate, recorder)
    size = os.path.getsize(recorder.path)
    return {"kind": kind, "media_s": round(wall, 1), "frames": recorder.frames_written,
            "file_kB": round(size / 1000), "recorder_ms_per_s": round(1000 * (recorded - alone) / wall, 2)}


async def main(args) -> int:
    directory = args.keep or tempfile.mkdtemp(prefix="stoa-recorder-cost-")
    os.makedirs(directory, exist_ok=True)
    print(f"encoding {args.seconds} s of VP8 and Opus ...", flush=True)
    video, audio = video_frames(args.seconds), audio_frames(args.seconds)
    rows = []
    for kind, frames, rate in (("video", video, 30), ("audio", audio, 50)):
        print(f"feeding {kind} at real-time pace ({args.seconds} s, twice: without and with a recorder) ...",
              flush=True)
        rows.append(await measure(kind, frames, rate, directory))
        print(rows[-1], flush=True)
    print()
    print("| track | media s | frames written | file kB | recorder CPU ms per s of media |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['media_s']} | {r['frames']} | {r['file_kB']} | {r['recorder_ms_per_s']} |")
    total = sum(r["recorder_ms_per_s"] for r in rows)
    print(f"\none camera + microphone recorded: {total:.1f} ms of CPU per second; files in {directory}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--keep", metavar="DIR", help="write the recordings here (default: a temporary directory)")
    sys.exit(asyncio.run(main(ap.parse_args())))
