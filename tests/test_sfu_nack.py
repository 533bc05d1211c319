"""NACK → RTX on one leg, with real aiortc peers on 127.0.0.1 and no server: a subscriber's NACK is answered
from the track's PacketCache as an RFC 4588 RTX packet, and the retransmit guard holds a repeat back."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from sfu.peer import IceSettings, PeerFactory
from tests.media import CounterVideoTrack
from tests.test_sfu_inprocess import start_publisher, start_subscriber

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


class RecordingPacer:
    """Stands in for the leg's Pacer: keeps what the leg hands it."""

    backlog = 0
    paced = 0
    pacing_media = True

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []

    def send(self, data: bytes, now: float, *, rtx: bool = False) -> None:
        self.sent.append((data, rtx))

    def admit(self, size: int, now: float) -> bool:
        return False  # media goes to enqueue: kept apart from what the NACKs send

    def enqueue(self, data: bytes, *, rtx: bool = False) -> None:
        pass

    def set_media_rate(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


async def test_a_nack_is_answered_with_rtx_from_the_cache_and_a_repeat_is_held_back():
    peers = PeerFactory(IceSettings(addresses=["127.0.0.1"]))
    pub_pc, publisher, published = await start_publisher(peers, CounterVideoTrack())
    (up,) = published
    sub_pc, sub, collectors = await start_subscriber(peers, "s0", [up])
    try:
        await collectors[0].wait_frames(10, timeout=15)
        _, leg = sub.legs[0]
        params = leg.seam.params
        assert params.rtx_payload_type is not None, "aiortc negotiates RTX for video"
        leg.pacer = pacer = RecordingPacer()  # from here on, what the leg sends is kept, not sent
        out_seq = leg.forwarder.last_out_seq
        cached = up.cache.get(leg.forwarder.source_seq(out_seq))
        assert cached is not None

        await leg._on_nack([out_seq])
        assert len(pacer.sent) == 1 and leg.retransmits == 1
        data, rtx = pacer.sent[0]
        packet = RtpPacket.parse(data)
        assert rtx and packet.payload_type == params.rtx_payload_type and packet.ssrc == leg.seam.rtx_ssrc
        # RFC 4588: the original sequence number, then the original payload, byte for byte.
        assert packet.payload == out_seq.to_bytes(2, "big") + cached.payload
        assert packet.marker == cached.marker

        await leg._on_nack([out_seq])  # at once again: within the guard's interval, not resent
        assert len(pacer.sent) == 1 and leg.retransmits == 1

        misses = leg.nack_misses
        await leg._on_nack([(out_seq + 30000) & 0xFFFF])  # never forwarded: nothing in the cache
        assert len(pacer.sent) == 1 and leg.nack_misses == misses + 1
    finally:
        for c in collectors:
            c.stop()
        for connection in (sub_pc, sub, pub_pc, publisher):  # the subscriber's side first
            await connection.close()
