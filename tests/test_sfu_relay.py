"""The relay wire format (sfu/relay.py), byte for byte."""

from __future__ import annotations

import re

import pytest

from sfu.relay import (
    MAX_ENTRIES,
    Batcher,
    ControlDecoder,
    RelayedPacket,
    RelayError,
    decode_datagram,
    encode_control,
    encode_datagram,
    encode_entry,
)

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


def test_entry_layout_byte_for_byte():
    entry = encode_entry(0x0102, seq=0xBEEF, timestamp=0x11223344, marker=1, payload_type=96,
                         ssrc=0xCAFEBABE, payload=b"\x90\xab", audio_level=None)
    assert entry == bytes.fromhex(
        "0102" "00" "00" "000e"            # stream 258, no flags, level 0, 14 bytes of RTP
        "80" "e0" "beef" "11223344" "cafebabe"  # V=2; M=1 PT=96; seq; ts; ssrc
        "90ab")


def test_audio_level_and_repair_flags():
    entry = encode_entry(7, 1, 2, 0, 111, 3, b"\x01", audio_level=0x80 | 42, repair=True)
    assert entry[:6] == bytes.fromhex("0007" "03" "aa" "000d")
    assert decode_datagram(encode_datagram([entry])) == [
        RelayedPacket(7, 1, 2, 0, 111, 3, b"\x01", 0x80 | 42, True)]


def test_datagram_round_trip_several_packets():
    entries = [encode_entry(1, seq, seq * 3000, seq % 2, 96, 42, bytes([seq]) * seq) for seq in range(1, 6)]
    data = encode_datagram(entries)
    assert data[:2] == b"\x01\x05"
    packets = decode_datagram(data)
    assert [(p.seq, p.timestamp, p.marker, p.payload) for p in packets] == [
        (s, s * 3000, s % 2, bytes([s]) * s) for s in range(1, 6)]
    assert all(p.audio_level is None and not p.repair and p.ssrc == 42 for p in packets)


@pytest.mark.parametrize("data, problem", [
    (b"\x01", "shorter than its 2-byte header"),
    (b"\x02\x00", "relay version 2"),
    (b"\x01\x01\x00\x01", "entry 0 of 1 is cut off"),
    (b"\x01\x01" + bytes.fromhex("0001 00 00 0020") + b"\x80" * 12, "claims 32 bytes"),
    (b"\x01\x01" + bytes.fromhex("0001 00 00 000c") + b"\x40" + b"\x00" * 11, "not an RTP version 2"),
    (b"\x01\x01" + bytes.fromhex("0001 00 00 000c") + b"\x90" + b"\x00" * 11, "no padding, extension"),
    (encode_datagram([encode_entry(1, 1, 1, 0, 96, 1, b"x")]) + b"\x00", "1 bytes after the last entry"),
])
def test_malformed_datagrams_are_named(data, problem):
    with pytest.raises(RelayError, match=problem):
        decode_datagram(data)


def test_batcher_cuts_at_the_size_limit_and_the_count_limit():
    entry = encode_entry(1, 1, 1, 0, 96, 1, b"\x00" * 100)  # 118 bytes
    batcher = Batcher(limit=2 + 3 * len(entry))
    assert batcher.add(entry) is None and batcher.add(entry) is None and batcher.add(entry) is None
    full = batcher.add(entry)
    assert full is not None and len(decode_datagram(full)) == 3
    assert len(decode_datagram(batcher.take())) == 1
    assert batcher.take() is None
    small = encode_entry(1, 1, 1, 0, 96, 1, b"")
    batcher = Batcher(limit=1 << 20)
    out = [d for d in (batcher.add(small) for _ in range(MAX_ENTRIES + 1)) if d]
    assert len(out) == 1 and len(decode_datagram(out[0])) == MAX_ENTRIES
    with pytest.raises(RelayError, match="1 to 255 packets"):
        encode_datagram([])


def test_control_frames_byte_for_byte_and_split_anywhere():
    frame = encode_control({"type": "pli", "stream": 3})
    assert frame == b"\x00\x00\x00\x19" + b'{"type":"pli","stream":3}'
    two = frame + encode_control({"type": "sr", "stream": 3, "time": 1.5, "rtp": 90000})
    for cut in range(len(two) + 1):
        decoder = ControlDecoder()
        got = decoder.feed(two[:cut]) + decoder.feed(two[cut:])
        assert got == [{"type": "pli", "stream": 3}, {"type": "sr", "stream": 3, "time": 1.5, "rtp": 90000}]


@pytest.mark.parametrize("data, problem", [
    (b"\x00\x00\x00\x02[]", "JSON object with a string 'type'"),
    (b"\x00\x00\x00\x03{x}", "not JSON"),
    (b"\x7f\x00\x00\x00", "exceeds"),
])
def test_malformed_control_frames_are_named(data, problem):
    with pytest.raises(RelayError, match=problem):
        ControlDecoder().feed(data)


@pytest.mark.parametrize("data, problem", [
    (encode_control({"type": "teleport"}), "unknown control message type 'teleport'"),
    (encode_control({"type": "pli", "stream": 0}), "'pli': stream: 0 is less than the minimum of 1"),
    (encode_control({"type": "nack", "stream": 1, "seqs": [70000]}), "'nack': seqs/0: 70000 is greater"),
    (encode_control({"type": "whep", "id": 1, "session": "s", "offer": "v=0", "tracks": {"data": 1}}),
     "'whep': tracks"),
])
def test_a_message_failing_its_schema_is_skipped_and_named(data, problem):
    decoder = ControlDecoder()
    good = encode_control({"type": "pli", "stream": 5})
    assert decoder.feed(data + good) == [{"type": "pli", "stream": 5}]
    assert len(decoder.rejected) == 1 and re.search(problem, decoder.rejected[0])
