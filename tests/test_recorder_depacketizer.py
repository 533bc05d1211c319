"""Byte-level tests of recorder.depacketizer: no files, no threads."""

from __future__ import annotations

import fractions
import struct

import av
import numpy as np
import pytest

from recorder.depacketizer import (
    Depacketizer,
    assemble_h264,
    assemble_vp8,
    codec_from_mime,
    h264_nal_units,
    opus_packet_samples,
    parse_h264_sps_size,
    remove_emulation_prevention,
    vp8_keyframe_size,
)
from sfu.rtp import parse_vp8_descriptor
from sfu.seqnum import Unwrapper, unwrap_near

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


class Pkt:
    def __init__(self, seq, ts, payload, marker=0):
        self.sequence_number = seq & 0xFFFF
        self.timestamp = ts & 0xFFFFFFFF
        self.payload = payload
        self.marker = marker


def vp8_key(width=320, height=240, body=b"K" * 20):
    return b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + body


def vp8_inter(body=b"P" * 20):
    return b"\x01" + body


def vp8_packets(frames, seq=0, ts=0, split=2, ts_step=3000):
    """frames: list of VP8 frame bytes -> RTP-like packets, ``split`` per frame."""
    out = []
    for i, data in enumerate(frames):
        size = -(-len(data) // split)
        chunks = [data[j : j + size] for j in range(0, len(data), size)]
        for k, chunk in enumerate(chunks):
            desc = b"\x10" if k == 0 else b"\x00"
            out.append(Pkt(seq, ts + i * ts_step, desc + chunk, marker=int(k == len(chunks) - 1)))
            seq += 1
    return out


# -- unwrapping


def test_sequence_unwrap_across_wrap_and_reorder():
    u = Unwrapper(16)
    values = [u.unwrap(s) for s in (65533, 65534, 65535, 0, 1, 65535, 2)]
    assert values[:5] == list(range(values[0], values[0] + 5))
    assert values[5] == values[2]  # late packet from before the wrap lands before it
    assert values[6] == values[0] + 5


def test_timestamp_unwrap_to_64_bits():
    u = Unwrapper(32)
    a = u.unwrap(0xFFFFF000)
    b = u.unwrap(0x00000800)
    assert b - a == 0x1800
    assert u.unwrap(0xFFFFF100) == a + 0x100  # reordered, before the wrap


def test_unwrap_near():
    assert unwrap_near(10, (1 << 32) + 0xFFFFFFF0) == (2 << 32) + 10
    assert unwrap_near(0xFFFFFFF0, (2 << 32) + 10) == (1 << 32) + 0xFFFFFFF0


def test_codec_from_mime():
    assert codec_from_mime("video/VP8") == "vp8"
    assert codec_from_mime("video/h264") == "h264"
    assert codec_from_mime("audio/opus") == "opus"
    with pytest.raises(ValueError, match="unsupported codec 'video/AV1'"):
        codec_from_mime("video/AV1")


# -- VP8


def test_vp8_descriptor_forms():
    d = parse_vp8_descriptor(b"\x10\xaa")
    assert (d.start, d.partition_id, d.picture_id, d.size) == (True, 0, None, 1)
    d = parse_vp8_descriptor(b"\x90\x80\x05\xaa")  # X, I, 7-bit picture id
    assert (d.start, d.picture_id, d.size) == (True, 5, 3)
    d = parse_vp8_descriptor(b"\x80\x80\x81\x02\xaa")  # 15-bit picture id, S=0
    assert (d.start, d.picture_id, d.size) == (False, 0x102, 4)
    d = parse_vp8_descriptor(b"\x93\xf0\x81\x02\x07\x20\xaa")  # I(M) + L + T/K, PID 3
    assert (d.partition_id, d.picture_id, d.size) == (3, 0x102, 6)
    with pytest.raises(ValueError):
        parse_vp8_descriptor(b"\x90\x80")


def test_vp8_keyframe_size_and_assembly():
    assert vp8_keyframe_size(vp8_key(640, 360)) == (640, 360)
    assert vp8_keyframe_size(vp8_inter()) is None
    key = vp8_key(640, 360)
    data, keyframe, w, h = assemble_vp8([b"\x10" + key[:7], b"\x00" + key[7:]])
    assert (data, keyframe, w, h) == (key, True, 640, 360)
    data, keyframe, w, h = assemble_vp8([b"\x10" + vp8_inter()])
    assert not keyframe and w is None
    # A frame whose first packet does not start partition 0 is broken.
    assert assemble_vp8([b"\x00" + key]) is None
    assert assemble_vp8([b"\x11" + key]) is None


# -- H.264


def sps_pps_from_libx264(width, height, profile=None):
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    if profile:
        codec.profile = profile
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
    frame.pts = 0
    data = b"".join(bytes(p) for p in codec.encode(frame)) + b"".join(bytes(p) for p in codec.encode(None))
    nals = [n for n in data.split(b"\x00\x00\x01") if n]
    nals = [n[:-1] if n.endswith(b"\x00") else n for n in nals]
    return [n for n in nals if n]


@pytest.mark.parametrize("size,profile", [((320, 240), "Baseline"), ((640, 360), None), ((1280, 720), "High"), ((854, 480), None)])
def test_sps_size_from_real_encoder(size, profile):
    nals = sps_pps_from_libx264(*size, profile=profile)
    sps = next(n for n in nals if n[0] & 0x1F == 7)
    assert parse_h264_sps_size(sps) == size


def test_emulation_prevention():
    assert remove_emulation_prevention(b"\x00\x00\x03\x01\x00\x00\x03\x00\x00") == b"\x00\x00\x01\x00\x00\x00\x00"


def test_h264_single_stap_fu():
    sps, pps = b"\x67\x42\x00\x1f", b"\x68\xce\x38\x80"
    idr = b"\x65" + bytes(range(200))
    stap = b"\x78" + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    fu_ind = (idr[0] & 0xE0) | 28
    fus = [bytes([fu_ind, 0x80 | 5]) + idr[1:80], bytes([fu_ind, 5]) + idr[80:150],
           bytes([fu_ind, 0x40 | 5]) + idr[150:]]
    assert h264_nal_units([stap] + fus) == [sps, pps, idr]
    data, keyframe, _, _ = assemble_h264([stap] + fus)
    assert data == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + b"\x00\x00\x00\x01" + idr
    assert keyframe
    data, keyframe, _, _ = assemble_h264([b"\x41\x9a\x00"])  # single non-IDR slice
    assert data == b"\x00\x00\x00\x01\x41\x9a\x00" and not keyframe
    # Broken: FU-A without start, FU-A without end, bad STAP-A length, unsupported type.
    assert assemble_h264(fus[1:]) is None
    assert assemble_h264([stap] + fus[:2]) is None
    assert assemble_h264([b"\x78\x00\x09\x67"]) is None
    assert assemble_h264([b"\x79\x00\x01\x67"]) is None


def test_opus_packet_samples():
    assert opus_packet_samples(bytes([0xFC, 0xFF])) == 960  # config 31 (CELT FB 20 ms), code 0
    assert opus_packet_samples(bytes([0x78, 0])) == 960  # config 15 (hybrid FB 20 ms)
    assert opus_packet_samples(bytes([0x09, 0])) == 1920  # SILK NB 20 ms, code 1: 2 frames
    assert opus_packet_samples(bytes([0x03 | (16 << 3), 0x04])) == 120 * 4
    assert opus_packet_samples(b"") is None
    assert opus_packet_samples(bytes([0x03 | (3 << 3), 0x03])) is None  # 3 x 60 ms > 120 ms


# -- the depacketizer


def test_in_order_frames_and_dimensions():
    frames = [vp8_key(), vp8_inter(), vp8_inter()]
    d = Depacketizer("vp8")
    out = []
    for i, p in enumerate(vp8_packets(frames, seq=65534, ts=0xFFFFF000)):
        out += d.push(p, i * 0.01)
    assert [f.data for f in out] == frames
    assert out[0].keyframe and (out[0].width, out[0].height) == (320, 240)
    assert [f.timestamp - out[0].timestamp for f in out] == [0, 3000, 6000]


def test_reordering_is_repaired():
    frames = [vp8_key()] + [vp8_inter(bytes([i]) * 30) for i in range(9)]
    packets = vp8_packets(frames, seq=65530)
    packets[3], packets[4] = packets[4], packets[3]
    packets[10], packets[13] = packets[13], packets[10]
    d = Depacketizer("vp8")
    out = []
    for i, p in enumerate(packets):
        out += d.push(p, i * 0.005)
    out += d.flush()
    assert [f.data for f in out] == frames
    assert d.packets_lost == 0 and d.keyframe_requests == 0


def test_nack_repair_within_window_and_duplicates():
    frames = [vp8_key()] + [vp8_inter(bytes([i]) * 30) for i in range(9)]
    packets = vp8_packets(frames)
    late = packets.pop(5)
    d = Depacketizer("vp8", repair_window=0.2)
    out = []
    for i, p in enumerate(packets[:10]):
        out += d.push(p, i * 0.01)
    out += d.push(late, 0.15)  # the retransmission, within the window
    out += d.push(late, 0.16)  # a duplicate
    for i, p in enumerate(packets[10:]):
        out += d.push(p, 0.17 + i * 0.01)
    assert [f.data for f in out] == frames
    assert d.packets_late == 1 and d.packets_lost == 0


def test_loss_drops_until_keyframe_and_asks_for_one():
    requests = []
    frames = [vp8_key(), vp8_inter(b"a" * 30), vp8_inter(b"b" * 30), vp8_inter(b"c" * 30),
              vp8_inter(b"d" * 30), vp8_key(body=b"k2" * 10), vp8_inter(b"e" * 30)]
    packets = vp8_packets(frames)
    del packets[4]  # first half of frame 2
    d = Depacketizer("vp8", repair_window=0.1, on_keyframe_needed=lambda: requests.append(1))
    out = []
    for i, p in enumerate(packets):
        out += d.push(p, i * 0.05)
    out += d.flush()
    assert [f.data for f in out] == [frames[0], frames[1], frames[5], frames[6]]
    assert requests == [1]
    assert d.packets_lost == 1 and d.frames_dropped >= 2


def test_gap_expires_by_poll_and_by_count():
    frames = [vp8_key()] + [vp8_inter(bytes([i]) * 30) for i in range(4)]
    packets = vp8_packets(frames)
    del packets[2]
    d = Depacketizer("vp8", repair_window=0.5)
    out = []
    for p in packets:
        out += d.push(p, 1.0)
    assert [f.data for f in out] == frames[:1]
    assert d.poll(1.2) == []
    assert d.poll(1.6) == [] and d.packets_lost == 1 and d.waiting_for_keyframe
    d2 = Depacketizer("vp8", repair_window=10, max_pending=3)
    for p in packets:
        d2.push(p, 1.0)
    assert d2.packets_lost == 1


def test_first_frame_is_a_keyframe():
    requests = []
    frames = [vp8_inter(b"x" * 10), vp8_inter(b"y" * 10), vp8_key(), vp8_inter(b"z" * 10)]
    d = Depacketizer("vp8", on_keyframe_needed=lambda: requests.append(1))
    out = []
    for i, p in enumerate(vp8_packets(frames)):
        out += d.push(p, i * 0.01)
    assert [f.data for f in out] == frames[2:]
    assert requests == [1]  # rate limited: one request within keyframe_retry


def test_opus_loss_needs_no_keyframe():
    requests = []
    d = Depacketizer("opus", repair_window=0.06, on_keyframe_needed=lambda: requests.append(1))
    out = []
    for i in range(20):
        if i == 7:
            continue
        out += d.push(Pkt(65530 + i, i * 960, bytes([0xFC, i])), i * 0.02)
    out += d.flush()
    assert [f.data[1] for f in out] == [i for i in range(20) if i != 7]
    assert requests == [] and d.packets_lost == 1


def test_h264_frames_through_depacketizer():
    sps, pps = b"\x67\x42\x00\x1f", b"\x68\xce\x38\x80"
    stap = b"\x78" + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    idr = b"\x65" + b"\x11" * 50
    packets = [Pkt(1, 0, stap), Pkt(2, 0, idr, marker=1), Pkt(3, 3000, b"\x41\x22", marker=1)]
    d = Depacketizer("h264")
    out = []
    for p in packets:
        out += d.push(p, 0.0)
    assert len(out) == 2 and out[0].keyframe and not out[1].keyframe
    assert out[1].data == b"\x00\x00\x00\x01\x41\x22"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unsupported codec"):
        Depacketizer("av1")
    with pytest.raises(ValueError, match="repair_window"):
        Depacketizer("vp8", repair_window=-1)


def test_padding_only_packets_are_skipped():
    frames = [vp8_key(), vp8_inter(b"a" * 30), vp8_inter(b"b" * 30)]
    packets = vp8_packets(frames)  # 6 packets, seq 0..5
    for p in packets[2:]:
        p.sequence_number += 2
    padding = [Pkt(2, 0, b""), Pkt(3, 0, b"")]  # probing after frame 0, its timestamp
    d = Depacketizer("vp8")
    out = []
    for i, p in enumerate(packets[:2] + padding + packets[2:]):
        out += d.push(p, i * 0.01)
    assert [f.data for f in out] == frames
    assert d.keyframe_requests == 0 and d.frames_dropped == 0


def test_new_ssrc_restarts_and_keeps_one_timeline():
    requests = []
    d = Depacketizer("vp8", on_keyframe_needed=lambda: requests.append(1))
    first = vp8_packets([vp8_key(), vp8_inter()], seq=1000, ts=500_000)
    second = vp8_packets([vp8_inter(b"x" * 5), vp8_key(body=b"new"), vp8_inter(b"y" * 5)],
                         seq=40_000, ts=7)  # new numbering, "older" looking sequence numbers
    out = []
    for p in first:
        p.ssrc = 1
        out += d.push(p, 10.0)
    for i, p in enumerate(second):
        p.ssrc = 2
        out += d.push(p, 11.0 + i * 0.01)
    assert [f.data for f in out] == [vp8_key(), vp8_inter(), vp8_key(body=b"new"), vp8_inter(b"y" * 5)]
    assert d.discontinuities == 1 and requests == [1]
    ts = [f.timestamp for f in out]
    assert ts == sorted(ts)
    # One second of arrival time passed between the streams: the timeline continues by ~1 s.
    assert abs((ts[2] - ts[1]) / 90000 - 1.0) < 0.05


def test_sequence_restart_without_ssrc_change():
    d = Depacketizer("opus", max_late_run=8)
    out = []
    for i in range(20):
        out += d.push(Pkt(30_000 + i, i * 960, bytes([0xFC, i])), i * 0.02)
    for i in range(20):  # the sender restarted at seq 5 (looks ~30000 packets old)
        out += d.push(Pkt(5 + i, 123 + i * 960, bytes([0xFC, 100 + i])), 0.4 + i * 0.02)
    got = [f.data[1] for f in out]
    assert got[:20] == list(range(20))
    assert got[20:] == list(range(100 + 7, 120))  # the packets seen before the restart are lost
    assert d.discontinuities == 1
    ts = [f.timestamp for f in out]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
