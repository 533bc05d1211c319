"""Synthetic media for load tests and benchmarks: 640x480 30 fps VP8 held at ~1.5 Mbps, plus Opus.

Frames are rendered once (scrolling noise over a gradient), so making a frame costs nothing and the
encoder has real detail to spend its bits on."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.video.frame import PictureType

VIDEO_CLOCK = 90000
WIDTH, HEIGHT, FPS = 640, 480, 30
BITRATE = 1_500_000


def hold_vp8_bitrate(bitrate: int = BITRATE) -> None:
    """Hold every aiortc VP8 encoder of this process at `bitrate` whatever REMB says (aiortc re-creates the
    encoder, with a keyframe, whenever REMB moves its target by 10%), so every run carries the same stream."""
    import aiortc.codecs.vpx as vpx

    vpx.Vp8Encoder.target_bitrate = property(lambda self: bitrate, lambda self, value: None)


class SyntheticVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, loop_frames: int = 60):
        super().__init__()
        rng = np.random.default_rng(7)
        noise = rng.integers(0, 256, size=(HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
        ramp = (np.arange(WIDTH)[None, :, None] * 255 // WIDTH).astype(np.uint16)
        self.frames = []
        for i in range(loop_frames):
            shifted = noise[:, i * 4: i * 4 + WIDTH, :].astype(np.uint16)
            img = ((shifted // 2 + ramp // 2) % 256).astype(np.uint8)
            self.frames.append(VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p"))
        self.count = self.keyframes = 0
        self.last: VideoFrame | None = None
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count / FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.last is not None and self.last.pict_type == PictureType.I:
            self.keyframes += 1  # the encoder forced the previous frame to a keyframe (a PLI)
        frame = self.last = self.frames[self.count % len(self.frames)]
        frame.pts = int(self.count * VIDEO_CLOCK / FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        frame.pict_type = PictureType.NONE  # frames are reused; a forced keyframe must not stick
        self.count += 1
        return frame


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self, rate: int = 48000, ptime: float = 0.02):
        super().__init__()
        self.rate, self.samples = rate, int(rate * ptime)
        t = np.arange(self.samples * 50) / rate
        self.pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count * self.samples / self.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = self.count % 50
        chunk = self.pcm[i * self.samples:(i + 1) * self.samples]
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.count * self.samples
        frame.time_base = fractions.Fraction(1, self.rate)
        self.count += 1
        return frame
