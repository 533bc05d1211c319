"""Browser media as a lesson uses it (issue 8): re-sharing, late joiners with several tracks, ICE restart,
autoplay. Real headless Chromium with the fake camera; every media assertion reads decoded frames from getStats."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.browser import UFRAGS_JS, ice_restarted, inbound, screenshot, wait_js

pytestmark = pytest.mark.browser
ROOM = "lesson"
SCREEN_WIDTH = 1920   # room.js asks getDisplayMedia for 1920x1080 (headless Chromium's fake screen gives it)
CAMERA_WIDTH = 1280   # room.js asks the fake camera for 1280x720


async def open_page(stoa_server, chromium, identity: str, role: str, name: str | None = None):
    token = stoa_server.token(ROOM, identity, role, name=name or identity)
    page = await chromium.page(f"{stoa_server.base}/rooms/{ROOM}?token={token}", label=identity)
    await wait_js(page, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1", timeout=15)
    return page


async def decoding(page, width: int, *, more_than: int = 0, timeout: float = 25.0) -> dict:
    """Wait until an inbound video of `width` has decoded frames, and more than `more_than` of them.
    The camera may be scaled down by the browser's bandwidth estimate: any width below the screen's."""
    deadline = time.monotonic() + timeout
    seen: list = []
    while True:
        seen = await inbound(page, "video")
        for entry in seen:
            fits = entry.get("frameWidth") == width or (width == CAMERA_WIDTH and 0 < entry.get("frameWidth", 0) <= width)
            if fits and entry.get("framesDecoded", 0) > more_than:
                return entry
        if time.monotonic() > deadline:
            raise TimeoutError(f"no inbound video {width} wide decoded frames in {timeout} s; inbound-rtp: "
                               + repr([(e.get("mid"), e.get("frameWidth"), e.get("framesDecoded")) for e in seen]))
        await asyncio.sleep(0.2)


async def frames_advance(page, width: int, timeout: float = 25.0) -> None:
    """The video of `width` decodes new frames from now on (not a stale counter)."""
    first = await decoding(page, width, timeout=timeout)
    await decoding(page, width, more_than=first["framesDecoded"] + 5, timeout=timeout)


async def share_cycles(teacher, students, cycles: int) -> None:
    for i in range(cycles):
        await teacher.click("#btn-screen")
        await wait_js(teacher, "[...window.stoa.state.ownTracks.values()].some(t => t.source === 'screen')",
                      timeout=20)
        for student in students:
            await frames_advance(student, SCREEN_WIDTH)
        await wait_js(teacher, "window.stoa.state.pub.signalingState === 'stable'", timeout=10)
        await teacher.click("#btn-screen")  # stop
        await wait_js(teacher, "![...window.stoa.state.ownTracks.values()].some(t => t.source === 'screen')"
                               " && window.stoa.state.pub.signalingState === 'stable'", timeout=20)


async def test_share_stop_share_again_with_and_without_camera(stoa_server, chromium):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    students = [await open_page(stoa_server, chromium, f"stud{i}", "student") for i in (1, 2)]
    await teacher.click("#btn-camera")
    for student in students:
        await frames_advance(student, CAMERA_WIDTH)
    try:
        await share_cycles(teacher, students, 3)
    except TimeoutError:
        print(server_media(stoa_server))
        for st in students:
            print(await st.evaluate("window.stoa.state.sub.localDescription.sdp"))
        raise
    await teacher.evaluate("window.stoa.stopCamera()")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 0 && "
                           "window.stoa.state.pub.signalingState === 'stable'", timeout=20)
    await share_cycles(teacher, students, 3)
    assert not chromium.errors(), chromium.errors()


def server_media(stoa_server) -> list:
    """(publisher, source, packets received, [(subscriber, packets sent)]) of every track: for failure messages."""
    from signaling.room import ROOMS

    room = stoa_server.app[ROOMS].rooms.get(ROOM)
    if room is None:
        return []
    # A simulcast track's legs sit in its layers' fan-out lists, as taps (sfu/layers.py): per layer.
    return [(t.publisher_id, t.source, [(layer.packets_received, layer.keyframes_received,
             [(getattr(d, "subscriber_id", None), getattr(d, "packets_sent", None)) for d in layer.downtracks])
             for layer in (t.layers or [t])]) for t in room.tracks()]


async def receives_audio(page, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        audio = [a for a in await inbound(page, "audio") if a.get("packetsReceived", 0) > 20
                 and a.get("totalSamplesReceived", 0) > 0]
        if audio:
            return audio[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no inbound audio in {timeout} s: {await inbound(page, 'audio')}")
        await asyncio.sleep(0.2)


async def all_three(page) -> None:
    await frames_advance(page, CAMERA_WIDTH)
    await frames_advance(page, SCREEN_WIDTH)
    await receives_audio(page)


async def test_late_joiner_and_reconnecting_student_get_camera_screen_and_audio(stoa_server, chromium):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    await teacher.click("#btn-camera")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 2", timeout=20)
    await teacher.click("#btn-screen")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 3", timeout=20)
    student = await open_page(stoa_server, chromium, "late", "student")
    try:
        await all_three(student)
    except TimeoutError:
        print(server_media(stoa_server))
        raise
    await student.evaluate("window.stoa.state.ws.close()")  # the socket drops mid-share
    await wait_js(student, "window.stoa.state.ws.readyState === 1 && window.stoa.state.participants.size >= 2",
                  timeout=20)
    await all_three(student)
    assert not chromium.errors(), chromium.errors()


HAND_RAISED = "document.querySelector('#hand-queue li[data-identity=stud]')"


async def teacher_and_student_with_hand_up(stoa_server, chromium):
    """The teacher's camera decoded by a student whose raised hand the teacher sees."""
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    await teacher.click("#btn-camera")
    student = await open_page(stoa_server, chromium, "stud", "student", "Student")
    await frames_advance(student, CAMERA_WIDTH)
    await wait_js(student, "document.getElementById('hand-btn')", timeout=15)
    await student.click("#hand-btn")
    await wait_js(teacher, HAND_RAISED, timeout=15)
    return teacher, student


async def test_resume_keeps_the_participant_its_hand_and_its_media(stoa_server, chromium):
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student_with_hand_up(stoa_server, chromium)
    hand_raised = HAND_RAISED
    room = stoa_server.app[ROOMS].rooms[ROOM]
    before = room.participants["stud"]

    # ICE failed (network change): new media connections for the same participant.
    old_sub = await student.evaluate("window.stoa.state.sub.getStats().then(() => true)")
    assert old_sub
    await student.evaluate("window.stoa.restartMedia()")
    await wait_js(student, "window.stoa.state.sub && window.stoa.state.sub.connectionState === 'connected'",
                  timeout=20)
    await frames_advance(student, CAMERA_WIDTH)

    # The socket drops and comes back: resumed, not rejoined.
    await student.evaluate("window.stoa.state.ws.close()")
    await wait_js(student, "window.stoa.state.ws.readyState === 1 && window.stoa.state.resume", timeout=20)
    await frames_advance(student, CAMERA_WIDTH)
    assert room.participants["stud"] is before, "the student came back as a new participant"
    assert await teacher.evaluate(hand_raised) is not None  # the hand stayed up all along
    assert not await teacher.evaluate("[...document.querySelectorAll('#participants li')]"
                                      ".some(li => li.dataset.identity === 'stud') === false")
    assert not chromium.errors(), chromium.errors()


async def test_ice_restart_keeps_the_participant_its_hand_and_its_media(stoa_server, chromium, artifacts_dir):
    from sfu.aiortc_seam import ice_credentials
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student_with_hand_up(stoa_server, chromium)
    hand_raised = HAND_RAISED
    await teacher.evaluate("window.__events = []; for (const t of ['participant_left', 'participant_joined'])"
                           " window.stoa.on(t, (m) => window.__events.push(m))")
    room = stoa_server.app[ROOMS].rooms[ROOM]
    kept = room.participants["stud"]
    server_sub = kept.subscriber.pc

    # restartIce() on the student's connection and on the teacher's publisher: same connections, new ufrags.
    sub_before = await student.evaluate(UFRAGS_JS, "sub")
    pub_before = await teacher.evaluate(UFRAGS_JS, "pub")
    await student.evaluate("window.stoa.restartIce('sub')")
    await teacher.evaluate("window.stoa.restartIce('pub')")
    sub_after = await ice_restarted(student, "sub", sub_before)
    await ice_restarted(teacher, "pub", pub_before)
    await frames_advance(student, CAMERA_WIDTH)
    assert ice_credentials(server_sub)["remote_ufrag"] == sub_after["local"]
    assert room.participants["stud"] is kept and kept.subscriber.pc is server_sub

    # The student's socket drops: it resumes, then restarts ICE again on the same connection.
    await student.evaluate("window.stoa.state.ws.close()")
    await wait_js(student, "window.stoa.state.ws.readyState === 1 && window.stoa.state.resume", timeout=20)
    await ice_restarted(student, "sub", sub_after)
    await frames_advance(student, CAMERA_WIDTH)
    assert room.participants["stud"] is kept and kept.subscriber.pc is server_sub
    assert await teacher.evaluate(hand_raised) is not None, "the hand went down"
    assert await teacher.evaluate("window.__events") == [], "the room saw the student leave or join"
    await screenshot(student, artifacts_dir, "ice-restart-student")
    assert not chromium.errors(), chromium.errors()
