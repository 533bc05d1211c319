"""The network path of a Chromium student really breaks and comes back; the room page recovers by itself.

Chromium runs in a network namespace of this test's own (tests/netns.py: a veth pair); the server listens and
gathers ICE on the host end. The cut drops every UDP datagram either way on the pair (TCP, so the room
socket, still flows): Chromium's ICE goes `disconnected`, and the page's own timers (web/static/room.js,
`watchIce`) restart ICE after 2 s, or make a new connection when the restart has not reconnected in 10 s.
Nothing is called from the test. The teacher is an aiortc publisher on loopback, outside the cut.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from stoa.config import load_settings
from tests.browser import UFRAGS_JS, ice_restarted, screenshot, wait_frames_decoded, wait_js
from tests.client import RoomClient
from tests.media import CounterVideoTrack
from tests.netns import ShapedLink, unavailable

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]
ROOM = "icedrop"
HAND_UP = "document.getElementById('hand-btn').classList.contains('active')"
# Every ICE state the page's subscriber connections go through, and which connection it was on.
WATCH_ICE_JS = """() => {
  window.__ice = [];
  window.__firstSub = window.stoa.state.sub;
  const pc = window.stoa.state.sub;
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
    await student.evaluate(WATCH_ICE_JS)
    return teacher, student


async def decodes_again(page) -> None:
    """The page's current subscriber connection decodes new frames (not a stale counter)."""
    first = await wait_frames_decoded(page, timeout=15)
    await wait_frames_decoded(page, minimum=10, above=first["framesDecoded"], timeout=15)


async def kept_in_the_room(stoa_server, teacher: RoomClient, since: int, student, kept) -> None:
    """The same participant with its hand up, and the teacher heard of no leave or join since event `since`."""
    from stoa.appkeys import ROOMS

    assert stoa_server.app[ROOMS].rooms[ROOM].participants["stud"] is kept, "the student became a new participant"
    assert await student.evaluate(HAND_UP), "the hand went down"
    left = [e for e in teacher.events[since:] if e["type"] in ("participant_left", "participant_joined")]
    assert left == [], "the room saw the student leave or join"


async def test_a_short_cut_restarts_ice_on_the_same_connection(stoa_server, chromium, browser_netns, artifacts_dir):
    from sfu.aiortc_seam import ice_credentials
    from stoa.appkeys import ROOMS

    teacher, student = await student_decoding_with_hand_up(stoa_server, chromium)
    try:
        kept, since = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"], len(teacher.events)
        server_sub = kept.subscriber.pc
        before = await student.evaluate(UFRAGS_JS, "sub")

        browser_netns.cut_udp()
        try:
            await wait_js(student, "window.__ice.includes('disconnected') || window.__ice.includes('failed')",
                          timeout=15)
            # The page restarts ICE by itself (2 s after `disconnected`); the restart has to cross the cut.
            await wait_js(student, "window.stoa.state.iceRestart.sub", timeout=10)
            await asyncio.sleep(1.0)
        finally:
            browser_netns.restore_udp()

        after = await ice_restarted(student, "sub", before, timeout=15)
        print("student's ICE states:", await student.evaluate("window.__ice"))
        assert await student.evaluate("window.stoa.state.sub === window.__firstSub"), "a new connection was made"
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
    from stoa.appkeys import ROOMS

    teacher, student = await student_decoding_with_hand_up(stoa_server, chromium)
    try:
        kept, since = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"], len(teacher.events)
        server_sub = kept.subscriber.pc

        browser_netns.cut_udp()
        try:
            await wait_js(student, "window.__ice.includes('disconnected') || window.__ice.includes('failed')",
                          timeout=15)
            await wait_js(student, "window.stoa.state.iceRestart.sub", timeout=10)
            started = time.monotonic()
            # 10 s without reconnecting: the page gives the restart up and asks for a new connection.
            await wait_js(student, "window.stoa.state.sub !== window.__firstSub", timeout=15)
            assert time.monotonic() - started > 8, "the page gave the ICE restart up early"
        finally:
            browser_netns.restore_udp()

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
