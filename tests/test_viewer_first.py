"""A viewer in the room before anyone publishes: the cameras come by renegotiation, two of them in one offer
(the case aiortc left the second on a stopped transport, so both videos stopped decoding: rebundle_orphans),
and every video keeps decoding its own publisher's frames."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser import inbound, screenshot, wait_js
from tests.client import RoomClient
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import eventually
from tests.test_lastn import frames_by_publisher

FIRST = {"p1": 1000, "p2": 2000, "p3": 3000}  # each camera's first counter: whose frames a video shows


async def publish_three(stoa_server, room: str, publishers: dict[str, RoomClient], p1_screen: bool = False) -> None:
    """p1 and p2 publish at once (both usually land in the viewer's next offer), then p3. With `p1_screen`, p1
    shares a screen too and publishes first: two new videos in one offer for sure."""
    async def publish(name: str) -> None:
        client = await RoomClient(stoa_server.ws_base, room,
                                  stoa_server.token(room, name, "student", can_publish=True)).connect()
        publishers[name] = client
        tracks, sources = [CounterVideoTrack(fps=10, first=FIRST[name]), ToneAudioTrack()], ["camera", "microphone"]
        if name == "p1" and p1_screen:
            tracks, sources = [*tracks, CounterVideoTrack(fps=10, first=FIRST[name] + 500)], [*sources, "screen"]
        reply = await client.publish(*tracks, sources=sources)
        assert reply["type"] == "answer", reply
    if p1_screen:
        await publish("p1")
        await publish("p2")
    else:
        await asyncio.gather(publish("p1"), publish("p2"))
    await publish("p3")


async def test_a_viewer_who_joined_first_decodes_three_cameras_added_by_renegotiation(stoa_server):
    room = "viewer-first"
    viewer = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "viewer", "viewer")).connect()
    publishers: dict[str, RoomClient] = {}
    try:
        await publish_three(stoa_server, room, publishers)
        await eventually(lambda: len(frames_by_publisher(viewer)) == 3, 15, "three videos at the viewer")
        await eventually(lambda: all(f > 5 for f in frames_by_publisher(viewer).values()), 15, "all three decode")
        for _ in range(2):  # and keep decoding (a stalled video decodes none; a loaded machine, fewer)
            before = frames_by_publisher(viewer)
            await asyncio.sleep(1.5)
            after = frames_by_publisher(viewer)
            assert all(after[p] > before[p] for p in FIRST), (before, after)
        for transceiver in viewer.sub.getTransceivers():
            info = viewer.track_info.get(transceiver.mid)
            if info and info["kind"] == "video":
                collector = next(c for c in viewer.collectors if c.track is transceiver.receiver.track)
                first = FIRST[info["participant"]]
                assert all(first <= n < first + 1000 for n in collector.counters), (info, collector.counters[-5:])
    finally:
        for client in (viewer, *publishers.values()):
            await client.close()


@pytest.mark.browser
async def test_a_room_page_viewer_who_joined_first_decodes_every_video(stoa_server, chromium, artifacts_dir):
    room = "viewer-first-page"
    page = await chromium.page(f"{stoa_server.base}/rooms/{room}?token={stoa_server.token(room, 'viewer', 'viewer')}",
                               label="viewer")
    await wait_js(page, "window.stoa && window.stoa.state.sub && window.stoa.state.sub.connectionState === 'connected'",
                  timeout=15)
    publishers: dict[str, RoomClient] = {}
    try:
        await publish_three(stoa_server, room, publishers, p1_screen=True)

        async def decoded() -> dict[str, int]:  # framesDecoded per video track of the page
            return {e["trackIdentifier"]: e.get("framesDecoded", 0) for e in await inbound(page)}

        async def all_decode():
            now = await decoded()
            return len(now) == 4 and all(n > 5 for n in now.values()) and now
        before = await eventually(all_decode, 20, "four videos (p1's camera and screen) decoding in the page")
        await asyncio.sleep(2)
        after = await decoded()
        assert all(after[t] > before[t] for t in before), (before, after)
        await screenshot(page, artifacts_dir, "viewer-first-every-video")
        assert not chromium.errors(), chromium.errors()
    finally:
        for client in publishers.values():
            await client.close()
