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
