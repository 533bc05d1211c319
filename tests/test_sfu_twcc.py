"""Transport-cc feedback (sfu/twcc.py) byte for byte, the recorder against a decoder written from the
draft (draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1), and the answer's start-bitrate
hint (sfu/congestion.py)."""

from __future__ import annotations

import struct
import time

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


# --- the sender half: parse_feedback, SendHistory ------------------------------------------------

from sfu.twcc import (PacketResult, SendHistory, TransportFeedback, parse_feedback,  # noqa: E402
                      split_transport_feedback)


def reconstructed(arrivals: list[int | None]) -> list[int | None]:
    """Arrivals as a sender reconstructs them from build_feedback: floored to the reference and ticks."""
    first = next(a for a in arrivals if a is not None)
    clock = first // 64_000 * 64_000
    out = []
    for a in arrivals:
        if a is None:
            out.append(None)
        else:
            clock += (a - clock) // 250 * 250
            out.append(clock)
    return out


def round_trip(base: int, arrivals: list[int | None], fb_count: int = 7) -> TransportFeedback:
    packet = build_feedback(0x11223344, 0x55667788, fb_count, base, arrivals)
    fb = parse_feedback(packet)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.fb_count) == (0x11223344, 0x55667788, base & 0xFFFF,
                                                                        fb_count)
    assert fb.arrivals_us() == reconstructed(arrivals)
    assert fb.arrivals_us() == [a for _, a in decode(packet)["arrivals"]]
    # Written again from what was parsed, the same bytes.
    assert build_feedback(fb.sender_ssrc, fb.media_ssrc, fb.fb_count, fb.base_seq, fb.arrivals_us()) == packet
    return fb


def test_parse_round_trips_every_chunk_kind():
    t0 = 10_000_000
    # a run of 20 small deltas (run-length chunk)
    fb = round_trip(100, [t0 + 1000 * i for i in range(20)])
    assert fb.deltas[1:] == (4,) * 19
    # small deltas and losses mixed (one-bit vector), then a uniform tail
    round_trip(200, [t0, None, t0 + 500, None, None, t0 + 2000, t0 + 2250, None, t0 + 3000, t0 + 3250,
                     None, t0 + 4000, t0 + 4250, t0 + 4500, t0 + 4750])
    # a large and a negative delta (two-bit vector)
    fb = round_trip(300, [t0, t0 + 100_000, t0 + 99_000, None, t0 + 99_250, t0 - 2_000_000, t0 - 1_999_750])
    assert fb.deltas[1] == 400 and fb.deltas[2] == -4 and fb.deltas[3] is None and fb.deltas[5] < -0x80
    # a long run of losses between two arrivals
    round_trip(400, [t0] + [None] * 40 + [t0 + 8_000_000])


def test_parse_round_trips_across_the_sequence_wrap_and_a_negative_reference():
    fb = round_trip(65530, [5_000 + 1000 * i for i in range(12)])
    assert fb.base_seq == 65530 and len(fb.deltas) == 12
    # a reference time past 2^23 ticks reads negative (24-bit signed), and the deltas still add up
    far = (1 << 23) * 64_000 + 640_000
    fb = parse_feedback(build_feedback(1, 2, 0, 7, [far, far + 250]))
    assert fb.reference_time == 10 - (1 << 23) and fb.deltas == (0, 1)


def test_parse_a_packet_written_out_from_the_draft():
    # V=2 P=1 FMT=15, PT=205, length 7 words (32 bytes); sender, media SSRC; base 0xFFFE, count 4;
    # reference 0x000102 (x 64 ms), fb count 9; one two-bit vector chunk: small, large, not received,
    # small (01 10 00 01, rest 0); deltas 0x10, 0xFF38 (-200), 0x04; two padding bytes (00 02).
    packet = bytes.fromhex(
        "af cd 00 07"  "00 00 00 01"  "00 00 00 02"  "ff fe 00 04"  "00 01 02 09"
        "d8 40"        "10 ff 38 04"  "00 00 00 00"  "00 02".replace(" ", ""))
    assert len(packet) == 32
    fb = parse_feedback(packet)
    assert fb == TransportFeedback(1, 2, 0xFFFE, 0x102, 9, (0x10, -200, None, 4))
    ref = 0x102 * 64_000
    assert fb.arrivals_us() == [ref + 4000, ref + 4000 - 50_000, None, ref + 4000 - 50_000 + 1000]


def with_body(body: bytes, count: int = 4, b0: int = 0x8F, pt: int = 205) -> bytes:
    """A feedback header (no padding bit) with the right length field over `body`."""
    return struct.pack("!BBHIIHHI", b0, pt, (20 + len(body)) // 4 - 1, 1, 2, 10, count, 0) + body


def test_parse_names_what_is_wrong():
    good = build_feedback(1, 2, 0, 10, [1000, 2000, None, 3000])
    parse_feedback(good)
    cases = [
        (good[:19], "shorter than"),
        (bytes((0x4F,)) + good[1:], "version"),
        (good[:1] + bytes((206,)) + good[2:], "not transport-cc"),
        (bytes((0x81,)) + good[1:], "not transport-cc"),
        (good + b"\x00\x00\x00\x00", "length field"),
        (with_body(b"\x20\x01\x00\x00", count=0), "status count is 0"),
        # one run-length chunk claiming 4 large deltas, with the bytes for one
        (with_body(struct.pack("!H", (2 << 13) | 4) + b"\x00\x01"), "receive deltas end"),
        (with_body(struct.pack("!H", (3 << 13) | 4) + b"\x00\x00"), "reserved status symbol"),
        # two one-bit vectors (28 statuses) and nothing after them, for a count of 40
        (with_body(b"\x80\x00\x80\x00", count=40), "status chunks end"),
        # padding that eats the header
        (with_body(b"\x20\x01\x01\x40", b0=0xAF), "padding count"),
        (with_body(b"\x20\x01\x01\x00", b0=0xAF), "padding count"),
    ]
    for packet, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_feedback(packet)


def test_split_takes_feedback_out_of_a_compound():
    rr = bytes.fromhex("81c90007") + b"\x00" * 28
    fb = build_feedback(1, 2, 0, 10, [1000, 2000])
    nack = bytes.fromhex("8dcd0003") + b"\x00" * 12
    assert split_transport_feedback(rr + fb + nack) == ([fb], rr + nack)
    assert split_transport_feedback(rr + nack) == ([], rr + nack)
    assert split_transport_feedback(fb) == ([fb], b"")
    truncated = rr + fb[:-4]
    assert split_transport_feedback(truncated) == ([], truncated)


def feedback_for(history_seqs: list[int], arrivals: list[int | None]) -> TransportFeedback:
    return parse_feedback(build_feedback(1, 2, 0, history_seqs[0], arrivals))


def test_history_numbers_packets_and_pairs_feedback_with_them():
    h = SendHistory()
    wire = [h.sent(1200 + i, i == 2, 100.0 + i * 0.01) for i in range(4)]
    assert wire == [0, 1, 2, 3] and h.packets_sent == 4
    t = 5_000_000
    out = h.results(feedback_for(wire, [t, None, t + 20_000, t + 30_000]), 100.1)
    assert out == [
        PacketResult(0, 100.0, 1200, t / 1e6, False),
        PacketResult(1, 100.01, 1201, None, False),
        PacketResult(2, 100.02, 1202, (t + 20_000) / 1e6, True),
        PacketResult(3, 100.03, 1203, (t + 30_000) / 1e6, False),
    ]
    # repeated: ignored; the lost one arriving late: reported with its arrival
    again = h.results(feedback_for(wire, [t, t + 15_000, t + 20_000]), 100.2)
    assert again == [PacketResult(1, 100.01, 1201, (t + 15_000) / 1e6, False)]
    # numbers never sent: ignored and counted
    assert h.results(parse_feedback(build_feedback(1, 2, 0, 3, [t + 30_000, t + 40_000, t + 50_000])), 100.2) == []
    assert h.unknown == 2  # 3 was reported already; 4 and 5 were never sent


def test_history_unwraps_the_wire_number_and_the_reference_time():
    h = SendHistory(capacity=64)
    for i in range(65534):
        h._next = i + 1  # fast-forward: only the last packets are in the ring
    wire = [h.sent(100, False, 1.0 + i * 0.001) for i in range(6)]
    assert wire == [65534, 65535, 0, 1, 2, 3]
    # the reference time wraps from 2^24 - 1 to 0 between two feedback packets
    top = ((1 << 24) - 1) * 64_000
    first = h.results(parse_feedback(build_feedback(1, 2, 0, 65534, [top, top + 1000])), 1.01)
    assert [r.seq for r in first] == [65534, 65535]
    second = h.results(parse_feedback(build_feedback(1, 2, 1, 0, [(1 << 24) * 64_000 + 2000])), 1.01)
    assert [r.seq for r in second] == [65536]
    # arrivals stay monotonic on the viewer's clock across the wrap: 64 ms + 2 ms after the first
    assert second[0].arrival - first[0].arrival == pytest.approx(0.066)


def test_history_forgets_old_and_overwritten_packets():
    h = SendHistory(capacity=8, max_age=1.0)
    for i in range(10):
        h.sent(100, False, float(i))
    # 0 and 1 were overwritten by 8 and 9; 2..7 are in the ring but 2..7 were sent over 1 s ago at now=8.5
    out = h.results(parse_feedback(build_feedback(1, 2, 0, 0, [1000 * i for i in range(10)])), 8.5)
    assert [r.seq for r in out] == [8, 9]
    assert h.unknown == 8


async def test_a_legs_probe_padding_is_numbered_as_it_goes_out():
    """DownTrack.send_padding with a SendHistory: each padding packet carries the next transport-wide number
    (first in its extension block), recorded as a probe of its own size; without one, nothing changes."""
    import types

    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.rtcdtlstransport import State

    from sfu.aiortc_seam import SendParameters
    from sfu.downtrack import DownTrack
    from sfu.rtp import URI_ABS_SEND_TIME, URI_MID, URI_TRANSPORT_CC
    from tests.test_sfu_uptrack import make_track

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for numbered in (True, False):
            leg = DownTrack(pc.addTransceiver("video", direction="sendonly").sender, subscriber_id="v", kind="video")
            history = SendHistory()
            if numbered:
                leg.twcc = history
            leg.seam.params = SendParameters("video/VP8", 90000, 96, 97, "0", header_extensions=[
                (URI_MID, 1), (URI_ABS_SEND_TIME, 3), (URI_TRANSPORT_CC, 5)])
            wire: list[bytes] = []
            pair = object()
            leg.seam._fast = (types.SimpleNamespace(_state=State.CONNECTED), lambda data, addr: wire.append(data),
                              lambda data: data, None, {1: pair}, pair)
            leg.attach(make_track("video"))
            assert leg._configure()
            leg.forwarder.munge(1, 3000, True, 0.0)  # media has started on the leg
            assert leg.send_padding(3) == 3
            assert all(len(p) == leg.padding_bytes for p in wire)
            if numbered:
                assert [p[12 + 5:12 + 7] for p in wire] == [b"\x00\x00", b"\x00\x01", b"\x00\x02"]
                assert wire[0][12:17] == bytes.fromhex("bede0003" "51")
                t = 1_000_000
                feedback = parse_feedback(build_feedback(1, 2, 0, 0, [t, t + 1000, t + 2000]))
                results = history.results(feedback, time.monotonic())
                assert [(r.seq, r.size, r.probe) for r in results] == [(i, len(wire[i]), True) for i in range(3)]
            else:
                assert history.packets_sent == 0 and wire[0][12:16] == bytes.fromhex("bede0002")
    finally:
        await pc.close()
