"""Reassemble encoded frames from RTP packets, without decoding.

Codecs: VP8 (RFC 7741), H.264 (RFC 6184, packetization-mode 1: single NAL, STAP-A, FU-A) and
Opus (RFC 7587, one packet = one frame). The depacketizer orders packets by (unwrapped) sequence
number, waits a bounded time for NACK repair of gaps, and after a loss drops video until the next
keyframe, asking for one through ``on_keyframe_needed``.

Everything here is pure Python on bytes: no I/O, no threads, no clock of its own (time comes from
the packets' arrival times, or from ``poll(now)``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Optional

from sfu.rtp import parse_vp8_descriptor, stap_a_units
from sfu.seqnum import Unwrapper

ANNEXB_START_CODE = b"\x00\x00\x00\x01"

CODECS = ("vp8", "h264", "opus")

# The codec names accepted from SDP MIME types.
MIME_TO_CODEC = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "opus"}


def codec_from_mime(mime: str) -> str:
    try:
        return MIME_TO_CODEC[mime.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unsupported codec {mime!r}: expected one of video/VP8, video/H264, audio/opus"
        ) from None


@dataclass
class Frame:
    """One encoded frame, ready to mux."""

    data: bytes
    timestamp: int  # unwrapped RTP timestamp
    keyframe: bool
    arrival_time: float  # arrival time of the frame's first packet
    width: Optional[int] = None  # from a VP8 keyframe header or an H.264 SPS
    height: Optional[int] = None


# ---------------------------------------------------------------------------------------------
# VP8 (RFC 7741)


def vp8_keyframe_size(frame: bytes) -> Optional[tuple[int, int]]:
    """Width and height from a VP8 keyframe header (RFC 6386 section 9.1), or None if ``frame``
    is not a keyframe."""
    if len(frame) < 10 or frame[0] & 0x01:
        return None
    if frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


def assemble_vp8(payloads: list[bytes]) -> Optional[tuple[bytes, bool, Optional[int], Optional[int]]]:
    """Join the payloads of one frame; returns (data, keyframe, width, height) or None when the
    frame is broken (does not begin a partition 0)."""
    if not payloads:
        return None
    chunks = []
    for i, payload in enumerate(payloads):
        try:
            desc = parse_vp8_descriptor(payload)
        except ValueError:
            return None
        if i == 0 and not (desc.start and desc.partition_id == 0):
            return None
        chunks.append(payload[desc.size :])
    data = b"".join(chunks)
    if not data:
        return None
    first_packet = parse_vp8_descriptor(payloads[0])
    keyframe = first_packet.start and first_packet.partition_id == 0 and (data[0] & 0x01) == 0
    size = vp8_keyframe_size(data) if keyframe else None
    return data, keyframe, size[0] if size else None, size[1] if size else None


# ---------------------------------------------------------------------------------------------
# H.264 (RFC 6184)

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_STAP_A = 24
NAL_FU_A = 28


def remove_emulation_prevention(data: bytes) -> bytes:
    """Strip the 0x03 bytes of 00 00 03 sequences (H.264 section 7.4.1)."""
    out = bytearray()
    zeros = 0
    for b in data:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS truncated")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("SPS: bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def parse_h264_sps_size(nal: bytes) -> tuple[int, int]:
    """Width and height (after cropping) from an SPS NAL unit, header byte included.
    Raises ValueError on anything it cannot parse."""
    if not nal or nal[0] & 0x1F != NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    r = _BitReader(remove_emulation_prevention(nal[1:]))
    profile_idc = r.bits(8)
    r.bits(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = r.bit()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bit()  # qpprime_y_zero_transform_bypass_flag
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    size = 16 if i < 6 else 64
                    last = nxt = 8
                    for _ in range(size):
                        if nxt != 0:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt if nxt != 0 else last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()  # mb_adaptive_frame_field_flag
    r.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if r.bit():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        if chroma_format_idc == 0 or separate_colour_plane:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_w = 1 if chroma_format_idc == 3 else 2
            sub_h = 2 if chroma_format_idc == 1 else 1
            crop_x, crop_y = sub_w, sub_h * (2 - frame_mbs_only)
        width -= (left + right) * crop_x
        height -= (top + bottom) * crop_y
    if width <= 0 or height <= 0:
        raise ValueError("SPS gives an empty picture")
    return width, height


def h264_nal_units(payloads: list[bytes]) -> Optional[list[bytes]]:
    """NAL units (header byte included) carried by one frame's RTP payloads, or None if a
    payload is malformed or a FU-A fragment is missing."""
    nals: list[bytes] = []
    fu: Optional[bytearray] = None
    for payload in payloads:
        if len(payload) < 1:
            return None
        nal_type = payload[0] & 0x1F
        if fu is not None and nal_type != NAL_FU_A:
            return None  # a FU-A that never ended
        if 1 <= nal_type <= 23:
            nals.append(payload)
        elif nal_type == NAL_STAP_A:
            units = stap_a_units(payload)
            if units is None:
                return None
            nals.extend(units)
        elif nal_type == NAL_FU_A:
            if len(payload) < 2:
                return None
            fu_header = payload[1]
            if fu_header & 0x80:  # start
                if fu is not None:
                    return None
                fu = bytearray([(payload[0] & 0xE0) | (fu_header & 0x1F)])
            elif fu is None:
                return None  # a middle or end fragment without its start
            fu += payload[2:]
            if fu_header & 0x40:  # end
                nals.append(bytes(fu))
                fu = None
        else:
            return None  # STAP-B, MTAP, FU-B: not used by WebRTC (packetization-mode 1)
    if fu is not None:
        return None
    return nals


def assemble_h264(payloads: list[bytes]) -> Optional[tuple[bytes, bool, Optional[int], Optional[int]]]:
    """Join one frame's payloads into an Annex-B access unit; returns (data, keyframe, width,
    height) or None when broken."""
    nals = h264_nal_units(payloads)
    if not nals:
        return None
    keyframe = False
    width = height = None
    for nal in nals:
        t = nal[0] & 0x1F
        if t in (NAL_IDR, NAL_SPS):
            keyframe = True
        if t == NAL_SPS and width is None:
            try:
                width, height = parse_h264_sps_size(nal)
            except ValueError:
                pass
    data = b"".join(ANNEXB_START_CODE + nal for nal in nals)
    return data, keyframe, width, height


# ---------------------------------------------------------------------------------------------
# Opus (RFC 6716 section 3.1)

_OPUS_FRAME_SAMPLES_48K = (
    (480, 960, 1920, 2880) * 3  # SILK NB, MB, WB (10, 20, 40, 60 ms)
    + (480, 960) * 2  # hybrid SWB, FB
    + (120, 240, 480, 960) * 4  # CELT NB, WB, SWB, FB (2.5, 5, 10, 20 ms)
)


def opus_packet_samples(packet: bytes) -> Optional[int]:
    """Duration of an Opus packet in 48 kHz samples, from its TOC byte; None if malformed."""
    if not packet:
        return None
    toc = packet[0]
    per_frame = _OPUS_FRAME_SAMPLES_48K[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            return None
        count = packet[1] & 0x3F
        if count == 0:
            return None
    total = per_frame * count
    return total if total <= 5760 else None


# ---------------------------------------------------------------------------------------------


class Depacketizer:
    """Turns RTP packets (in any order, with gaps) into complete frames, in order.

    ``push(packet, arrival_time)`` returns the frames completed by that packet. Gaps in the
    sequence are held open for NACK repair until the oldest packet waiting behind the gap is
    ``repair_window`` seconds old or more than ``max_pending`` packets wait; then the gap is
    declared lost. For video, a loss drops the broken frame and every frame after it until a
    keyframe, and calls ``on_keyframe_needed()`` (again at most every ``keyframe_retry``
    seconds while waiting). The first frame emitted is always a keyframe.

    A new SSRC, or ``max_late_run`` packets in a row that look older than what was already
    played out, means the sender restarted its numbering: the depacketizer restarts too, and
    shifts the new timestamps so that they continue the old ones (by the arrival-time gap), so
    a recording keeps one increasing timeline.
    """

    def __init__(
        self,
        codec: str,
        *,
        repair_window: float = 0.2,
        max_pending: int = 256,
        keyframe_retry: float = 1.0,
        on_keyframe_needed: Optional[Callable[[], None]] = None,
        clock_rate: Optional[int] = None,
        max_late_run: int = 64,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"unsupported codec {codec!r}: expected one of {', '.join(CODECS)}")
        if repair_window < 0:
            raise ValueError("repair_window must be >= 0")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.codec = codec
        self.is_video = codec != "opus"
        self.repair_window = repair_window
        self.max_pending = max_pending
        self.keyframe_retry = keyframe_retry
        self.on_keyframe_needed = on_keyframe_needed
        self.clock_rate = clock_rate or (48000 if codec == "opus" else 90000)
        self.max_late_run = max_late_run

        self.ssrc: Optional[int] = None
        self._ts_offset = 0
        self._realign = False
        self._late_run = 0
        self._last_ts: Optional[int] = None
        self._last_arrival = 0.0
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._next: Optional[int] = None
        # ext seq -> (payload, marker, ext timestamp, arrival)
        self._pending: dict[int, tuple[bytes, int, int, float]] = {}
        self._cur: list[bytes] = []
        self._cur_ts = 0
        self._cur_arrival = 0.0
        self._need_keyframe = self.is_video
        self._last_request: Optional[float] = None
        self._now = 0.0

        self.packets = 0
        self.packets_lost = 0
        self.packets_late = 0
        self.frames = 0
        self.frames_dropped = 0
        self.keyframe_requests = 0
        self.discontinuities = 0

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def push(self, packet, arrival_time: float) -> list[Frame]:
        """Add one ``aiortc.rtp.RtpPacket`` (or anything with sequence_number, timestamp, marker
        and payload)."""
        return self.push_fields(
            packet.sequence_number, packet.timestamp, packet.marker, packet.payload, arrival_time,
            getattr(packet, "ssrc", None),
        )

    def push_fields(
        self,
        sequence_number: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        arrival_time: float,
        ssrc: Optional[int] = None,
    ) -> list[Frame]:
        self.packets += 1
        self._now = max(self._now, arrival_time)
        out: list[Frame] = []
        if ssrc is not None:
            if self.ssrc is not None and ssrc != self.ssrc:
                self._restart(out)
            self.ssrc = ssrc
        ext = self._seq.unwrap(sequence_number & 0xFFFF)
        if self._next is None:
            self._next = ext
        if ext < self._next or ext in self._pending:
            self.packets_late += 1  # duplicate, or a repair that came after we gave up
            self._late_run += 1
            if self._late_run < self.max_late_run:
                return out
            self._restart(out)
            ext = self._next = self._seq.unwrap(sequence_number & 0xFFFF)
        self._late_run = 0
        ts = self._ts.unwrap(timestamp & 0xFFFFFFFF)
        if self._realign:
            self._realign = False
            if self._last_ts is not None:
                gap = max(1, round((arrival_time - self._last_arrival) * self.clock_rate))
                self._ts_offset = self._last_ts + gap - ts
        ts += self._ts_offset
        self._pending[ext] = (bytes(payload), 1 if marker else 0, ts, arrival_time)
        self._drain(out)
        self._expire(out)
        return out

    def poll(self, now: float) -> list[Frame]:
        """Let time pass without a packet (same clock as arrival times): expires waited-out gaps."""
        self._now = max(self._now, now)
        out: list[Frame] = []
        self._expire(out)
        return out

    def flush(self) -> list[Frame]:
        """End of stream: give up on every gap, emit what is complete, drop a partial frame."""
        out: list[Frame] = []
        while self._pending:
            self._skip_gap(out)
        if self._cur:
            # Contiguous packets without a final marker: keep them; a broken VP8/H.264 frame is
            # still rejected by its assembler.
            self._finish(out)
        return out

    # -- internals

    def _restart(self, out: list[Frame]) -> None:
        out.extend(self.flush())
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._next = None
        self._late_run = 0
        self._realign = True
        self.discontinuities += 1
        if self.is_video:
            self._need_keyframe = True
            self.request_keyframe()

    def _drain(self, out: list[Frame]) -> None:
        pending = self._pending
        while self._next in pending:
            payload, marker, ts, arrival = pending.pop(self._next)
            self._next += 1
            self._last_ts, self._last_arrival = ts, arrival
            if not payload:
                continue  # padding-only packet (bandwidth probing): a sequence number, no media
            if self._cur and ts != self._cur_ts:
                self._finish(out)  # contiguous packets, timestamp changed: previous frame done
            if not self._cur:
                self._cur_ts = ts
                self._cur_arrival = arrival
            self._cur.append(payload)
            if marker or not self.is_video:
                self._finish(out)

    def _expire(self, out: list[Frame]) -> None:
        while self._pending:
            oldest = min(item[3] for item in self._pending.values())
            if len(self._pending) > self.max_pending or self._now - oldest >= self.repair_window:
                self._skip_gap(out)
            else:
                break

    def _skip_gap(self, out: list[Frame]) -> None:
        first = min(self._pending)
        self.packets_lost += first - self._next
        self._next = first
        if self._cur:
            self._cur = []
            if self.is_video:
                self.frames_dropped += 1
        if self.is_video:
            self._need_keyframe = True
            self.request_keyframe()
        self._drain(out)

    def _finish(self, out: list[Frame]) -> None:
        payloads = self._cur
        self._cur = []
        if self.codec == "opus":
            if payloads[0]:
                self.frames += 1
                out.append(Frame(payloads[0], self._cur_ts, True, self._cur_arrival))
            return
        built = assemble_vp8(payloads) if self.codec == "vp8" else assemble_h264(payloads)
        if built is None:
            self.frames_dropped += 1
            self._need_keyframe = True
            self.request_keyframe()
            return
        data, keyframe, width, height = built
        if self._need_keyframe and not keyframe:
            self.frames_dropped += 1
            self.request_keyframe()
            return
        self._need_keyframe = False
        self.frames += 1
        out.append(Frame(data, self._cur_ts, keyframe, self._cur_arrival, width, height))

    def request_keyframe(self) -> None:
        """Call ``on_keyframe_needed`` unless it was called less than ``keyframe_retry`` ago."""
        if self._last_request is not None and self._now - self._last_request < self.keyframe_retry:
            return
        self._last_request = self._now
        self.keyframe_requests += 1
        if self.on_keyframe_needed is not None:
            self.on_keyframe_needed()
