"""Byte-for-byte tests of the pure forwarding pieces: rtp helpers, the forwarder and the cache."""

from __future__ import annotations

import pytest

from aiortc.rtp import RtpPacket

from sfu.buffer import CachedPacket, PacketCache
from sfu.forwarder import Forwarder
from sfu.seqnum import seq_diff, ts_diff
from sfu.rtp import (
    ExtensionIds,
    abs_send_time,
    build_extensions,
    build_header,
    h264_is_keyframe,
    ntp_to_unix,
    parse_header,
    rtx_payload,
    unix_to_ntp,
    vp8_is_keyframe,
)

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def test_build_header_bytes():
    assert build_header(False, 1, 96, 0x1234, 0xDEADBEEF, 0x01020304) == bytes.fromhex(
        "80e01234deadbeef01020304")
    assert build_header(True, 0, 111, 1, 2, 3)[:2] == bytes.fromhex("906f")


def test_header_roundtrip_through_aiortc_parser():
    ids = ExtensionIds(mid=1, abs_send_time=3, audio_level=2)
    ext = build_extensions(ids, b"0", b"\x01\x02\x03", 0x85)
    data = build_header(True, 1, 97, 65535, 4294967295, 42) + ext + b"payload"
    assert parse_header(data) == (1, 97, 65535, 4294967295, 42)
    packet = RtpPacket.parse(data)
    assert packet.payload == b"payload"
    # mid "0" (id 1, len 1), abs-send-time (id 3, len 3), audio level (id 2, len 1), padded
    assert ext == bytes.fromhex("bede0002" "1030" "32010203" "2085")


def test_extensions_only_negotiated_ones():
    assert build_extensions(ExtensionIds(), b"0", b"\0\0\0", 5) == b""
    assert build_extensions(ExtensionIds(mid=4), b"ab", b"\0\0\0", None) == bytes.fromhex("bede0001" "416162" "00")


def test_sequence_and_timestamp_arithmetic():
    assert seq_diff(2, 65534) == 4
    assert seq_diff(65534, 2) == -4
    assert ts_diff(5, 0xFFFFFFFB) == 10
    t = 1_700_000_000.25
    assert abs(ntp_to_unix(unix_to_ntp(t)) - t) < 1e-6
    assert unix_to_ntp(0) >> 32 == 2208988800
    assert abs_send_time(1.5) == (int(1.5 * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")


def test_vp8_keyframe_detection():
    # S=1, PID=0, no extension; VP8 tag bit0=0 -> keyframe
    assert vp8_is_keyframe(bytes([0x10, 0x00, 0x00, 0x00]))
    assert not vp8_is_keyframe(bytes([0x10, 0x01]))  # interframe
    assert not vp8_is_keyframe(bytes([0x00, 0x00]))  # not the start of a frame
    assert not vp8_is_keyframe(bytes([0x11, 0x00]))  # partition 1
    # X=1 with I (15-bit picture id), L, T/K
    assert vp8_is_keyframe(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x9C]))
    assert not vp8_is_keyframe(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x9D]))
    assert not vp8_is_keyframe(b"")
    # Truncated descriptors are no keyframe, whichever field is cut: X byte, picture id, TL0PICIDX, T/K, tag.
    for cut in ([0x90], [0x90, 0x80], [0x90, 0x80, 0x80], [0x90, 0x40], [0x90, 0x20], [0x90, 0x80, 0x05]):
        assert not vp8_is_keyframe(bytes(cut)), bytes(cut).hex()


def test_the_one_vp8_descriptor_parser_byte_for_byte():
    """sfu.rtp.parse_vp8_descriptor (aiortc's parser underneath) is what forwarding and the recorder read."""
    from sfu.rtp import parse_vp8_descriptor

    cases = {  # payload: (start, partition id, picture id, descriptor size)
        "10aa": (True, 0, None, 1),
        "9080" "05aa": (True, 0, 5, 3),
        "8080" "8102aa": (False, 0, 0x102, 4),
        "93f0" "8102" "07" "20aa": (True, 3, 0x102, 6),
        "9040" "07aa": (True, 0, None, 3),
        "9010" "1faa": (True, 0, None, 3),
    }
    for hexed, expected in cases.items():
        d = parse_vp8_descriptor(bytes.fromhex(hexed))
        assert (d.start, d.partition_id, d.picture_id, d.size) == expected, hexed
    for truncated in ("", "90", "9080", "908080", "9040", "9020"):
        with pytest.raises(ValueError):
            parse_vp8_descriptor(bytes.fromhex(truncated))


def test_h264_keyframe_detection():
    assert h264_is_keyframe(bytes([0x65, 0x88]))  # IDR
    assert h264_is_keyframe(bytes([0x67, 0x42]))  # SPS
    assert not h264_is_keyframe(bytes([0x41, 0x9A]))  # non-IDR slice
    stap = bytes([0x78]) + (2).to_bytes(2, "big") + bytes([0x67, 0x42]) + (2).to_bytes(2, "big") + bytes([0x68, 0xCE])
    assert h264_is_keyframe(stap)
    assert h264_is_keyframe(bytes([0x7C, 0x85, 0x00]))  # FU-A start of IDR
    assert not h264_is_keyframe(bytes([0x7C, 0x05, 0x00]))  # FU-A continuation
    assert not h264_is_keyframe(bytes([0x7C, 0x81, 0x00]))  # FU-A start of non-IDR


def test_rtx_payload():
    assert rtx_payload(0xABCD, b"xyz") == b"\xab\xcdxyz"


def test_forwarder_waits_for_keyframe_then_keeps_offsets():
    f = Forwarder(90000, video=True, initial_seq=1000, initial_ts=5000)
    assert f.munge(10, 900, False, 1.0) is None
    assert f.munge(11, 900, True, 1.0) == (1000, 5000)
    assert f.munge(13, 3900, False, 1.1) == (1002, 8000)  # a gap survives
    assert f.munge(12, 900, False, 1.1) == (1001, 5000)  # late packet keeps its slot
    assert f.munge(10, 900, False, 1.1) is None  # before the start
    assert f.source_seq(1001) == 12
    assert f.source_seq(999) is None


def test_forwarder_wraps_around():
    f = Forwarder(48000, video=False, initial_seq=65535, initial_ts=0xFFFFFF00)
    assert f.munge(7, 100, False, 0.0) == (65535, 0xFFFFFF00)
    assert f.munge(8, 1060, False, 0.02) == (0, (0xFFFFFF00 + 960) & 0xFFFFFFFF)


def test_forwarder_source_switch_is_contiguous():
    f = Forwarder(90000, video=True, initial_seq=100, initial_ts=0)
    f.munge(500, 1000, True, 10.0)
    f.munge(501, 4000, False, 10.033)
    f.switch_source()
    assert f.munge(9000, 777, False, 10.1) is None  # waits for the new source's keyframe
    seq, ts = f.munge(9001, 777, True, 10.1)
    assert seq == 102
    assert 0 < ts - 3000 <= int(0.1 * 90000)  # time moved on by about the gap, never backwards
    assert f.munge(9002, 3777, False, 10.133)[0] == 103


def test_packet_cache_holds_and_evicts():
    cache = PacketCache(slots=8)
    for seq in range(65530, 65536):
        cache.add(CachedPacket(seq, 0, 0, b"x", None, float(seq)))
    for seq in range(0, 4):
        cache.add(CachedPacket(seq, 0, 0, b"y", None, 70000.0 + seq))
    assert cache.get(3).payload == b"y"
    assert cache.get(65534) is not None
    assert cache.get(65530) is None  # overwritten by seq 2 (same slot)
    assert cache.get(11) is None


def test_default_cache_holds_more_than_a_second_at_high_rate():
    cache = PacketCache()
    pps = 1000  # ~10 Mbps of video
    for i in range(3000):
        cache.add(CachedPacket(i & 0xFFFF, 0, 0, b"", None, i / pps))
    assert cache.span_seconds() >= 1.0


def test_ntp_to_unix_of_a_sender_report_timestamp():
    ntp = ((1_700_000_000 + 2208988800) << 32) | (1 << 31)
    assert ntp_to_unix(ntp) == 1_700_000_000.5


def test_the_one_stap_a_reader_byte_for_byte():
    from sfu.rtp import stap_a_units

    stap = bytes.fromhex("78" "0002" "6742" "0003" "68ce38")
    assert stap_a_units(stap) == [bytes.fromhex("6742"), bytes.fromhex("68ce38")]
    for broken in ("78" "0000", "78" "0005" "6742", "78" "0002" "6742" "00"):
        assert stap_a_units(bytes.fromhex(broken)) is None, broken
        assert not h264_is_keyframe(bytes.fromhex(broken))


def test_the_transport_wide_sequence_number_comes_first_and_aiortc_reads_it():
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from sfu.rtp import TRANSPORT_SEQ_AT, URI_ABS_SEND_TIME, URI_MID, URI_TRANSPORT_CC

    ids = ExtensionIds.from_uris([(URI_MID, 1), (URI_ABS_SEND_TIME, 3),
                                  (URI_TRANSPORT_CC, 5)])
    assert ids.transport_cc == 5
    ext = build_extensions(ids, b"0", b"\x01\x02\x03", None, 0xABCD)
    # transport-wide seq (id 5, len 2), mid "0", abs-send-time, padded to 3 words
    assert ext == bytes.fromhex("bede0003" "51abcd" "1030" "32010203" "000000")
    assert ext[TRANSPORT_SEQ_AT:TRANSPORT_SEQ_AT + 2] == b"\xab\xcd"
    # not numbered unless a number is given, and only where it was negotiated
    assert build_extensions(ids, b"0", b"\x01\x02\x03", None) == bytes.fromhex("bede0002" "1030" "32010203" "0000")
    assert build_extensions(ExtensionIds(mid=1), b"0", b"\0\0\0", None, 7) == bytes.fromhex("bede0001" "10300000")
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=5, uri=URI_TRANSPORT_CC),
        RTCRtpHeaderExtensionParameters(id=1, uri=URI_MID)]))
    packet = RtpPacket.parse(build_header(True, 0, 96, 1, 2, 3) + ext + b"x", extensions)
    assert packet.extensions.transport_sequence_number == 0xABCD and packet.extensions.mid == "0"
