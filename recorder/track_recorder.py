"""Record one forwarded RTP track to a file with PyAV, without re-encoding.

The SFU calls ``feed()`` for every source packet; ``feed()`` only enqueues. A worker thread per
track depacketizes, muxes (VP8/Opus into WebM, H.264 into Matroska) and flushes the file about
once a second, so a killed process leaves a file that ``recovery.finalize_unfinished`` can
repair up to the last second or so. Errors (disk full, permission denied, a bad stream) end the
recording with ``status == "failed"`` and ``error`` set; nothing raises into the caller.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import struct
import threading
import time
from fractions import Fraction
from typing import Callable, Optional

import av

from sfu.seqnum import unwrap_near

from .depacketizer import Depacketizer, Frame, codec_from_mime, opus_packet_samples

log = logging.getLogger(__name__)

# Marker file next to a recording in progress; removed after a clean close.
MARKER_SUFFIX = ".recording"

CONTAINER_FORMAT = {"vp8": "webm", "opus": "webm", "h264": "matroska"}
FILE_EXTENSION = {"vp8": ".webm", "opus": ".webm", "h264": ".mkv"}

# Statuses
WAITING = "waiting"  # no keyframe/frame yet, no file yet
RECORDING = "recording"
FINISHED = "finished"
EMPTY = "empty"  # closed before anything was written
FAILED = "failed"


def short_error(exc: BaseException) -> str:
    """What went wrong, for people: the OS error text alone ("No space left on device") when there is one."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _SyncHandle:
    """A descriptor on the file FFmpeg writes natively; fsync through it makes what was written durable."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY)

    def flush(self) -> None:
        pass  # FFmpeg flushes every packet (flush_packets=1); fsync does the rest

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# How long the worker sleeps between batches of packets.
BATCH_INTERVAL = 0.2

_CLOSE = object()


def opus_head(channels: int, sample_rate: int = 48000, pre_skip: int = 0) -> bytes:
    """OpusHead identification header (RFC 7845 section 5.1), channel mapping family 0."""
    if channels not in (1, 2):
        raise ValueError("Opus channel mapping family 0 needs 1 or 2 channels")
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, sample_rate, 0, 0)


def _opus_template_stream():
    """An input stream of codec opus to clone an output stream from. ``add_mux_stream`` cannot
    carry extradata, while a stream cloned from a template keeps a codec context whose extradata
    we can set, and that PyAV never opens as an encoder."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_mux_stream("opus", rate=48000)
        packet = av.Packet(b"\xfc\xff\xfe")  # one 20 ms CELT silence frame
        packet.pts = packet.dts = 0
        packet.stream = stream
        out.mux(packet)
    buf.seek(0)
    container = av.open(buf, "r")
    return container, container.streams.audio[0]


def _has_parameter_sets(annexb: bytes) -> bool:
    types = {nal[0] & 0x1F for nal in annexb.split(b"\x00\x00\x01")[1:] if nal}
    return {7, 8} <= types


class TrackRecorder:
    """Record one track. Construct it on the event loop thread (callbacks are then delivered on
    that loop) or anywhere else (callbacks then run on the worker thread).

    ``feed(packet, arrival_time)``: O(1), never blocks, never raises. ``arrival_time`` is wall
    clock (``time.time()``), used for the start time when no RTCP sender report arrives.
    ``sender_report(ntp_time, rtp_timestamp)``: the publisher's SR, ``ntp_time`` as unix seconds.
    ``await close()`` or ``close_sync()`` (blocking: run it in an executor from async code).
    """

    def __init__(
        self,
        path: str,
        kind: str,
        codec_mime: str,
        clock_rate: int,
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        channels: int = 2,
        on_keyframe_needed: Optional[Callable[[], None]] = None,
        on_update: Optional[Callable[["TrackRecorder"], None]] = None,
        repair_window: float = 0.2,
        flush_interval: float = 1.0,
        max_queue: int = 4000,
    ) -> None:
        codec = codec_from_mime(codec_mime)
        expected_kind = "audio" if codec == "opus" else "video"
        if kind != expected_kind:
            raise ValueError(f"kind {kind!r} does not match codec {codec_mime!r} ({expected_kind})")
        if not isinstance(clock_rate, int) or clock_rate <= 0:
            raise ValueError(f"clock_rate must be a positive integer, got {clock_rate!r}")
        if codec == "opus" and channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2 for Opus, got {channels!r}")
        for name, value in (("width", width), ("height", height)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        self.path = os.fspath(path)
        self.kind = kind
        self.codec_mime = codec_mime
        self.codec = codec
        self.clock_rate = clock_rate
        self.channels = channels
        self.width = width
        self.height = height
        self.flush_interval = flush_interval
        self.max_queue = max_queue

        self.status = WAITING
        self.error: Optional[str] = None
        self.error_reason: Optional[str] = None  # short form of error: "No space left on device"
        self.frames_written = 0
        self.first_timestamp: Optional[int] = None  # unwrapped RTP timestamp of the first frame
        self.last_timestamp: Optional[int] = None
        self.start_time: Optional[float] = None  # wall clock of the first frame
        self.start_time_source: Optional[str] = None  # "rtcp_sr" or "arrival"
        self.queue_overflows = 0

        try:
            self._loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._on_keyframe_needed = on_keyframe_needed
        self._on_update = on_update
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._accepting = True
        self._depacketizer = Depacketizer(
            codec,
            repair_window=repair_window,
            on_keyframe_needed=self._keyframe_needed,
            clock_rate=clock_rate,
        )
        self._container = None
        self._file = None
        self._stream = None
        self._last_duration = 0
        self._sender_report: Optional[tuple[float, int]] = None
        self._last_flush = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"recorder:{os.path.basename(self.path)}", daemon=True
        )
        self._thread.start()

    # -- public API (event loop side)

    def feed(self, packet, arrival_time: float) -> None:
        if not self._accepting:
            return
        try:
            if self._queue.qsize() >= self.max_queue:
                self.queue_overflows += 1  # the gap becomes a loss: the recorder asks a keyframe
                return
            # Copy the fields: the SFU may rewrite the packet object after this call.
            self._queue.put(
                (packet.sequence_number, packet.timestamp, packet.marker, packet.payload,
                 arrival_time, packet.ssrc)
            )
        except Exception:  # never into the forwarding loop
            log.exception("recorder feed failed")

    def sender_report(self, ntp_time: float, rtp_timestamp: int, ssrc: Optional[int] = None) -> None:
        """The publisher's RTCP SR: NTP time (unix seconds) and RTP timestamp of one instant.
        Used once, for the wall-clock start time. ``ssrc``, if given, must be the media's."""
        if not self._accepting:
            return
        try:
            self._queue.put(("sr", float(ntp_time), int(rtp_timestamp) & 0xFFFFFFFF, ssrc))
        except Exception:
            log.exception("recorder sender_report failed")

    async def close(self, timeout: float = 60.0) -> None:
        """Stop, flush and finalize the file (runs the blocking part in a thread)."""
        await asyncio.to_thread(self.close_sync, timeout)

    def close_sync(self, timeout: float = 60.0) -> None:
        """Blocking close: waits for the worker to write what is queued and finalize the file."""
        if self._accepting:
            self._accepting = False
            self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive() and self.status not in (FAILED, FINISHED, EMPTY):
            self.status = FAILED
            self.error = self.error_reason = f"close timed out after {timeout} s (storage stalled?)"

    @property
    def closed(self) -> bool:
        return not self._thread.is_alive()

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        if self.first_timestamp is None or self.last_timestamp is None:
            return 0.0
        return (self.last_timestamp - self.first_timestamp + self._last_duration) / self.clock_rate

    @property
    def stats(self) -> dict:
        d = self._depacketizer
        return {
            "packets": d.packets,
            "packets_lost": d.packets_lost,
            "packets_late": d.packets_late,
            "frames_dropped": d.frames_dropped,
            "keyframe_requests": d.keyframe_requests,
            "queue_overflows": self.queue_overflows,
        }

    # -- callbacks

    def _call(self, fn, *args) -> None:
        def safe():
            try:
                fn(*args)
            except Exception:
                log.exception("recorder callback failed")

        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(safe)
                return
            except RuntimeError:
                pass
        safe()

    def _keyframe_needed(self) -> None:
        if self._on_keyframe_needed is not None:
            self._call(self._on_keyframe_needed)

    def _updated(self) -> None:
        # Called on the worker thread so that manifest writes stay off the event loop.
        if self._on_update is not None:
            try:
                self._on_update(self)
            except Exception:
                log.exception("recorder update callback failed")

    # -- worker thread

    def _run(self) -> None:
        try:
            self._loop_items()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._accepting = False

    def _loop_items(self) -> None:
        q = self._queue
        clock_offset = None  # arrival clock minus monotonic, to poll gaps when packets stop
        while True:
            try:
                if q.empty():
                    # Work in batches: one wake-up per BATCH_INTERVAL instead of one per packet keeps
                    # this thread from taking the GIL from the forwarding loop ~200 times a second.
                    time.sleep(BATCH_INTERVAL)
                item = q.get(timeout=0.1)
            except queue.Empty:
                if clock_offset is not None:
                    self._write(self._depacketizer.poll(time.monotonic() + clock_offset))
                self._maybe_flush()
                continue
            if item is _CLOSE:
                self._write(self._depacketizer.flush())
                self._finalize()
                return
            if item[0] == "sr":
                self._on_sender_report(item[1], item[2], item[3])
                continue
            seq, ts, marker, payload, arrival, ssrc = item
            clock_offset = arrival - time.monotonic()
            self._write(self._depacketizer.push_fields(seq, ts, marker, payload, arrival, ssrc))
            self._maybe_flush()

    def _write(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self.status == FAILED:
                return
            if self._container is None:
                if self.codec == "h264" and not _has_parameter_sets(frame.data):
                    # The Matroska header needs SPS and PPS (avcC) from the first packet.
                    self._depacketizer.request_keyframe()
                    continue
                self._open(frame)
            self._mux(frame)

    def _open(self, frame: Frame) -> None:
        if self.kind == "video":
            self.width = frame.width or self.width
            self.height = frame.height or self.height
            if not self.width or not self.height:
                raise ValueError(
                    "video size unknown: not in the keyframe, and no width/height given"
                )
        with open(self.path + MARKER_SUFFIX, "w") as marker:
            marker.write(f"{self.codec_mime} {self.clock_rate}\n")
        open(self.path, "wb").close()  # exists (and is ours to write) before FFmpeg opens it
        self._file = _SyncHandle(self.path)
        # FFmpeg writes the file itself: a Python file object would call back into Python (and take
        # the GIL from the forwarding loop) for every packet.
        container = av.open(
            self.path,
            "w",
            format=CONTAINER_FORMAT[self.codec],
            # Short clusters, flushed on every packet: a killed process loses about 1 s.
            container_options={"cluster_time_limit": "1000", "flush_packets": "1"},
        )
        self._container = container
        if self.codec == "opus":
            template_container, template = _opus_template_stream()
            try:
                stream = container.add_stream_from_template(template)
            finally:
                template_container.close()
            stream.codec_context.extradata = opus_head(self.channels)
            stream.codec_context.layout = "mono" if self.channels == 1 else "stereo"
        else:
            stream = container.add_mux_stream(
                self.codec, width=self.width, height=self.height
            )
        stream.time_base = Fraction(1, self.clock_rate)
        self._stream = stream
        # No start_encoding() here: PyAV builds the H.264 avcC from the first packet only when
        # the header is written by the first mux() call.
        self.first_timestamp = frame.timestamp
        self.status = RECORDING
        self._compute_start_time(frame.arrival_time)
        self._last_flush = time.monotonic()
        self._updated()

    def _mux(self, frame: Frame) -> None:
        pts = frame.timestamp - self.first_timestamp
        if self.last_timestamp is not None and frame.timestamp <= self.last_timestamp:
            return  # never write a non-increasing timestamp (broken sender)
        if self.codec == "opus":
            samples = opus_packet_samples(frame.data) or 960
            duration = samples * self.clock_rate // 48000
        elif self.last_timestamp is not None:
            duration = frame.timestamp - self.last_timestamp
        else:
            duration = self.clock_rate // 30
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts
        packet.duration = duration
        packet.time_base = Fraction(1, self.clock_rate)
        packet.is_keyframe = frame.keyframe
        packet.stream = self._stream
        self._container.mux(packet)
        self.frames_written += 1
        self.last_timestamp = frame.timestamp
        self._last_duration = duration

    def _maybe_flush(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if now - self._last_flush >= self.flush_interval:
            self._last_flush = now
            self._file.flush()
            os.fsync(self._file.fileno())

    def _on_sender_report(self, ntp_time: float, rtp_timestamp: int, ssrc: Optional[int]) -> None:
        d = self._depacketizer
        if (ssrc is not None and d.ssrc is not None and ssrc != d.ssrc) or d.discontinuities:
            return  # RTP timestamps no longer those of the first frame: the SR cannot map them
        self._sender_report = (ntp_time, rtp_timestamp)
        if self.first_timestamp is not None and self.start_time_source != "rtcp_sr":
            self._compute_start_time(None)
            self._updated()

    def _compute_start_time(self, arrival_time: Optional[float]) -> None:
        if self._sender_report is not None:
            ntp, rtp = self._sender_report
            rtp_ext = unwrap_near(rtp, self.first_timestamp)
            self.start_time = ntp + (self.first_timestamp - rtp_ext) / self.clock_rate
            self.start_time_source = "rtcp_sr"
        elif arrival_time is not None:
            self.start_time = arrival_time
            self.start_time_source = "arrival"

    def _finalize(self) -> None:
        if self._container is None:
            self.status = EMPTY
            self._updated()
            return
        self._container.close()  # writes cues and duration
        self._container = None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        try:
            os.unlink(self.path + MARKER_SUFFIX)
        except FileNotFoundError:
            pass
        self.status = FINISHED
        self._updated()

    def _fail(self, exc: BaseException) -> None:
        self._accepting = False
        self.status = FAILED
        self.error = f"{type(exc).__name__}: {exc}"
        self.error_reason = short_error(exc)
        log.error("recording %s failed: %s", self.path, self.error)
        # Best effort: leave a file that recovery can repair; keep the marker.
        for closer in (getattr(self._container, "close", None), getattr(self._file, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:
                    pass
        self._container = None
        self._file = None
        # Drop whatever is still queued.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._updated()
