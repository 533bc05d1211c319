"""A simulcast screen share from the room page (`screen_simulcast`, docs/simulcast.md), with the camera on
too: each student decodes the screen layer its tile calls for, share cycles keep decoding, and a screen
layer the publisher stops sending without a word (the page sets it inactive behind the server's back, as
Chromium does on its own when it drops a layer) costs the student a switch to a layer that flows, not
its video. Real headless Chromium; every media assertion reads decoded frames (getStats)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.browser import wait_js
from tests.test_browser_media import CAMERA_WIDTH, frames_advance, open_page

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("server_settings", [0, 2], indirect=True,
                                                            ids=["in-process", "workers"])]

SCREEN = {"q": 480, "h": 960, "f": 1920}  # the fake screen is 1920x1080; the layers 1/4, 1/2 and full size

# The screen's tile at a fixed size on a student's page (a stylesheet: the tile is made again each share).
SCREEN_TILE_JS = """(size) => { let s = document.getElementById('test-screen-size');
    if (!s) { s = document.createElement('style'); s.id = 'test-screen-size'; document.head.append(s); }
    s.textContent = `#tile-teach-screen video { width: ${size[0]}px !important; height: ${size[1]}px !important;
      max-width: none !important; max-height: none !important; }`; }"""

# The screen's inbound video at a student: {width, frames} of the section the screen arrives on.
SCREEN_IN_JS = """async () => { let out = null;
    const pc = window.stoa.state.sub;
    const receiving = new Set(pc.getTransceivers().filter((t) => t.currentDirection === 'recvonly').map((t) => t.mid));
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video' || !receiving.has(s.mid)) return;
      const info = window.stoa.state.trackInfo.get(s.mid);
      if (info && info.source === 'screen')
        out = {width: s.frameWidth || 0, frames: s.framesDecoded || 0, mid: s.mid,
               tile: document.getElementById('tile-teach-screen')?.querySelector('video')?.clientWidth}; });
    return out; }"""

TILES_JS = """[...document.querySelectorAll('.tile')].map((t) => `${t.id} ${t.dataset.trackId} ${t.querySelector('video')?.clientWidth}`)"""

OUTBOUND_JS = """async () => { const out = {};
    for (const tr of window.stoa.state.pub.getTransceivers()) {
      if (!tr.sender.track || tr.sender.track.kind !== 'video') continue;
      const source = tr.sender.track === window.stoa.state.screen?.getVideoTracks()[0] ? 'screen' : 'camera';
      (await tr.sender.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.rid) out[`${source}.${s.rid}`] = {width: s.frameWidth || 0,
          frames: s.framesEncoded || 0, active: s.active}; }); }
    return out; }"""

# Stop one of the screen's encodings at the page, without telling the server.
STOP_SCREEN_LAYER_JS = """async (rid) => {
    const track = window.stoa.state.screen.getVideoTracks()[0];
    const sender = window.stoa.state.pub.getSenders().find((s) => s.track === track);
    const params = sender.getParameters();
    for (const enc of params.encodings) if (enc.rid === rid) enc.active = false;
    await sender.setParameters(params); }"""


@pytest.fixture
def server_settings(server_settings, request):
    server_settings.screen_simulcast = True
    server_settings.workers = request.param
    return server_settings


async def screen_decodes(page, width: int, timeout: float, what: str, more: int = 5) -> dict:
    """The student decodes the screen `width` wide, and `more` frames more after that."""
    deadline = time.monotonic() + timeout
    first = None
    last = None
    while time.monotonic() < deadline:
        last = await page.evaluate(SCREEN_IN_JS)
        if last and last["width"] == width and last["frames"] > 0:
            if first is None:
                first = last["frames"]
            elif last["frames"] >= first + more:
                return last
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what}: the screen not decoded {width} wide within {timeout} s (last {last})")


def screen_layers(stoa_server) -> list:
    """(rid, packets, keyframes, liveness) of the screen's layers at the server: for failure messages."""
    from signaling.room import ROOMS

    room = stoa_server.app[ROOMS].rooms.get("lesson")
    now = time.monotonic()
    return [[(rid, layer.packets_received, layer.keyframes_received, layer.liveness.state(now))
             for rid, layer in zip(t.rids, t.layers)] for t in (room.tracks() if room else []) if t.layers]


async def sharing(stoa_server, chromium, sizes: list[tuple[int, int]]):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    students = [await open_page(stoa_server, chromium, f"stud{i}", "student") for i in range(len(sizes))]
    for student, size in zip(students, sizes):
        await student.evaluate(SCREEN_TILE_JS, list(size))
    await teacher.click("#btn-camera")
    for student in students:
        await frames_advance(student, CAMERA_WIDTH)
    await teacher.click("#btn-screen")
    await wait_js(teacher, "[...window.stoa.state.ownTracks.values()].some(t => t.source === 'screen')", timeout=20)
    return teacher, students


# Not strict: the top layer comes when Chromium's send-side estimate lets it, which on the loaded test machine
# was sometimes later than 40 s after a share started with the camera on (docs/simulcast.md, *Not done*).
RAMP = pytest.mark.xfail(reason="Chromium may hold the screen's top layer off for 40 s and more", strict=False)


@RAMP
async def test_a_small_screen_tile_decodes_the_low_layer_and_a_large_one_the_top(stoa_server, chromium):
    teacher, (small, large) = await sharing(stoa_server, chromium, [(400, 225), (1920, 1080)])
    try:
        await screen_decodes(small, SCREEN["q"], 25, "a 400 px tile")
        await screen_decodes(large, SCREEN["f"], 40, "a 1920 px tile")
    finally:
        print("server:", screen_layers(stoa_server), "\npublisher:", await teacher.evaluate(OUTBOUND_JS))
    out = await teacher.evaluate(OUTBOUND_JS)
    assert {"screen.q", "screen.h", "screen.f", "camera.q", "camera.h", "camera.f"} <= out.keys(), out
    # Dynacast names the track: the camera's top layer (small tiles only) is paused at the page while the
    # screen's, which the large tile takes, runs (a `layers` for the camera used to set every section).
    deadline = time.monotonic() + 20
    while not (out["screen.f"]["active"] and not out["camera.f"]["active"]):
        assert time.monotonic() < deadline, f"camera.f still active or screen.f paused: {out}"
        await asyncio.sleep(0.5)
        out = await teacher.evaluate(OUTBOUND_JS)
    await screen_decodes(large, SCREEN["f"], 10, "the top layer while the camera's is paused")
    for student in (small, large):
        await frames_advance(student, CAMERA_WIDTH)  # the camera, in its own layers, still decodes
    assert not chromium.errors(), chromium.errors()


async def test_a_screen_layer_the_page_stops_sending_makes_the_leg_fall_back_and_keep_decoding(
        stoa_server, chromium):
    teacher, (student,) = await sharing(stoa_server, chromium, [(1920, 1080)])
    await screen_decodes(student, SCREEN["f"], 40, "a 1920 px tile")
    await teacher.evaluate(STOP_SCREEN_LAYER_JS, "f")
    await screen_decodes(student, SCREEN["h"], 10, "the top layer stopped at the page", more=10)
    # Nobody is left on f, so dynacast pauses it, then resumes it for the tile that wants it: the page
    # sets it active again, and the student is back on the top layer.
    await screen_decodes(student, SCREEN["f"], 30, "the top layer resumed by dynacast")
    assert not chromium.errors(), chromium.errors()


@RAMP
async def test_share_cycles_with_the_camera_on_keep_decoding_the_screen(stoa_server, chromium):
    """tests/test_browser_media.py's share cycles with the screen in layers: each share reuses the screen's
    idle layered section (never the camera's), and every student decodes it full size again. The wait
    is longer than there: with the camera's layers on the same uplink, Chromium's send-side estimate
    often starts a share with only its low layer and adds the others over 10-20 s (seen in the logs)."""
    teacher, students = await sharing(stoa_server, chromium, [(1920, 1080), (1920, 1080)])
    for cycle in range(4):
        if cycle:
            await teacher.click("#btn-screen")
            await wait_js(teacher, "[...window.stoa.state.ownTracks.values()].some(t => t.source === 'screen')",
                          timeout=20)
        try:
            for student in students:
                await screen_decodes(student, SCREEN["f"], 45, f"share {cycle + 1}")
        finally:
            print("server:", screen_layers(stoa_server), "\npublisher:", await teacher.evaluate(OUTBOUND_JS))
            for student in students:
                print("tiles:", await student.evaluate(TILES_JS))
        await wait_js(teacher, "window.stoa.state.pub.signalingState === 'stable'", timeout=10)
        await teacher.click("#btn-screen")  # stop
        await wait_js(teacher, "![...window.stoa.state.ownTracks.values()].some(t => t.source === 'screen')"
                               " && window.stoa.state.pub.signalingState === 'stable'", timeout=20)
    sections = await teacher.evaluate("window.stoa.state.pub.getTransceivers().filter("
                                      "(t) => t.receiver.track.kind === 'video').length")
    assert sections == 2, f"{sections} video sections: a share did not reuse the screen's idle one"
    for student in students:
        await frames_advance(student, CAMERA_WIDTH)
    assert not chromium.errors(), chromium.errors()
