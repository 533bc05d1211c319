"""The room page in real headless Chromium (flags in tests/browser.py, from shared/browser-testing.md)."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser import screenshot, wait_frames_decoded, wait_js
from tests.client import RoomClient
from tests.media import CounterVideoTrack

pytestmark = pytest.mark.browser
ROOM = "chem"


async def teacher_and_student(stoa_server, chromium):
    """An instructor page (joined) and a student page in the same room."""
    teacher = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'teach', 'instructor', name='Teacher')}",
        label="instructor")
    student = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'stud', 'student', name='Student')}",
        label="student")
    await wait_js(teacher, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1",
                  timeout=20)
    return teacher, student


async def test_instructor_camera_reaches_student_page(stoa_server, chromium, artifacts_dir):
    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-camera")
    entry = await wait_frames_decoded(student, minimum=5, timeout=20)  # frameWidth lags the first frame
    assert entry["framesDecoded"] > 0 and entry.get("frameWidth", 0) > 0
    names = await wait_js(student, "document.querySelectorAll('#participants li').length >= 2 && "
                                   "[...document.querySelectorAll('#participants li')].map(li => li.textContent)")
    assert any("Teacher" in n for n in names) and any("Student" in n for n in names)
    await wait_js(student, "document.getElementById('banner').classList.contains('ok')")
    await screenshot(student, artifacts_dir, "room-student-sees-instructor")
    assert not chromium.errors(), chromium.errors()


async def test_aiortc_publisher_decodes_in_chromium(stoa_server, chromium, artifacts_dir):
    publisher = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "bot", "instructor")).connect()
    await publisher.publish(CounterVideoTrack(), sources=["camera"])
    page = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'viewer1', 'viewer')}", label="viewer")
    entry = await wait_frames_decoded(page, minimum=10, timeout=20)
    assert entry["framesDecoded"] >= 10
    await screenshot(page, artifacts_dir, "room-viewer-aiortc-publisher")
    await publisher.close()


async def test_page_reconnects_after_the_websocket_drops(stoa_server, chromium):
    publisher = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "bot", "instructor")).connect()
    await publisher.publish(CounterVideoTrack(), sources=["camera"])
    page = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'stud', 'student')}", label="student")
    await wait_frames_decoded(page, timeout=20)
    await page.evaluate("window.stoa.state.ws.close()")
    await wait_js(page, "document.getElementById('banner').textContent.includes('reconnect')", timeout=5)
    await wait_js(page, "window.stoa.state.sub && window.stoa.state.sub.connectionState === 'connected'",
                  timeout=20)
    entry = await wait_frames_decoded(page, timeout=20)
    assert entry["framesDecoded"] > 0
    await publisher.close()


async def test_dev_form_mints_a_token_and_opens_the_room(stoa_server, chromium):
    page = await chromium.page(f"{stoa_server.base}/", label="form")
    await page.fill("input[name=room]", "demo")
    await page.fill("input[name=name]", "Ada Lovelace")
    await page.select_option("select[name=role]", "instructor")
    await page.click("#dev-form button[type=submit]")
    await page.wait_for_url("**/rooms/demo?token=*")
    await wait_js(page, "document.getElementById('banner').classList.contains('ok')", timeout=10)
    assert await page.is_visible("#btn-camera")
    assert await page.text_content(".me") == "Ada Lovelace (instructor)"


async def test_screen_share_reaches_student_page(stoa_server, chromium):
    # Headless Chromium with --use-fake-ui-for-media-stream grants getDisplayMedia a fake 1280x720 screen.
    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-screen")
    entry = await wait_frames_decoded(student, timeout=20)
    assert entry["framesDecoded"] > 0
    await wait_js(student, "[...document.querySelectorAll('#stage figcaption')].some(c => c.textContent.includes('screen'))")


async def test_mic_button_mutes_the_track_on_the_server(stoa_server, chromium):
    from signaling.room import ROOMS

    teacher = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'teach', 'instructor')}", label="t")
    await wait_js(teacher, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1")
    await teacher.click("#btn-camera")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 2", timeout=15)
    await teacher.click("#btn-mic")

    def mic_muted() -> bool:
        room = stoa_server.app[ROOMS].rooms.get(ROOM)
        return bool(room) and any(t.muted for t in room.tracks() if t.kind == "audio")

    for _ in range(100):
        if mic_muted():
            break
        await asyncio.sleep(0.05)
    assert mic_muted(), "the server stopped forwarding the muted microphone"


async def test_camera_and_screen_started_together_publish_every_track(stoa_server, chromium):
    # Two publishes back to back: the second must wait for the first answer, not race it with a new offer.
    from signaling.room import ROOMS

    teacher = await chromium.page(
        f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'teach', 'instructor')}", label="t")
    await wait_js(teacher, "window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1")
    await teacher.evaluate("""async () => {
        window.failures = [];
        window.addEventListener("unhandledrejection", (e) => window.failures.push(String(e.reason)));
        const s = window.stoa.state;
        const camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
        s.camera = camera;
        const first = window.stoa.publish();
        s.screen = screen;
        await Promise.all([first, window.stoa.publish()]);
    }""")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 3", timeout=20)
    room = stoa_server.app[ROOMS].rooms.get(ROOM)
    assert sorted(t.source for t in room.tracks()) == ["camera", "microphone", "screen"]
    # It settles: a follow-up offer may still be in flight when the third track is listed, but none wedges.
    await wait_js(teacher, "window.stoa.state.pub.signalingState === 'stable' && !window.stoa.state.offering",
                  timeout=15)
    assert await teacher.evaluate("window.failures") == []


async def test_stopping_the_screen_share_unpublishes_it(stoa_server, chromium):
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-screen")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 1", timeout=20)
    await wait_js(student, "[...document.querySelectorAll('#stage figcaption')].some(c => c.textContent.includes('screen'))")
    await teacher.click("#btn-screen")  # stop: the re-offer carries an inactive section
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 0", timeout=20)
    await wait_js(student, "![...document.querySelectorAll('#stage figcaption')].some(c => c.textContent.includes('screen'))")
    room = stoa_server.app[ROOMS].rooms.get(ROOM)
    assert [t for t in room.tracks() if t.source == "screen"] == []
