"""Chromium publishes its camera as three layers; three aiortc viewers behind different links each decode
the layer that fits: one behind 300 kbit/s, one behind 600 kbit/s (network namespaces, veth, tbf), one on
loopback. Then the 600 kbit/s link narrows to 300 kbit/s and widens again: its viewer steps down (and
whether it comes back up is printed). Widths are read from decoded frames; a freeze is the longest wait
between two decoded frames."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from shared.config import load_settings
from tests.browser import wait_js
from tests.client import RoomClient
from tests.netns import ShapedLink, unavailable
from tests.test_slow_viewer import Child, RelayedClient

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOM = "simulcast"
Q, H, F = 320, 640, 1280  # the page's layers of the 1280x720 fake camera
# The fake camera's layers run at about 150, 360 and 700-1000 kbit/s (docs/simulcast.md): 300 kbit/s
# carries only q, 600 kbit/s h but not f, and a 1 Mbit/s link sometimes carries f, so it would not tell.
MID = "600kbit"


@pytest.fixture
def links():
    reason = unavailable()
    if reason:
        pytest.skip(f"needs shaped links in network namespaces: {reason}")
    with ShapedLink(rate="300kbit") as slow, ShapedLink(rate=MID) as mid:
        yield slow, mid


@pytest.fixture
def server_settings(tmp_path, links):
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", *(link.host_address for link in links)],
    })


async def test_each_viewer_gets_the_layer_its_link_carries(stoa_server, chromium, links):
    from signaling.room import ROOMS

    slow_link, mid_link = links
    py = sys.executable
    children: list[Child] = []
    clients: list[RoomClient] = []
    try:
        viewers = {}
        for name, link in (("slow", slow_link), ("mid", mid_link)):
            child = await Child.start(*link.exec_prefix(), py, "-m", "tests.netns_viewer", link.peer_address)
            children.append(child)
            client = await RelayedClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, name, "student"),
                                         viewer=child).connect()
            clients.append(client)
            viewers[name] = child
        fast = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "fast", "student")).connect()
        clients.append(fast)

        teacher = await chromium.page(
            f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'teach', 'instructor')}",
            label="instructor")
        await wait_js(teacher, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1")
        await teacher.click("#btn-camera")
        collector = await fast.wait_track("video", timeout=20)
        await collector.wait_frames(1, timeout=20)
        room = stoa_server.app[ROOMS].rooms[ROOM]
        track = next(t for t in room.tracks() if t.kind == "video")

        def leg(name):
            return room.participants[name].subscriber.downtrack(track.track_id)

        async def sample() -> dict:
            out = {"t": round(time.monotonic() - start, 1)}
            for name, child in viewers.items():
                stats = await child.ask({"cmd": "stats"})
                out[name] = (stats["video_width"], stats["video_frames"], round(stats["max_gap"], 2),
                             leg(name).uptrack.rid, leg(name).remb and int(leg(name).remb),
                             round(leg(name).quality.loss, 2))
            out["fast"] = (collector.size[0] if collector.size else 0, collector.frames,
                           round(collector.max_gap, 2), leg("fast").uptrack.rid)
            collector.reset_gap()
            return out

        start = time.monotonic()
        timeline: list[dict] = []

        async def run(seconds: float) -> list[dict]:
            rows = []
            for _ in range(int(seconds * 2)):
                await asyncio.sleep(0.5)
                rows.append(await sample())
            timeline.extend(rows)
            return rows

        def width(row, name):
            return row[name][0]

        def show():
            return "\n".join(map(str, timeline)) + f"\n{track.stats()}"

        try:
            first = await run(10)
            # Within 10 s each viewer's leg is on the layer its link carries, and it decodes that size.
            for name, expected, rid in (("slow", Q, "q"), ("mid", H, "h"), ("fast", F, "f")):
                assert any(width(r, name) == expected for r in first), f"{name} never decoded {expected}\n{show()}"
                assert width(first[-1], name) == expected, f"{name} ends on {width(first[-1], name)}\n{show()}"
                assert first[-1][name][3] == rid, f"{name}'s leg ends on {first[-1][name][3]}\n{show()}"
            # On loopback, switching up never froze the picture (the longest wait between two frames).
            assert max(r["fast"][2] for r in first) < 0.5, show()
            assert first[-1]["fast"][1] - first[0]["fast"][1] > 100, "the loopback viewer kept decoding"

            # The 600 kbit/s link narrows to 300 kbit/s: its leg steps down (measured: 3 to 5 s, the loss
            # windows and the settling after a failed probe).
            mid_link.set_rate("300kbit")
            narrow = await run(8)
            assert any(r["mid"][3] == "q" for r in narrow[:12]), f"mid did not step down within 6 s\n{show()}"
            # ... and widens again. Whether it comes back up within 15 s is printed, not asserted: behind a
            # link that dropped a burst, an aiortc viewer's jitter buffer can wait many seconds for packets
            # that will not come (docs/simulcast.md).
            mid_link.set_rate(MID)
            wide = await run(15)
            back = next((r["t"] for r in wide if r["mid"][3] == "h"), None)
            print(f"mid back on h {back} s into the run (the link widened at {wide[0]['t'] - 0.5} s)")
        finally:
            print(show())
            print({name: leg(name).stats() for name in ("slow", "mid", "fast")})
    finally:
        for client in clients:
            await client.close()
        for child in children:
            await child.stop()
