"""Transport-cc toward viewers (setting downlink_transport_cc, docs/simulcast.md) with a viewer that sends no
feedback: an aiortc viewer gets numbered probe padding and keeps decoding, and nothing is judged by feedback."""

from __future__ import annotations

import asyncio

import pytest

from signaling.room import ROOMS
from tests.client import RoomClient
from tests.media import CounterVideoTrack
from tests.serve import eventually


@pytest.fixture
def server_settings(server_settings):
    server_settings.downlink_transport_cc = True
    return server_settings


def frames(viewer: RoomClient) -> int:
    return sum(c.frames for c in viewer.collectors if c.track.kind == "video")


async def test_an_aiortc_viewer_gets_numbered_padding_and_keeps_decoding(stoa_server):
    from sfu.probe import PaddingSender

    room = "twcc"
    publisher = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "pub", "instructor")).connect()
    viewer = None
    padding = None
    try:
        reply = await publisher.publish(CounterVideoTrack(fps=15), sources=["camera"])
        assert reply["type"] == "answer", reply
        viewer = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "viewer", "viewer")).connect()
        await eventually(lambda: frames(viewer) > 10, 15, "the viewer decodes the camera")
        sub = stoa_server.app[ROOMS].rooms[room].participants["viewer"].subscriber
        leg = next(d for _, d in sub.legs if d.kind == "video" and d.uptrack is not None)
        assert sub.twcc is not None and leg.twcc is sub.twcc
        await eventually(leg.can_pad, 5, "the leg can carry padding (RTX negotiated)")
        padding = PaddingSender(leg, 200_000)
        before = frames(viewer)
        await asyncio.sleep(3)
        padding.stop()
        assert leg.padding_sent > 50 and sub.twcc.packets_sent == leg.padding_sent
        assert frames(viewer) >= before + 20, "the camera keeps decoding while numbered padding flows"
        # aiortc sends no transport-cc feedback: the allocator stays on REMB and receiver reports.
        assert sub.twcc_stats["feedback"] == 0 and not getattr(sub.allocator, "transport_cc", False)
    finally:
        if padding is not None:
            padding.stop()
        for client in (viewer, publisher):
            if client is not None:
                await client.close()


@pytest.mark.unit
async def test_a_probe_ended_by_a_congestion_signal_stops_its_padding():
    """A REMB that signals congestion ends the running probe inside the allocator; the subscriber must still
    stop that probe's padding (it read the probe after the allocator had ended it, and the padding ran on
    until the viewer left: 248 kbit/s of it on a 300 kbit/s link, in tests/test_browser_twcc.py)."""
    from sfu.peer import IceSettings, PeerFactory
    from sfu.subscriber import Subscriber

    class Padding:
        sent = bytes = 0
        stopped = False

        def stop(self):
            self.stopped = True

    async def no_offer(sdp, tracks):
        pass

    sub = Subscriber("v", PeerFactory(IceSettings()), no_offer, data_channel_label=None)
    try:
        sub._on_remb(1_000_000)
        probe = sub.allocator.prober.start(object(), 1_500_000, 1_000_000, 1_000_000, 0.0)
        assert probe is not None
        padding = sub._padding = Padding()
        sub._probe_padding = 1_000_000
        sub._on_remb(500_000)  # fell, and under what is sent (the padding): congestion
        assert sub.allocator.congestion_events == 1 and sub.allocator.prober.probe is None
        assert padding.stopped and sub._padding is None
    finally:
        await sub.close()
