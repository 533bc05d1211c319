"""Synthetic media for load tests and benchmarks: 640x480 30 fps VP8 held at ~1.5 Mbps, plus Opus.

Frames are rendered once (scrolling noise over a gradient), so making a frame costs nothing and the
encoder has real detail to spend its bits on. `SyntheticVideo` is encoded live by aiortc (a PLI gets a
keyframe); `LoopedVideo` is the same pictures encoded once at start and sent as a loop of VP8 packets,
a keyframe every second, so a load client on the server's machine spends no CPU on encoding."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
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


def synthetic_frames(count: int = 60) -> list[VideoFrame]:
    """`count` 640x480 pictures of noise scrolling over a gradient (yuv420p)."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=(HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
    ramp = (np.arange(WIDTH)[None, :, None] * 255 // WIDTH).astype(np.uint16)
    frames = []
    for i in range(count):
        shifted = noise[:, i * 4: i * 4 + WIDTH, :].astype(np.uint16)
        img = ((shifted // 2 + ramp // 2) % 256).astype(np.uint8)
        frames.append(VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p"))
    return frames


class SyntheticVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, loop_frames: int = 60):
        super().__init__()
        self.frames = synthetic_frames(loop_frames)
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


class LoopedVideo(MediaStreamTrack):
    """SyntheticVideo's pictures encoded once (VP8 at `bitrate`, a keyframe every `gop` frames) and sent
    as av.Packets, which aiortc packetizes without encoding. The loop starts on a keyframe, so the stream
    stays decodable; a PLI gets no extra keyframe (`keyframes` stays 0), the next one is at most a
    second away."""

    kind = "video"

    def __init__(self, loop_frames: int = 60, gop: int = FPS, bitrate: int = BITRATE):
        super().__init__()
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        codec.bit_rate, codec.gop_size = bitrate, gop
        codec.time_base = fractions.Fraction(1, FPS)
        codec.qmin, codec.qmax = 2, 56
        # aiortc's CBR settings; a keyframe capped at 5 frames' worth so the GOP's other frames keep bits.
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "minrate": str(bitrate),
                         "maxrate": str(bitrate), "bufsize": str(bitrate), "max-intra-rate": "500",
                         "undershoot-pct": "100", "overshoot-pct": "15"}
        self.payloads: list[bytes] = []
        rng = np.random.default_rng(11)
        for i, picture in enumerate(synthetic_frames(loop_frames)):
            # Fresh grain in every picture, or the scrolling noise is predicted exactly and inter frames
            # carry nothing: with it the encoder spends its bits across the GOP as a live camera does.
            yuv = picture.to_ndarray()
            rows = HEIGHT  # the luma rows of the yuv420p layout
            yuv[:rows] = np.clip(yuv[:rows].astype(np.int16) + rng.integers(-12, 13, size=(rows, WIDTH)), 0,
                                 255).astype(np.uint8)
            frame = VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            frame.pict_type = PictureType.I if i % gop == 0 else PictureType.NONE
            self.payloads.append(b"".join(bytes(p) for p in codec.encode(frame)))
        self.count = self.keyframes = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count / FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.payloads[self.count % len(self.payloads)])
        packet.pts = int(self.count * VIDEO_CLOCK / FPS)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return packet


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
