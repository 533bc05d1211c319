"""A viewer in the room before anyone publishes: the cameras come by renegotiation, two of them in one offer
(the case aiortc left the second on a stopped transport, so both videos stopped decoding: rebundle_orphans),
and every video keeps decoding its own publisher's frames."""

from __future__ import annotations

import asyncio

from tests.client import RoomClient
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import eventually
from tests.test_lastn import frames_by_publisher

FIRST = {"p1": 1000, "p2": 2000, "p3": 3000}  # each camera's first counter: whose frames a video shows


async def test_a_viewer_who_joined_first_decodes_three_cameras_added_by_renegotiation(stoa_server):
    room = "viewer-first"
    viewer = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "viewer", "viewer")).connect()
    publishers: dict[str, RoomClient] = {}

    async def publish(name: str) -> None:
        client = await RoomClient(stoa_server.ws_base, room,
                                  stoa_server.token(room, name, "student", can_publish=True)).connect()
        publishers[name] = client
        reply = await client.publish(CounterVideoTrack(fps=10, first=FIRST[name]), ToneAudioTrack(),
                                     sources=["camera", "microphone"])
        assert reply["type"] == "answer", reply

    try:
        await asyncio.gather(publish("p1"), publish("p2"))  # both usually land in the viewer's second offer
        await publish("p3")
        await eventually(lambda: len(frames_by_publisher(viewer)) == 3, 15, "three videos at the viewer")
        await eventually(lambda: all(f > 5 for f in frames_by_publisher(viewer).values()), 15, "all three decode")
        for _ in range(2):  # and keep decoding
            before = frames_by_publisher(viewer)
            await asyncio.sleep(1.5)
            after = frames_by_publisher(viewer)
            assert all(after[p] >= before[p] + 5 for p in FIRST), (before, after)
        for transceiver in viewer.sub.getTransceivers():
            info = viewer.track_info.get(transceiver.mid)
            if info and info["kind"] == "video":
                collector = next(c for c in viewer.collectors if c.track is transceiver.receiver.track)
                first = FIRST[info["participant"]]
                assert all(first <= n < first + 1000 for n in collector.counters), (info, collector.counters[-5:])
    finally:
        for client in (viewer, *publishers.values()):
            await client.close()
