"""Offline composite export: one MP4 from a recording's per-track files.

Never runs on the live path: it decodes every track (PyAV), composes the picture with numpy
(``grid``: one tile per video track; ``speaker``: the loudest participant large, the others as
thumbnails), mixes the audio with numpy, and encodes H.264 (libx264, or MPEG-4 Part 2 when the
linked FFmpeg lacks libx264) with AAC audio. Tracks are lined up by the manifest's wall-clock
``start_time``. Everything streams: memory does not grow with the recording's length.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import Callable, Optional

import av
import numpy as np

from .manifest import read_manifest

log = logging.getLogger(__name__)

LAYOUTS = ("grid", "speaker")
USABLE_STATUSES = ("recording", "finished", "recovered", "failed")
SILENCE_RMS = 0.005  # below this nobody is speaking; the speaker layout keeps its choice


def video_encoder_name() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _fit(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    scale = min(box_w / src_w, box_h / src_h)
    w = max(2, int(src_w * scale) // 2 * 2)
    h = max(2, int(src_h * scale) // 2 * 2)
    return min(w, box_w), min(h, box_h)


class _VideoSource:
    """Decoded frames of one track on the composite's timeline, with the frame current at t."""

    def __init__(self, path: str, offset: float, duration: float, participant: str) -> None:
        self.participant = participant
        self.offset = offset
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._frames = self.container.decode(self.stream)
        self._cur = None
        self._next = None
        self._next_t = math.inf
        self._scaled: dict = {}
        self._advance()
        self.end = offset + duration if duration > 0 else math.inf

    def _advance(self) -> None:
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                self._next, self._next_t = None, math.inf
                return
            except av.error.FFmpegError as exc:
                log.warning("video decode stopped: %s", exc)
                self._next, self._next_t = None, math.inf
                return
            if frame.pts is None:
                continue
            self._next = frame
            self._next_t = self.offset + float(frame.pts * frame.time_base)
            return

    def image(self, t: float, box_w: int, box_h: int) -> Optional[np.ndarray]:
        while self._next is not None and self._next_t <= t + 1e-6:
            self._cur = self._next
            self._scaled = {}
            self._advance()
        if self._cur is None or t < self.offset or t >= self.end:
            return None
        key = (box_w, box_h)
        if key not in self._scaled:
            w, h = _fit(self._cur.width, self._cur.height, box_w, box_h)
            self._scaled[key] = self._cur.reformat(width=w, height=h, format="rgb24").to_ndarray()
        return self._scaled[key]

    def close(self) -> None:
        self.container.close()


class _AudioSource:
    """Decoded audio of one track as float32 stereo at ``rate``, on the composite's timeline."""

    def __init__(self, path: str, offset: float, participant: str, rate: int) -> None:
        self.participant = participant
        self.rate = rate
        self.container = av.open(path)
        self.stream = self.container.streams.audio[0]
        self._frames = self.container.decode(self.stream)
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        self._offset_samples = int(round(offset * rate))
        self._buf = np.zeros((2, 0), dtype=np.float32)
        self._buf_start = 0  # timeline sample index of _buf[:, 0]
        self._eof = False
        self.energy = 0.0  # smoothed RMS, for the speaker layout

    def _decode_more(self) -> None:
        try:
            frame = next(self._frames)
        except (StopIteration, av.error.FFmpegError):
            self._eof = True
            return
        if frame.pts is None:
            return
        pos = self._offset_samples + int(round(float(frame.pts * frame.time_base) * self.rate))
        chunks = [f.to_ndarray() for f in self._resampler.resample(frame)]
        if not chunks:
            return
        data = np.concatenate(chunks, axis=1).astype(np.float32)
        end = self._buf_start + self._buf.shape[1]
        if pos > end:  # a gap (lost packets, DTX): silence
            self._buf = np.concatenate([self._buf, np.zeros((2, pos - end), np.float32)], axis=1)
        elif pos < end:  # overlap: keep what we have
            data = data[:, end - pos :]
        self._buf = np.concatenate([self._buf, data], axis=1)

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples [start, start+count) of the timeline; silence where the track has none."""
        while not self._eof and self._buf_start + self._buf.shape[1] < start + count:
            self._decode_more()
        out = np.zeros((2, count), dtype=np.float32)
        lo = max(start, self._buf_start)
        hi = min(start + count, self._buf_start + self._buf.shape[1])
        if hi > lo:
            out[:, lo - start : hi - start] = self._buf[:, lo - self._buf_start : hi - self._buf_start]
        drop = min(max(0, start + count - self._buf_start), self._buf.shape[1])
        self._buf = self._buf[:, drop:]
        self._buf_start += drop
        return out

    def close(self) -> None:
        self.container.close()


def _grid(canvas: np.ndarray, images: list[Optional[np.ndarray]]) -> None:
    n = len(images)
    if n == 0:
        return
    H, W = canvas.shape[:2]
    cols = math.ceil(math.sqrt(n))
    tw, th = _tile_size(n, W, H)
    for i, img in enumerate(images):
        if img is None:
            continue
        r, c = divmod(i, cols)
        _blit(canvas, img, c * tw, r * th, tw, th)


def _blit(canvas: np.ndarray, img: np.ndarray, x: int, y: int, box_w: int, box_h: int) -> None:
    h, w = img.shape[:2]
    ox = x + (box_w - w) // 2
    oy = y + (box_h - h) // 2
    canvas[oy : oy + h, ox : ox + w] = img


def export_composite(
    recording_dir: str,
    out_path: str,
    layout: str = "grid",
    progress: Optional[Callable[[float], None]] = None,
    *,
    size: tuple[int, int] = (1280, 720),
    fps: int = 25,
    audio_rate: int = 48000,
    speaker_window: float = 1.0,
) -> dict:
    """Compose ``recording_dir`` (a directory with manifest.json) into ``out_path`` (.mp4).
    ``progress(fraction)`` is called as work advances (0..1). Returns a summary dict."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"size must be even and at least 16x16, got {size!r}")
    if not isinstance(fps, int) or not 1 <= fps <= 120:
        raise ValueError(f"fps must be an integer in 1..120, got {fps!r}")
    manifest = read_manifest(recording_dir)

    tracks = [
        t
        for t in manifest["tracks"]
        if t["status"] in USABLE_STATUSES
        and t["start_time"] is not None
        and t.get("frames", 0) > 0
        and os.path.exists(os.path.join(recording_dir, t["file"]))
    ]
    if not tracks:
        raise ValueError(f"{recording_dir}: no recorded track to export")
    t0 = min(t["start_time"] for t in tracks)
    videos: list[_VideoSource] = []
    audios: list[_AudioSource] = []
    duration = 0.0
    try:
        for t in tracks:
            path = os.path.join(recording_dir, t["file"])
            offset = t["start_time"] - t0
            try:
                if t["kind"] == "video":
                    src = _VideoSource(path, offset, t.get("duration", 0.0), t["participant"])
                    videos.append(src)
                else:
                    src = _AudioSource(path, offset, t["participant"], audio_rate)
                    audios.append(src)
            except (av.error.FFmpegError, IndexError) as exc:
                log.warning("skipping unreadable track %s: %s", t["file"], exc)
                continue
            duration = max(duration, offset + t.get("duration", 0.0))
        if duration <= 0:
            raise ValueError(f"{recording_dir}: recorded tracks have no duration")
        return _encode(
            out_path, videos, audios, layout, progress, width, height, fps, audio_rate,
            speaker_window, duration,
        )
    finally:
        for src in (*videos, *audios):
            src.close()


def _encode(out_path, videos, audios, layout, progress, width, height, fps, rate,
            speaker_window, duration) -> dict:
    codec = video_encoder_name()
    total_frames = max(1, math.ceil(duration * fps))
    tmp = out_path + ".part"
    with av.open(tmp, "w", format="mp4") as out:
        vstream = out.add_stream(codec, rate=fps)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        if codec == "libx264":
            vstream.options = {"preset": "veryfast", "crf": "23"}
        else:
            vstream.bit_rate = 2_000_000
        astream = out.add_stream("aac", rate=rate, layout="stereo")
        astream.bit_rate = 128_000
        aac_frame = astream.codec_context.frame_size or 1024

        pending = np.zeros((2, 0), dtype=np.float32)
        audio_pts = 0
        speaker: Optional[str] = None
        smoothing = min(1.0, 1.0 / max(1e-3, speaker_window * fps))
        video_by_participant: dict[str, _VideoSource] = {}
        for v in videos:
            video_by_participant.setdefault(v.participant, v)
        report_every = max(1, total_frames // 100)

        for k in range(total_frames):
            t = k / fps
            s0, s1 = k * rate // fps, (k + 1) * rate // fps
            mix = np.zeros((2, s1 - s0), dtype=np.float32)
            for a in audios:
                chunk = a.read(s0, s1 - s0)
                mix += chunk
                rms = float(np.sqrt(np.mean(chunk * chunk))) if chunk.size else 0.0
                a.energy += smoothing * (rms - a.energy)
            np.clip(mix, -1.0, 1.0, out=mix)
            pending = np.concatenate([pending, mix], axis=1)
            while pending.shape[1] >= aac_frame:
                audio_pts = _encode_audio(out, astream, pending[:, :aac_frame], audio_pts, rate)
                pending = pending[:, aac_frame:]

            canvas = np.zeros((height, width, 3), dtype=np.uint8)
            if layout == "speaker" and videos:
                loudest = max(audios, key=lambda a: a.energy, default=None)
                if loudest is not None and loudest.energy > SILENCE_RMS and \
                        loudest.participant in video_by_participant:
                    speaker = loudest.participant
                main = video_by_participant.get(speaker) or videos[0]
                others = [v for v in videos if v is not main]
                main_h = height if not others else height * 3 // 4
                img = main.image(t, width, main_h)
                if img is not None:
                    _blit(canvas, img, 0, 0, width, main_h)
                if others:
                    tw = width // len(others)
                    for i, v in enumerate(others):
                        img = v.image(t, tw, height - main_h)
                        if img is not None:
                            _blit(canvas, img, i * tw, main_h, tw, height - main_h)
            else:
                tw, th = _tile_size(len(videos), width, height)
                _grid(canvas, [v.image(t, tw, th) for v in videos])
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in vstream.encode(frame):
                out.mux(packet)
            if progress is not None and (k % report_every == 0):
                progress(k / total_frames)

        if pending.shape[1]:
            pad = np.zeros((2, aac_frame - pending.shape[1]), dtype=np.float32)
            audio_pts = _encode_audio(out, astream, np.concatenate([pending, pad], axis=1), audio_pts, rate)
        for packet in vstream.encode(None):
            out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    os.replace(tmp, out_path)
    if progress is not None:
        progress(1.0)
    return {
        "path": out_path,
        "duration": total_frames / fps,
        "video_frames": total_frames,
        "video_codec": codec,
        "audio_samples": audio_pts,
        "layout": layout,
        "video_tracks": len(videos),
        "audio_tracks": len(audios),
    }


def _tile_size(n: int, width: int, height: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return width // cols, height // rows


def _encode_audio(out, stream, samples: np.ndarray, pts: int, rate: int) -> int:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    for packet in stream.encode(frame):
        out.mux(packet)
    return pts + samples.shape[1]


def main(argv=None) -> int:
    """``python -m recorder.export RECORDING_DIR OUT.mp4 [--layout grid|speaker]``"""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description="Compose a recording into one MP4.")
    parser.add_argument("recording_dir")
    parser.add_argument("out_path")
    parser.add_argument("--layout", choices=LAYOUTS, default="grid")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT, even numbers")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 1280x720, got {args.size!r}")

    def progress(fraction: float) -> None:
        print(f"\r{fraction * 100:5.1f}%", end="", file=sys.stderr, flush=True)

    summary = export_composite(args.recording_dir, args.out_path, args.layout, progress,
                               size=(width, height), fps=args.fps)
    print(file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
