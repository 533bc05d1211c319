"""Transport-cc feedback (sfu/twcc.py) byte for byte, the recorder against a decoder written from the
draft (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1), and the answer's start-bitrate
hint (sfu/congestion.py)."""

from __future__ import annotations

import struct

import pytest

from sfu.congestion import with_start_bitrate
from sfu.twcc import MAX_STATUSES, FeedbackRecorder, build_feedback, encode_chunks

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def decode(packet: bytes) -> dict:
    """An independent reading of one feedback packet: header fields and (seq, arrival µs or None)."""
    b0, pt, length = struct.unpack_from("!BBH", packet)
    assert b0 >> 6 == 2 and b0 & 0x1F == 15 and pt == 205
    assert (length + 1) * 4 == len(packet)
    end = len(packet) - (packet[-1] if b0 & 0x20 else 0)
    sender, media, base, count, ref_fb = struct.unpack_from("!IIHHI", packet, 4)
    reference = ref_fb >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    pos, symbols = 20, []
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", packet, pos)
        pos += 2
        if not chunk & 0x8000:
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif not chunk & 0x4000:
            symbols += [(chunk >> (13 - k)) & 1 for k in range(14)]
        else:
            symbols += [(chunk >> (12 - 2 * k)) & 3 for k in range(7)]
    symbols = symbols[:count]
    clock = reference * 64_000
    arrivals = []
    for s in symbols:
        if s == 0:
            arrivals.append(None)
            continue
        if s == 1:
            delta = packet[pos]
            pos += 1
        else:
            (delta,) = struct.unpack_from("!h", packet, pos)
            pos += 2
        clock += delta * 250
        arrivals.append(clock)
    assert pos == end, "every byte before the padding is a chunk or a delta"
    return {"sender": sender, "media": media, "base": base, "count": count, "fb": ref_fb & 0xFF,
            "arrivals": [((base + i) & 0xFFFF, a) for i, a in enumerate(arrivals)]}


def test_feedback_with_a_loss_a_large_delta_and_reordering():
    base = 64_000 * 1000  # reference time 1000 (x 64 ms)
    arrivals = [base + 1000, None, base + 1500, base + 71_500, base + 71_400]
    packet = build_feedback(0x01020304, 0x05060708, 7, 65534, arrivals)
    # header; base 65534, 5 statuses; reference 1000, count 7; one two-bit vector (small, lost, small,
    # large, large); deltas 4, 2 ticks, 280 ticks and -1 tick (the reordered packet)
    assert packet == bytes.fromhex(
        "8fcd0006" "01020304" "05060708" "fffe0005" "0003e807" "d1a0" "04" "02" "0118" "ffff")


def test_feedback_with_a_run_a_one_bit_vector_and_padding():
    arrivals = [128_000 + 1000 * k for k in range(20)] + [None] * 3 + [152_000, 152_250]
    packet = build_feedback(1, 2, 0, 10, arrivals)
    # run of 20 "small delta", then a one-bit vector (0 0 0 1 1), deltas 0, 4 x 19, 20, 1, then
    # two bytes of padding with the P bit set
    assert packet == bytes.fromhex(
        "afcd000b" "00000001" "00000002" "000a0019" "00000200" "2014" "8600"
        "00" + "04" * 19 + "14" "01" "0002")


def test_chunks_pick_run_length_for_long_runs_and_tails():
    assert encode_chunks([1] * 14) == bytes.fromhex("200e")
    assert encode_chunks([0] * 13 + [1]) == bytes.fromhex("8001")  # one-bit vector, last slot
    assert encode_chunks([2, 2]) == bytes.fromhex("4002")  # uniform tail: a run of large deltas
    assert encode_chunks([1, 2]) == bytes.fromhex("d800")
    assert encode_chunks([1] * 9000) == bytes.fromhex("3fff" "2329")  # 8191 + 809


def test_feedback_refuses_what_the_wire_cannot_hold():
    with pytest.raises(ValueError):
        build_feedback(1, 2, 0, 0, [None, None])
    with pytest.raises(ValueError):
        build_feedback(1, 2, 0, 0, [0, 9_000_000])


def test_recorder_unwraps_reports_once_and_marks_losses():
    rec = FeedbackRecorder(sender_ssrc=9, media_ssrc=3)
    assert rec.feedback() == []
    for seq, t in ((65534, 1_000_000), (65535, 1_001_000), (1, 1_003_000), (1, 1_003_500)):
        rec.add(seq, t)
    first = [decode(p) for p in rec.feedback()]
    assert [(f["base"], f["count"], f["fb"], f["sender"], f["media"]) for f in first] == [(65534, 4, 0, 9, 3)]
    got = first[0]["arrivals"]
    assert [s for s, _ in got] == [65534, 65535, 0, 1]
    assert got[2][1] is None                       # 0 never came
    assert got[3][1] == got[0][1] + 3000           # the duplicate of 1 kept its first arrival
    rec.add(0, 1_004_000)                          # too late: already reported lost
    rec.add(3, 1_004_000)
    rec.add(2, 1_004_100)                          # reordered within one report
    second = [decode(p) for p in rec.feedback()]
    assert [(f["base"], f["count"], f["fb"]) for f in second] == [(2, 2, 1)]
    (s2, t2), (s3, t3) = second[0]["arrivals"]
    assert (s2, s3) == (2, 3) and t2 - t3 == 0     # 100 µs earlier is the same 250 µs tick here


def test_recorder_splits_long_reports_and_long_silences():
    rec = FeedbackRecorder(sender_ssrc=1)
    n = MAX_STATUSES + 20
    for i in range(n):
        rec.add(i, 5_000_000 + i * 100)
    rec.add(n, 5_000_000 + 20_000_000)              # after a 20 s pause
    packets = [decode(p) for p in rec.feedback()]
    assert [(p["base"], p["count"]) for p in packets] == [(0, MAX_STATUSES), (MAX_STATUSES, 20), (n, 1)]
    assert [p["fb"] for p in packets] == [0, 1, 2]
    seen = [a for p in packets for a in p["arrivals"]]
    assert [s for s, _ in seen] == list(range(n + 1))
    assert all(a is not None and abs(a - (5_000_000 + s * 100)) < 250 for s, a in seen[:n])


def test_recorder_restarts_after_a_jump_in_sequence_numbers():
    rec = FeedbackRecorder(sender_ssrc=1)
    rec.add(100, 1_000)
    rec.feedback()
    rec.add(40_000, 2_000)
    (only,) = [decode(p) for p in rec.feedback()]
    assert (only["base"], only["count"]) == (40_000, 1)


SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 transport-cc",
    "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000", "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102", "",
])


def test_start_bitrate_goes_on_every_video_codec_and_nowhere_else():
    out = with_start_bitrate(SDP, 2500)
    assert out == "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
        "a=rtpmap:96 VP8/90000", "a=fmtp:96 x-google-start-bitrate=2500", "a=rtcp-fb:96 transport-cc",
        "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f;x-google-start-bitrate=2500",
        "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102", "",
    ])
    assert with_start_bitrate(out, 1000) == out  # a value already there is kept
