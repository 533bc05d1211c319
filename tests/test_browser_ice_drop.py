"""The network path of a Chromium page really breaks and comes back; the room page recovers by itself.

Chromium runs in a network namespace of this test's own (tests/netns.py: a veth pair); the server listens and
gathers ICE on the host end. The cut drops every UDP datagram either way on the pair (TCP, so the room
socket, still flows): Chromium's ICE goes `disconnected`, and the page's own timers (web/static/room.js,
`watchIce`) restart ICE after 2 s, or make a new connection when the restart has not reconnected in 10 s.
Nothing is called on the page from the test. The other side (an aiortc teacher or student) is on loopback,
outside the cut.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.config import load_settings
from tests.browser import UFRAGS_JS, ice_restarted, screenshot, wait_frames_decoded, wait_js
from tests.client import RoomClient
from tests.media import CounterVideoTrack
from tests.netns import ShapedLink, unavailable
from tests.serve import eventually

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]
ROOM = "icedrop"
BANNER_CONNECTED = "document.getElementById('banner').textContent === 'Connected'"
HAND_UP = "document.getElementById('hand-btn').classList.contains('active')"
# Every ICE state one of the page's connections goes through from now on, and that connection (window.__first).
WATCH_ICE_JS = """(which) => {
  window.__ice = [];
  const pc = window.__first = window.stoa.state[which];
  pc.addEventListener('iceconnectionstatechange', () => window.__ice.push(pc.iceConnectionState));
}"""


@pytest.fixture
def browser_netns():
    reason = unavailable()
    if reason:
        pytest.skip(f"needs Chromium in a network namespace: {reason}")
    with ShapedLink(rate=None) as link:
        yield link


@pytest.fixture
def server_settings(tmp_path, browser_netns):
    return load_settings(environ={}, overrides={
        "dev": True, "host": browser_netns.host_address, "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", browser_netns.host_address], "overload_control": False,
    })


@pytest.fixture
def browser_args(stoa_server):
    # The page is served from a private address over http, not a secure context (127.0.0.1 is one), and a
    # camera needs one.
    return [f"--unsafely-treat-insecure-origin-as-secure={stoa_server.base}"]


async def student_decoding_with_hand_up(stoa_server, chromium):
    """An aiortc teacher publishing its camera, and a Chromium student decoding it with its hand raised."""
    teacher = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "teach", "instructor")).connect()
    await teacher.publish(CounterVideoTrack(), sources=["camera"])
    token = stoa_server.token(ROOM, "stud", "student", name="Student")
    student = await chromium.page(f"{stoa_server.base}/rooms/{ROOM}?token={token}", label="stud")
    await wait_js(student, "window.stoa && window.stoa.state.sub && window.stoa.state.sub.connectionState"
                           " === 'connected'", timeout=20)
    await wait_frames_decoded(student, minimum=10, timeout=20)
    await wait_js(student, "document.getElementById('hand-btn')", timeout=15)
    await student.click("#hand-btn")
    await wait_js(student, HAND_UP, timeout=10)
    await student.evaluate(WATCH_ICE_JS, "sub")
    return teacher, student


async def cut_until_the_page_restarts_ice(link: ShapedLink, page, which: str, hold) -> None:
    """Cut the UDP path; the page's `which` connection goes `disconnected` and the page restarts its ICE by
    itself (2 s later); `await hold()` runs with the path still cut, then it is restored."""
    link.cut_udp()
    try:
        await wait_js(page, "window.__ice.includes('disconnected') || window.__ice.includes('failed')", timeout=15)
        await wait_js(page, f"window.stoa.state.iceRestart.{which}", timeout=10)
        assert "reconnecting the media" in await page.inner_text("#banner"), "the page still says Connected"
        await hold()
    finally:
        link.restore_udp()


async def decodes_again(page) -> None:
    """The page's current subscriber connection decodes new frames (not a stale counter)."""
    first = await wait_frames_decoded(page, timeout=15)
    await wait_frames_decoded(page, minimum=10, above=first["framesDecoded"], timeout=15)


async def kept_in_the_room(stoa_server, teacher: RoomClient, since: int, student, kept) -> None:
    """The same participant with its hand up, and the teacher heard of no leave or join since event `since`."""
    from signaling.room import ROOMS

    assert stoa_server.app[ROOMS].rooms[ROOM].participants["stud"] is kept, "the student became a new participant"
    assert await student.evaluate(HAND_UP), "the hand went down"
    await wait_js(student, BANNER_CONNECTED, timeout=10)
    left = [e for e in teacher.events[since:] if e["type"] in ("participant_left", "participant_joined")]
    assert left == [], "the room saw the student leave or join"


async def test_a_short_cut_restarts_ice_on_the_same_connection(stoa_server, chromium, browser_netns, artifacts_dir):
    from sfu.aiortc_seam import ice_credentials
    from signaling.room import ROOMS

    teacher, student = await student_decoding_with_hand_up(stoa_server, chromium)
    try:
        kept, since = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"], len(teacher.events)
        server_sub = kept.subscriber.pc
        before = await student.evaluate(UFRAGS_JS, "sub")

        # The restart has to cross the cut: the path comes back 1 s after it began.
        await cut_until_the_page_restarts_ice(browser_netns, student, "sub", lambda: asyncio.sleep(1.0))

        after = await ice_restarted(student, "sub", before, timeout=15)
        print("student's ICE states:", await student.evaluate("window.__ice"))
        assert await student.evaluate("window.stoa.state.sub === window.__first"), "a new connection was made"
        await decodes_again(student)
        assert ice_credentials(server_sub)["remote_ufrag"] == after["local"]
        assert kept.subscriber.pc is server_sub
        await kept_in_the_room(stoa_server, teacher, since, student, kept)
        await screenshot(student, artifacts_dir, "ice-drop-restart-student")
        assert not chromium.errors(), chromium.errors()
    finally:
        await teacher.close()


async def test_a_cut_longer_than_the_restart_timeout_falls_back_to_a_new_connection(stoa_server, chromium,
                                                                                   browser_netns):
    from signaling.room import ROOMS

    teacher, student = await student_decoding_with_hand_up(stoa_server, chromium)
    try:
        kept, since = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"], len(teacher.events)
        server_sub = kept.subscriber.pc

        async def gives_the_restart_up():
            # 10 s without reconnecting: the page gives the restart up and asks for a new connection.
            started = time.monotonic()
            await wait_js(student, "window.stoa.state.sub !== window.__first", timeout=15)
            assert time.monotonic() - started > 8, "the page gave the ICE restart up early"

        await cut_until_the_page_restarts_ice(browser_netns, student, "sub", gives_the_restart_up)

        await wait_js(student, "window.stoa.state.sub && window.stoa.state.sub.connectionState === 'connected'",
                      timeout=20)
        await decodes_again(student)
        print("old connection's ICE states:", await student.evaluate("window.__ice"))
        assert kept.subscriber.pc is not server_sub, "the server kept the old subscriber connection"
        assert server_sub.connectionState == "closed", "the old subscriber connection was left open"
        await kept_in_the_room(stoa_server, teacher, since, student, kept)
        assert not chromium.errors(), chromium.errors()
    finally:
        await teacher.close()


async def test_a_short_cut_restarts_ice_on_the_teachers_publisher_connection(stoa_server, chromium, browser_netns):
    """The publisher side: the teacher's Chromium is behind the cut, an aiortc student on loopback decodes it."""
    from signaling.room import ROOMS

    token = stoa_server.token(ROOM, "teach", "instructor", name="Teacher")
    teacher = await chromium.page(f"{stoa_server.base}/rooms/{ROOM}?token={token}", label="teach")
    await wait_js(teacher, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1", timeout=15)
    await teacher.click("#btn-camera")
    await wait_js(teacher, "window.stoa.state.pub && window.stoa.state.pub.iceConnectionState === 'connected'",
                  timeout=20)
    student = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "stud", "student")).connect()
    try:
        video = await student.wait_track("video", timeout=20)
        await eventually(lambda: video.frames >= 10, 20, "the student to decode the teacher's camera")
        kept, since = stoa_server.app[ROOMS].rooms[ROOM].participants["teach"], len(student.events)
        server_pub = kept.publisher.pc
        await teacher.evaluate(WATCH_ICE_JS, "pub")
        before = await teacher.evaluate(UFRAGS_JS, "pub")

        await cut_until_the_page_restarts_ice(browser_netns, teacher, "pub", lambda: asyncio.sleep(1.0))

        await ice_restarted(teacher, "pub", before, timeout=15)
        print("teacher's publisher ICE states:", await teacher.evaluate("window.__ice"))
        assert await teacher.evaluate("window.stoa.state.pub === window.__first"), "a new connection was made"
        await wait_js(teacher, BANNER_CONNECTED, timeout=10)
        frames = video.frames
        await eventually(lambda: video.frames >= frames + 10, 15, "the student to decode new frames")
        assert student.video() is video, "the student got the camera as a new track"
        assert stoa_server.app[ROOMS].rooms[ROOM].participants["teach"] is kept
        assert kept.publisher.pc is server_pub
        seen = [e["type"] for e in student.events[since:]]
        for kind in ("participant_left", "participant_joined", "track_unpublished", "track_published"):
            assert kind not in seen, f"the student saw {kind}"
        assert not chromium.errors(), chromium.errors()
    finally:
        await student.close()
