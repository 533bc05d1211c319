"""Pure RTP helpers for forwarding: header building, extensions, keyframe detection, RTX.

Everything here works on bytes and ints and is tested byte for byte (tests/test_sfu_rtp.py).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Optional

from aiortc.codecs.vpx import VpxPayloadDescriptor

from sfu.twcc import URI_TRANSPORT_CC

RTP_VERSION_BITS = 0x80
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_HEADER = struct.Struct("!BBHII")


def unix_to_ntp(t: float) -> int:
    """Unix seconds to a 64-bit NTP timestamp."""
    seconds = int(t)
    fraction = int((t - seconds) * (1 << 32)) & 0xFFFFFFFF
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | fraction


def ntp_to_unix(ntp: int) -> float:
    """A 64-bit NTP timestamp (as in an RTCP sender report) to unix seconds: the one conversion (sfu/, recorder/)."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def abs_send_time(now: float | None = None) -> bytes:
    """The 24-bit abs-send-time extension value: 6.18 fixed-point seconds."""
    t = time.time() if now is None else now
    return (int(t * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")


@dataclass(frozen=True)
class ExtensionIds:
    """Negotiated one-byte header extension ids of one leg (0: not negotiated)."""

    mid: int = 0
    abs_send_time: int = 0
    audio_level: int = 0
    transport_cc: int = 0  # the transport-wide sequence number (sfu/twcc.py)

    @classmethod
    def from_uris(cls, pairs) -> "ExtensionIds":
        ids = {uri: ext_id for uri, ext_id in pairs}
        return cls(
            mid=ids.get(URI_MID, 0),
            abs_send_time=ids.get(URI_ABS_SEND_TIME, 0),
            audio_level=ids.get(URI_AUDIO_LEVEL, 0),
            transport_cc=ids.get(URI_TRANSPORT_CC, 0),
        )


def build_extensions(ids: ExtensionIds, mid: bytes, send_time: bytes, audio_level: int | None,
                     transport_seq: int | None = None) -> bytes:
    """An RFC 8285 one-byte-header extension block (profile 0xBEDE), padded to 32 bits. The transport-wide
    sequence number, when given, comes first (bytes 5 and 6 of the block: `TRANSPORT_SEQ_AT`)."""
    body = b""
    if ids.transport_cc and transport_seq is not None:
        body += bytes(((ids.transport_cc << 4) | 1,)) + (transport_seq & 0xFFFF).to_bytes(2, "big")
    if ids.mid and mid:
        body += bytes(((ids.mid << 4) | (len(mid) - 1),)) + mid
    if ids.abs_send_time:
        body += bytes(((ids.abs_send_time << 4) | 2,)) + send_time
    if ids.audio_level and audio_level is not None:
        body += bytes(((ids.audio_level << 4), audio_level & 0xFF))
    if not body:
        return b""
    body += b"\x00" * (-len(body) % 4)
    return b"\xbe\xde" + (len(body) // 4).to_bytes(2, "big") + body


TRANSPORT_SEQ_AT = 5  # where build_extensions puts the transport-wide sequence number's two bytes


def build_header(has_ext: bool, marker: int, payload_type: int, seq: int, ts: int, ssrc: int) -> bytes:
    return _HEADER.pack(
        RTP_VERSION_BITS | (0x10 if has_ext else 0),
        (marker << 7) | payload_type,
        seq,
        ts,
        ssrc,
    )


def parse_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(marker, payload_type, sequence, timestamp, ssrc) of an RTP packet."""
    if len(data) < 12 or data[0] >> 6 != 2:
        raise ValueError("not an RTP version 2 packet")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc


@dataclass
class Vp8Descriptor:
    start: bool  # S bit: first packet of a VP8 partition
    partition_id: int
    picture_id: Optional[int]
    size: int  # descriptor length in bytes


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """The VP8 payload descriptor at the start of an RTP payload (RFC 7741 section 4.2), read by aiortc's
    parser (the one VP8 descriptor parser: forwarding and the recorder). ValueError when truncated."""
    desc, rest = VpxPayloadDescriptor.parse(payload)
    return Vp8Descriptor(start=bool(desc.partition_start), partition_id=desc.partition_id & 0x07,
                         picture_id=desc.picture_id, size=len(payload) - len(rest))


def vp8_is_keyframe(payload: bytes) -> bool:
    """True on the first packet of a VP8 keyframe (RFC 7741 descriptor, then the VP8 frame tag)."""
    # Per packet on the publisher's path: most packets do not start a frame (S bit set, partition
    # index 0) and are answered from the first byte; only frame starts get parsed.
    if len(payload) < 2 or not (payload[0] & 0x10) or (payload[0] & 0x07):
        return False
    head = payload[:7]  # the longest descriptor (6 bytes) and the frame tag: the parser copies no payload
    try:
        size = parse_vp8_descriptor(head).size
    except ValueError:
        return False
    # VP8 frame tag: bit 0 of the first byte is 0 on a keyframe.
    return len(head) > size and head[size] & 0x01 == 0


def vp8_frame_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the first packet of a VP8 keyframe (RFC 6386 9.1: frame tag, start code
    9d 01 2a, then 14-bit width and height, little-endian), else None."""
    try:
        size = parse_vp8_descriptor(payload[:7]).size
    except ValueError:
        return None
    head = payload[size:size + 10]
    if len(head) < 10 or head[0] & 0x01 or head[3:6] != b"\x9d\x01\x2a":
        return None
    return int.from_bytes(head[6:8], "little") & 0x3FFF, int.from_bytes(head[8:10], "little") & 0x3FFF


def vp8_picture_ids(payload: bytes) -> tuple[int, int, int, int] | None:
    """(picture id, its bit width 7 or 15, its byte offset, TL0PICIDX offset or 0) of a VP8 payload
    descriptor (RFC 7741 4.2), or None when it carries no picture id."""
    if len(payload) < 3 or not payload[0] & 0x80:
        return None
    x = payload[1]
    pos = 2
    if not x & 0x80:
        return None
    if payload[pos] & 0x80:
        if len(payload) < pos + 2:
            return None
        pid, bits, at = ((payload[pos] & 0x7F) << 8) | payload[pos + 1], 15, pos
        pos += 2
    else:
        pid, bits, at = payload[pos] & 0x7F, 7, pos
        pos += 1
    tl0 = pos if x & 0x40 and len(payload) > pos else 0
    return pid, bits, at, tl0


def vp8_rewrite_picture_ids(payload: bytes, pid: int, bits: int, at: int, tl0_at: int, tl0: int) -> bytes:
    """The payload with its picture id (at `at`, `bits` wide) set to `pid` and, when `tl0_at`, its
    TL0PICIDX to `tl0`; the descriptor keeps its length."""
    out = bytearray(payload)
    if bits == 15:
        out[at] = 0x80 | (pid >> 8) & 0x7F
        out[at + 1] = pid & 0xFF
    else:
        out[at] = pid & 0x7F
    if tl0_at:
        out[tl0_at] = tl0 & 0xFF
    return bytes(out)


def stap_a_units(payload: bytes) -> list[bytes] | None:
    """The NAL units of an RFC 6184 STAP-A payload (after its header byte: 16-bit size, NAL unit, repeated),
    or None when a size is zero or runs past the end. The one STAP-A reader: forwarding and the recorder."""
    units = []
    pos, n = 1, len(payload)
    while pos < n:
        if pos + 2 > n:
            return None
        size = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if size == 0 or pos + size > n:
            return None
        units.append(payload[pos:pos + size])
        pos += size
    return units


def h264_is_keyframe(payload: bytes) -> bool:
    """True when the packet carries an IDR slice or an SPS (RFC 6184 single NAL, STAP-A or FU-A start)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A (SPS and PPS ahead of a keyframe, typically): rare, so not inlined
        return any(unit[0] & 0x1F in (5, 7) for unit in stap_a_units(payload) or ())
    if nal_type == 28 and len(payload) > 1:  # FU-A: start bit and the original NAL type
        fu = payload[1]
        return bool(fu & 0x80) and (fu & 0x1F) in (5, 7)
    return False


def is_keyframe(mime_type: str, payload: bytes) -> bool:
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_is_keyframe(payload)
    if mime == "video/h264":
        return h264_is_keyframe(payload)
    return True  # audio: every packet is a starting point


def rtx_payload(original_seq: int, payload: bytes) -> bytes:
    """RFC 4588: the RTX payload is the original sequence number, then the original payload."""
    return original_seq.to_bytes(2, "big") + payload


MAX_PADDING = 255  # the padding count is one byte (RFC 3550 5.1)


def padding_packet(payload_type: int, seq: int, ts: int, ssrc: int, ext: bytes, size: int = MAX_PADDING) -> bytes:
    """A padding-only RTP packet (RFC 3550 5.1: P set, no payload; `size` bytes of padding, zeros and then
    the count), as libwebrtc sends to probe on the RTX stream: the receiver's bandwidth estimator counts it
    (with abs-send-time in `ext`), and its RTX stream drops it before the decoder (no payload)."""
    if not 1 <= size <= MAX_PADDING:
        raise ValueError(f"padding of {size} bytes: one packet carries 1 to {MAX_PADDING}")
    header = build_header(bool(ext), 0, payload_type, seq, ts, ssrc)
    return bytes((header[0] | 0x20,)) + header[1:] + ext + b"\x00" * (size - 1) + bytes((size,))
