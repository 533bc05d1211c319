"""Simulcast from Chromium (sfu/simulcast.py, docs/simulcast.md): the room page sends its camera as three
rid layers, the server receives all three, and each viewer decodes the layer that fits the size its page
renders the video at, switching without a freeze. Every media assertion reads decoded frames."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.browser import inbound, render_remote_video_at, screenshot, wait_js
from tests.test_browser_bandwidth import eventually
from tests.test_browser_room import ROOM, teacher_and_student

pytestmark = pytest.mark.browser

# The fake camera is 1280x720; the page sends it at a quarter, half and full size.
WIDTHS = {"q": 320, "h": 640, "f": 1280}


async def camera_stats(page) -> dict:
    """The student's inbound camera video: frameWidth, framesDecoded, freezeCount, ... ({} before)."""
    entries = await inbound(page, "video")
    return entries[0] if entries else {}


async def width_reaches(page, width: int, timeout: float) -> dict:
    async def check():
        s = await camera_stats(page)
        return s.get("frameWidth") == width and s.get("framesDecoded", 0) > 0 and s
    return await eventually(check, timeout, f"the student decodes the camera at {width} wide")


async def test_chromium_simulcast_follows_the_viewers_render_size(stoa_server, chromium, artifacts_dir):
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-camera")
    await wait_js(student, "document.querySelector('figure.tile[data-track-id] video')", timeout=20)

    # The publisher sends three layers, each at its own size.
    async def three_layers():
        got = await teacher.evaluate("""async () => {
            const out = {};
            (await window.stoa.state.pub.getStats()).forEach((s) => {
              if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid)
                out[s.rid] = [s.frameWidth || 0, s.framesEncoded || 0]; });
            return out; }""")
        return len(got) == 3 and all(v[1] > 0 for v in got.values()) and got
    sent = await eventually(three_layers, 15, "the teacher encodes three layers")
    assert {rid: v[0] for rid, v in sent.items()} == WIDTHS, sent
    answer = await teacher.evaluate("window.stoa.state.pub.remoteDescription.sdp")
    assert "a=simulcast:recv q;h;f" in answer and "rtp-stream-id" in answer

    room = stoa_server.app[ROOMS].rooms[ROOM]
    track = next(t for t in room.tracks() if t.kind == "video")
    assert [layer.rid for layer in track.layers] == ["q", "h", "f"]

    # A large video on a wide link: the full layer.
    await render_remote_video_at(student, 1280, 720)
    full = await width_reaches(student, 1280, 15)
    assert all(layer.packets_received > 0 for layer in track.layers), track.stats()
    await screenshot(student, artifacts_dir, "simulcast-student-full")

    # The page now renders it small: the low layer, without a freeze, on the same stream.
    await render_remote_video_at(student, 160, 90)
    started = time.monotonic()
    small = await width_reaches(student, 320, 5)
    took = time.monotonic() - started
    await asyncio.sleep(2)
    after = await camera_stats(student)
    assert after["framesDecoded"] > small["framesDecoded"] > full["framesDecoded"], "it kept decoding"
    assert after.get("freezeCount", 0) == full.get("freezeCount", 0), (full, after)
    assert after["frameWidth"] == 320
    leg = room.participants["stud"].subscriber.downtrack(track.track_id)
    assert leg.uptrack.rid == "q" and leg.layer_choice.switches >= 3, leg.stats()
    assert track.stats()["probes_dropped"] >= 0
    await screenshot(student, artifacts_dir, "simulcast-student-small")
    print(f"down-switch decoded {took:.2f} s after the resize; stats {track.stats()}")
    assert not chromium.errors(), chromium.errors()
