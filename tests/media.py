"""Synthetic media for tests and benchmarks: video frames carrying a readable frame counter, and a tone."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

BITS = 16
VIDEO_CLOCK = 90000


def draw_counter(n: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A gray-level picture whose top band encodes n in BITS big black/white blocks."""
    img = np.full((height, width), 128, dtype=np.uint8)
    bw = width // BITS
    bh = height // 4
    for bit in range(BITS):
        img[:bh, bit * bw:(bit + 1) * bw] = 235 if (n >> (BITS - 1 - bit)) & 1 else 16
    # Some moving texture below so the encoder has real work.
    y = np.arange(height - bh)[:, None]
    x = np.arange(width)[None, :]
    img[bh:, :] = ((x + y + n * 4) % 64 * 3).astype(np.uint8)
    return img


def read_counter(frame: VideoFrame) -> int:
    """Read back the counter drawn by draw_counter (after any resizing the decoder did)."""
    gray = frame.to_ndarray(format="gray")
    h, w = gray.shape
    bw = w // BITS
    bh = h // 4
    n = 0
    for bit in range(BITS):
        block = gray[bh // 4: bh * 3 // 4, bit * bw + bw // 4: (bit + 1) * bw - bw // 4]
        n = (n << 1) | (1 if block.mean() > 128 else 0)
    return n


class CounterVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30, first: int = 0):
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.first = self.count = first  # a second publisher's frames told apart from the first one's
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + (self.count - self.first) / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = draw_counter(self.count, self.width, self.height)
        frame = VideoFrame.from_ndarray(np.stack([img] * 3, axis=-1), format="rgb24")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frequency: float = 440.0, rate: int = 48000, ptime: float = 0.02, amplitude: float = 8000):
        super().__init__()
        self.frequency, self.rate = frequency, rate
        self.amplitude = amplitude  # peak, of 32767; change it live to make the track louder or quieter
        self.samples = int(rate * ptime)
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self.count * self.samples / self.rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(self.samples) + self.count * self.samples) / self.rate
        pcm = (np.sin(2 * np.pi * self.frequency * t) * self.amplitude).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.count * self.samples
        frame.time_base = fractions.Fraction(1, self.rate)
        self.count += 1
        return frame
