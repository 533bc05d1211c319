"""Transport-cc feedback from a Chromium viewer (setting downlink_transport_cc, docs/simulcast.md): the probe
padding Stoa sends the student carries the transport-wide sequence number, Chromium reports each packet's
arrival, and the server pairs the reports with what it sent, while the student keeps decoding the camera.

The setup is tests/test_browser_simulcast.py's: the teacher publishes three layers, the student is in a network
namespace whose link is narrowed to 300 kbit/s, so its leg steps down and the allocator probes for the layer
above. In-process and with `workers = 2` (the student's subscriber and its allocator on a media worker).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.config import load_settings
from tests.browser import inbound
from tests.test_browser_ice_drop import browser_args  # noqa: F401
from tests.test_browser_room import ROOM
from tests.test_browser_simulcast import (NARROW, RESIZE_JS, browser_netns, decodes, on_worker,  # noqa: F401
                                          publishing_three_layers, shape)
from tests.serve import eventually

pytestmark = pytest.mark.browser
IN_PROCESS_AND_WORKERS = pytest.mark.parametrize("server_settings", [0, 2], indirect=True,
                                                 ids=["in-process", "workers"])


@pytest.fixture
def server_settings(tmp_path, browser_netns, request):
    return load_settings(environ={}, overrides={
        "dev": True, "host": browser_netns.host_address, "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", browser_netns.host_address], "overload_control": False,
        "workers": getattr(request, "param", 0), "downlink_transport_cc": True})


def twcc_stats(stoa_server) -> dict:
    """The student's transport-cc counters (sfu/subscriber.py), from its worker when it is on one."""
    from signaling.room import ROOMS
    from sfu.pool import RemoteRoomSubscriber

    sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
    if isinstance(sub, RemoteRoomSubscriber):
        return sub.link.stats.get("sessions", {}).get(sub.session_id, {}).get("twcc", {})
    return sub.twcc_stats


async def frames_decoded(student) -> int:
    return max((s.get("framesDecoded", 0) for s in await inbound(student)), default=0)


async def decoded_more(student, than: int) -> bool:
    return await frames_decoded(student) > than


@IN_PROCESS_AND_WORKERS
async def test_a_chromium_viewers_feedback_on_probe_padding_reaches_the_server(stoa_server, chromium, browser_netns):
    from signaling.room import ROOMS

    teacher, student, track = await publishing_three_layers(stoa_server, chromium)
    # With transport-cc the leg starts low and is probed for at once (sfu/allocator.py), so feedback comes
    # on the wide link already.
    await eventually(lambda: twcc_stats(stoa_server).get("feedback", 0) > 0, 15,
                     "feedback from the student on the first probe", interval=0.5)
    shape(browser_netns, NARROW)
    started = time.monotonic()
    # Behind 300 kbit/s the leg steps down and is capped; the allocator then probes with numbered padding.
    await decodes(student, 320, 15, "the low layer behind 300 kbit/s")
    stats = await eventually(lambda: (s := twcc_stats(stoa_server)).get("probe_received", 0) >= 20 and s, 45,
                             "feedback from the student on 20 probe padding packets", interval=0.5)
    assert stats["bad_feedback"] == 0 and stats["feedback"] > 0 and stats["results"] >= stats["received"]
    if on_worker(stoa_server) is None:
        sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
        assert sub.allocator.transport_cc
        assert sub.twcc.packets_sent >= stats["probe_received"]
    else:
        leg = on_worker(stoa_server)
        assert leg.get("padding_sent", 0) >= stats["probe_received"]
    # The student still decodes the camera (on whichever layer the link allows).
    first = await frames_decoded(student)
    await eventually(lambda: decoded_more(student, first + 20), 15, "the student keeps decoding the camera",
                     interval=0.5)
    print(f"feedback on {stats['probe_received']} padding packets {time.monotonic() - started:.1f} s after "
          f"the narrowing: {stats}")
    assert not chromium.errors(), chromium.errors()


async def probe_delays(leg, results: list, rate: float, seconds: float = 1.5) -> tuple[list[float], int]:
    """Padding at `rate` on `leg` by hand for `seconds`; from the feedback on it: each received packet's
    extra delay in ms (arrival - sent, less the smallest: the two clocks are unrelated), and the number lost."""
    from sfu.probe import PaddingSender

    results.clear()
    padding = PaddingSender(leg, rate)
    try:
        await asyncio.sleep(seconds)
    finally:
        padding.stop()
    await eventually(lambda: results, 5, "feedback on the padding", interval=0.1)
    await asyncio.sleep(1.0)  # the last packets out of the tbf's queue (400 ms at most), and their feedback
    unique = {r.seq: r for r in results if r.arrival is not None}
    lost = len({r.seq for r in results}) - len(unique)
    delays = [r.arrival - r.sent for r in sorted(unique.values(), key=lambda r: r.seq)]
    return [(d - min(delays)) * 1000 for d in delays], lost


async def test_the_feedback_shows_the_queue_of_a_probe_the_link_cannot_carry(stoa_server, chromium, browser_netns):
    """What the allocator's probe verdict reads (in-process: the padding is started by hand): on a 600 kbit/s
    link with the low layer (~150 kbit/s) flowing, padding at 200 kbit/s arrives without queueing, padding at
    1.2 Mbit/s builds a queue of a few hundred ms (measured: 620 ms, the tbf's 400 ms and more; docs/simulcast.md)."""
    from signaling.room import ROOMS

    teacher, student, track = await publishing_three_layers(stoa_server, chromium)
    await student.evaluate(RESIZE_JS, [240, 135])  # the tile, not the link, holds the leg on q: no probes of its own
    await decodes(student, 320, 10, "the low layer in a 240 px tile")
    sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
    leg = sub.downtrack(track.track_id)
    results: list = []
    sub.allocator.on_transport_feedback = lambda batch, now: results.extend(batch)
    shape(browser_netns, ("rate", "600kbit", "burst", "16kb", "latency", "400ms"))
    await asyncio.sleep(2)
    fits, fits_lost = await probe_delays(leg, results, 200_000)
    await asyncio.sleep(3)  # the queue drains
    too_much, _ = await probe_delays(leg, results, 1_200_000)
    print(f"extra delay: {len(fits)} packets at 200 kbit/s, max {max(fits):.0f} ms, {fits_lost} lost; "
          f"{len(too_much)} at 1.2 Mbit/s, max {max(too_much):.0f} ms")
    assert len(fits) > 70 and fits_lost <= 2 and max(fits) < 50, (len(fits), fits_lost, max(fits))
    assert max(too_much) > 200, max(too_much)
    first = await frames_decoded(student)
    await eventually(lambda: decoded_more(student, first + 20), 15, "the student keeps decoding the camera",
                     interval=0.5)
    assert not chromium.errors(), chromium.errors()
