"""Bandwidth toward a Chromium publisher: transport-cc is answered, and a screen share does not shrink the
camera (sfu/congestion.py, docs/forwarding.md). Every media assertion reads decoded frames at a viewer."""

from __future__ import annotations

import asyncio

import pytest

from shared.config import load_settings
from tests.browser import inbound, wait_js
from tests.serve import eventually
from tests.test_browser_room import ROOM, teacher_and_student

pytestmark = pytest.mark.browser


@pytest.fixture
def server_settings(tmp_path):
    # The camera as one stream: what is measured here is the publisher's own estimate. With simulcast
    # the student's camera tile, small beside the share, gets the low layer (tests/test_browser_simulcast.py
    # checks the publisher keeps its top layer full size while sharing).
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "ice_addresses": ["127.0.0.1"],
        "data_dir": str(tmp_path / "data"), "overload_control": False, "simulcast": False,
    })

# The student's decoded video, by source: {source: (frameWidth, framesDecoded)}.
async def decoded_by_source(page) -> dict[str, tuple[int, int]]:
    info = await page.evaluate("Object.fromEntries([...window.stoa.state.trackInfo].map(([m, t]) => [m, t.source]))")
    return {info.get(s.get("mid"), s.get("mid")): (s.get("frameWidth", 0), s.get("framesDecoded", 0))
            for s in await inbound(page, "video")}


async def test_camera_keeps_its_resolution_when_a_share_starts(stoa_server, chromium):
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-camera")
    width = await wait_js(teacher, "window.stoa.state.camera && window.stoa.state.camera.getVideoTracks()[0]"
                                   ".getSettings().width", timeout=15)
    assert width == 1280, "the room page asks for a 720p camera"

    async def camera_full():
        got = await decoded_by_source(student)
        return got.get("camera", (0, 0))[0] == width and got

    await eventually(camera_full, 30, "the student decodes the camera at 1280 wide", interval=0.25)
    await teacher.click("#btn-screen")
    hint = await wait_js(teacher, "window.stoa.state.screen && window.stoa.state.screen.getVideoTracks()[0].contentHint")
    assert hint == "detail"

    async def screen_decoding():
        got = await decoded_by_source(student)
        return got.get("screen", (0, 0))[1] > 10 and got

    await eventually(screen_decoding, 30, "the student decodes the screen share", interval=0.25)
    # From here on both are sent at once; the camera must not fall back to a fraction of its size (the
    # issue saw 320x240). Chromium may step it down one notch (1280 -> 960) for a moment when this 2-core
    # box is loaded; the full-size figures are bench/browser_publish.py's (docs/benchmarks.md).
    widths, frames = [], []
    for _ in range(20):
        got = await decoded_by_source(student)
        widths.append(got["camera"][0])
        frames.append(got["camera"][1])
        await asyncio.sleep(0.4)
    sender = await teacher.evaluate("""async () => {
        const out = [];
        (await window.stoa.state.pub.getStats()).forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'video')
            out.push([s.mid, s.frameWidth, s.qualityLimitationReason, s.qualityLimitationDurations]); });
        return out; }""")
    assert min(widths) >= width * 3 // 4, (f"camera frame widths at the student after the share started: {widths}; "
                                  f"the teacher's video senders (mid, width, limitation, durations): {sender}")
    assert frames[-1] > frames[0], "the camera kept decoding"
    screen_width = (await decoded_by_source(student))["screen"][0]
    screen_settings = await teacher.evaluate("window.stoa.state.screen.getVideoTracks()[0].getSettings().width")
    assert screen_width == screen_settings, "the screen is decoded at the size it is captured"

    # What let it: the publisher's estimate comes from our transport-cc feedback.
    pub = stoa_server.app[ROOMS].rooms[ROOM].participants["teach"].publisher
    assert pub.transport_cc and pub.transport_cc[0].feedback_sent > 0
    answer = await teacher.evaluate("window.stoa.state.pub.remoteDescription.sdp")
    assert "transport-wide-cc" in answer and "transport-cc" in answer and "x-google-start-bitrate" in answer
    estimate = await teacher.evaluate("""async () => {
        let v = 0;
        (await window.stoa.state.pub.getStats()).forEach((s) => {
          if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate) v = s.availableOutgoingBitrate; });
        return v; }""")
    # Not a speed figure: Chromium's estimate falls when this shared box is loaded (0.8 Mbps was seen), but
    # without our feedback it would stay at its floor; a 720p camera needs about 0.5 Mbps.
    assert estimate >= 500_000, f"the publisher's estimate is {estimate} bps"
    assert not chromium.errors(), chromium.errors()
