"""The room page with several nodes: opened on a node that is not the room's home, it is sent to the home
(HTTP 307) and decodes the teacher there; when that node drains (SIGTERM), the page follows the `redirect`
message to the room's new home by itself."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.browser import screenshot, wait_frames_decoded, wait_js
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.test_cluster import node, redis_client  # noqa: F401 (fixture)
from tests.test_whip_whep import WhipPublisher

pytestmark = [pytest.mark.browser, pytest.mark.slow]
JOINED = "window.stoa && window.stoa.state.participants.size > 0"  # the page got `joined` (not a caption)


async def test_the_page_goes_to_the_rooms_home_and_moves_when_it_drains(
        tmp_path, redis_url, redis_prefix, redis_client, chromium, artifacts_dir):  # noqa: F811
    room = "geology"
    a, b = node(tmp_path, "a", redis_url, redis_prefix), node(tmp_path, "b", redis_url, redis_prefix)
    teacher = None
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.wait_up(http), b.wait_up(http))
            teacher = await WhipPublisher(http, a.base, room, a.token(room, "teacher", "instructor")).publish(
                CounterVideoTrack(), ToneAudioTrack())
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "a"

            page = await chromium.page(f"{b.base}/rooms/{room}?token={b.token(room, 'ada', 'student')}")
            await wait_js(page, JOINED, timeout=15)
            assert page.url.startswith(f"{a.base}/rooms/{room}?token="), page.url
            await wait_frames_decoded(page, minimum=10, timeout=20)
            await screenshot(page, artifacts_dir, "cluster-page-on-home")

            a.proc.send_signal(signal.SIGTERM)  # drain: the room moves to b, and the page with it
            await page.wait_for_url(f"{b.base}/rooms/{room}?token=*", timeout=15_000)
            await wait_js(page, JOINED, timeout=15)
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "b"
            await screenshot(page, artifacts_dir, "cluster-page-after-drain")
    finally:
        if teacher is not None:
            await teacher.pc.close()
        a.stop()
        b.stop()
