"""Pure RTP helpers for forwarding: header building, extensions, keyframe detection, RTX.

Everything here works on bytes and ints and is tested byte for byte (tests/test_sfu_rtp.py).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Optional

from aiortc.codecs.vpx import VpxPayloadDescriptor

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

    @classmethod
    def from_uris(cls, pairs) -> "ExtensionIds":
        ids = {uri: ext_id for uri, ext_id in pairs}
        return cls(
            mid=ids.get(URI_MID, 0),
            abs_send_time=ids.get(URI_ABS_SEND_TIME, 0),
            audio_level=ids.get(URI_AUDIO_LEVEL, 0),
        )


def build_extensions(ids: ExtensionIds, mid: bytes, send_time: bytes, audio_level: int | None) -> bytes:
    """An RFC 8285 one-byte-header extension block (profile 0xBEDE), padded to 32 bits."""
    body = b""
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
