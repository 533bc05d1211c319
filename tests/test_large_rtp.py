"""RTP packets larger than aiortc's 1300-byte payloads (GStreamer sends 1400): forwarded up to the SRTP
limit, dropped and counted above it, and never the end of the publisher's transport."""

from __future__ import annotations

import pytest

from sfu.aiortc_seam import MAX_RTP_PACKET, allow_large_rtp, rtp_payload_limit, srtp_oversize
from signaling.room import ROOMS
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import apply_answer, client_pc, make_offer
from tests.test_whip_whep import (ROOM, SDP, WhepViewer, WhipPublisher, assert_counters_healthy, http,  # noqa: F401
                                  token, wait_no_peers, wait_until)

# aiortc's packet: 12 bytes of header, 12 of extensions (mid, abs-send-time), then the payload.
OVERHEAD = 24


class SizeSink:
    """Records the RTP packet sizes the server received (a PacketSink, like the recorder)."""

    def __init__(self) -> None:
        self.largest = 0
        self.packets = 0

    def feed(self, packet, arrival: float) -> None:
        self.packets += 1
        self.largest = max(self.largest, len(packet.payload) + OVERHEAD)


def bearer(server, identity: str) -> dict:
    """The session URL takes the token of the identity that created it (RFC 9725 session, docs/protocol.md)."""
    return {"Authorization": f"Bearer {token(server, identity, 'instructor')}"}


def video_track(room):
    return next(t for t in room.tracks() if t.kind == "video")


@pytest.mark.parametrize("packet_size", [1400, 1500])
async def test_large_packets_are_forwarded_and_decoded(stoa_server, http, packet_size):
    with rtp_payload_limit(packet_size - OVERHEAD):
        pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "gst", "instructor")) \
            .publish(CounterVideoTrack(640, 480), ToneAudioTrack())
        room = stoa_server.app[ROOMS].rooms[ROOM]
        await wait_until(lambda: any(t.kind == "video" for t in room.tracks()), 10, "the video track")
        sizes = SizeSink()
        video_track(room).add_sink(sizes)

        viewers = [await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, f"v{i}", "viewer")).start()
                   for i in range(2)]
        for v in viewers:
            await wait_until(lambda: "video" in v.collectors, 10, "the video track")
            await v.video.wait_frames(45, timeout=20)
            assert_counters_healthy(v.video.counters)
        assert sizes.largest > packet_size - 20, f"the publisher sent {sizes.largest}-byte packets"
        assert pub.pc.connectionState == "connected", "the publisher's transport stays up"
        legs = [d for p in room.participants.values() if p.subscriber for _, d in p.subscriber.legs]
        assert legs and all(d.oversize_drops == 0 for d in legs)
        assert video_track(room).forward_errors == 0
        for v in viewers:
            assert await v.stop() == 200
        assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


async def oversized_publisher(stoa_server, http):
    """A WHIP publisher (counter video and tone) whose sender protects what no WebRTC receiver takes."""
    pc = client_pc()
    pc.addTransceiver(CounterVideoTrack(640, 480), direction="sendonly")
    pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    allow_large_rtp(pc, 4096)
    offer = await make_offer(pc)
    async with http.post(f"{stoa_server.base}/whip/{ROOM}", data=offer, headers={
            "Content-Type": SDP, "Authorization": f"Bearer {token(stoa_server, 'big', 'instructor')}"}) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
        await apply_answer(pc, await r.text())
    return pc, location


async def test_packets_over_the_srtp_limit_are_dropped_and_counted_and_the_publisher_stays(stoa_server, http):
    """Payloads of 2100 bytes make packets over MAX_RTP_PACKET: the leg drops them, the rest flows."""
    with rtp_payload_limit(2100):
        pc, location = await oversized_publisher(stoa_server, http)
        room = stoa_server.app[ROOMS].rooms[ROOM]
        await wait_until(lambda: any(t.kind == "video" for t in room.tracks()), 10, "the video track")
        up = video_track(room)
        sizes = SizeSink()
        up.add_sink(sizes)
        viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
        await wait_until(lambda: "audio" in viewer.collectors, 10, "the audio track")
        leg = next(d for _, d in room.participants["v"].subscriber.legs if d.kind == "video")
        await wait_until(lambda: leg.oversize_drops > 5, 15, "oversize packets to be dropped")
        assert sizes.largest > MAX_RTP_PACKET
        # Audio keeps flowing to the viewer, and the publisher keeps sending: nothing closed.
        audio_before, received_before = viewer.audio.frames, up.packets_received
        await wait_until(lambda: viewer.audio.frames > audio_before + 25, 10, "audio after the drops")
        await wait_until(lambda: up.packets_received > received_before + 30, 10, "video after the drops")
        assert pc.connectionState == "connected"
        assert up.forward_errors == 0, "dropped on purpose, not by an exception"
        assert await viewer.stop() == 200
        async with http.delete(stoa_server.base + location, headers=bearer(stoa_server, "big")) as r:
            assert r.status == 200
        await pc.close()
    await wait_no_peers(stoa_server)


async def test_srtp_datagrams_too_large_to_unprotect_are_dropped_not_fatal(stoa_server, http):
    """3000-byte payloads exceed even the widened receive buffer: counted, skipped, transport up."""
    with rtp_payload_limit(3000):
        pc, location = await oversized_publisher(stoa_server, http)
        room = stoa_server.app[ROOMS].rooms[ROOM]
        participant = room.participants["big"]
        await wait_until(lambda: srtp_oversize(participant.publisher.pc)["dropped"] > 3, 15,
                         "oversize datagrams to be dropped")
        assert srtp_oversize(participant.publisher.pc)["largest"] > MAX_RTP_PACKET + 144
        audio = next(t for t in room.tracks() if t.kind == "audio")
        before = audio.packets_received
        await wait_until(lambda: audio.packets_received > before + 25, 10, "audio after the drops")
        assert participant.publisher.pc.connectionState == "connected"
        async with http.delete(stoa_server.base + location, headers=bearer(stoa_server, "big")) as r:
            assert r.status == 200
        await pc.close()
    await wait_no_peers(stoa_server)
