"""The room page with several nodes: opened on a node that is not the room's home, it is sent to the home
(HTTP 307) and decodes the teacher there; when that node drains (SIGTERM), the page follows the `redirect`
message to the room's new home by itself."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.browser import screenshot, wait_frames_decoded, wait_js
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.serve import eventually
from tests.test_cluster import node, redis_client, upgrade  # noqa: F401 (fixture)
from tests.test_whip_whep import WhipPublisher

pytestmark = [pytest.mark.browser, pytest.mark.slow]
JOINED = "window.stoa && window.stoa.state.participants.size > 0"  # the page got `joined` (not a caption)
CHAT_SHOWS = "[...document.querySelectorAll('#chat-list .msg')].some(m => m.textContent.includes('%s'))"


async def teacher_on_a(http, a, b, room: str, redis_client, redis_prefix: str) -> WhipPublisher:  # noqa: F811
    """Both nodes up, a WHIP teacher publishing on a, which is the room's home."""
    await asyncio.gather(a.wait_up(http), b.wait_up(http))
    teacher = await WhipPublisher(http, a.base, room, a.token(room, "teacher", "instructor")).publish(
        CounterVideoTrack(), ToneAudioTrack())
    assert await redis_client.hget(redis_prefix + "room_node_map", room) == "a"
    return teacher


async def test_the_page_goes_to_the_rooms_home_and_moves_when_it_drains(
        tmp_path, redis_url, redis_prefix, redis_client, chromium, artifacts_dir):  # noqa: F811
    room = "geology"
    a, b = node(tmp_path, "a", redis_url, redis_prefix), node(tmp_path, "b", redis_url, redis_prefix)
    teacher = None
    try:
        async with aiohttp.ClientSession() as http:
            teacher = await teacher_on_a(http, a, b, room, redis_client, redis_prefix)

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


async def republish(http, server, room: str) -> WhipPublisher:
    """What OBS does when its server vanished: POST again (through any node) until one takes it."""
    async def attempt():
        publisher = WhipPublisher(http, server.base, room, server.token(room, "teacher", "instructor"))
        try:
            return await publisher.publish(CounterVideoTrack(), ToneAudioTrack())
        except (aiohttp.ClientError, AssertionError):
            await publisher.pc.close()
            return None
    return await eventually(attempt, 10, "the teacher's WHIP POST to be taken", interval=0.2)


async def test_a_dead_homes_room_is_placed_again_and_the_page_follows_with_its_chat(
        tmp_path, redis_url, redis_prefix, redis_client, pg_dsn, chromium, artifacts_dir):  # noqa: F811
    """SIGKILL the room's home: the page's socket breaks, it joins through the other node saying which node it
    lost; that node finds the home gone (its /healthz does not answer), places the room on itself and sends
    the page there. The page decodes the teacher again (who POSTed again), and the chat from the shared
    database is there."""
    room = "failover"
    upgrade(pg_dsn)
    a, b = (node(tmp_path, n, redis_url, redis_prefix, "--database", pg_dsn) for n in ("a", "b"))
    teacher = None
    try:
        async with aiohttp.ClientSession() as http:
            teacher = await teacher_on_a(http, a, b, room, redis_client, redis_prefix)
            page = await chromium.page(f"{a.base}/rooms/{room}?token={a.token(room, 'ada', 'student')}")
            await wait_js(page, JOINED, timeout=15)
            assert await page.evaluate("window.stoa.state.cluster") == {"node": "a", "nodes": [b.base]}
            await wait_frames_decoded(page, minimum=10, timeout=20)
            await page.fill("#chat-input", "before the crash")
            await page.click("#chat-send")
            await wait_js(page, CHAT_SHOWS % "before the crash", timeout=10)

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed = time.monotonic()
            await teacher.pc.close()
            teacher = await republish(http, b, room)  # b: the room is placed there if a counts as gone
            await page.wait_for_url(f"{b.base}/rooms/{room}?token=*", timeout=10_000)
            await wait_js(page, JOINED, timeout=10)
            rejoined = time.monotonic() - killed
            await wait_frames_decoded(page, minimum=5, timeout=15)
            decoding = time.monotonic() - killed
            assert rejoined < 5.0, f"the page joined on b {rejoined:.1f} s after a died"
            assert await redis_client.hget(redis_prefix + "room_node_map", room) == "b"
            await wait_js(page, CHAT_SHOWS % "before the crash", timeout=10)  # from the shared database
            assert "does not answer" in b.log.read_text()
            await screenshot(page, artifacts_dir, "cluster-page-after-failover")
            print(f"failover: joined on b {rejoined:.2f} s, decoding {decoding:.2f} s after SIGKILL of a")
    finally:
        if teacher is not None:
            await teacher.pc.close()
        a.stop()
        b.stop()


async def test_the_teachers_page_publishes_again_after_its_home_dies(
        tmp_path, redis_url, redis_prefix, redis_client, chromium, artifacts_dir):  # noqa: F811
    """A teacher's page publishing its camera (mic muted) and a student's page, both on a; SIGKILL a. Both
    pages join through b (`lost`), are sent to b's room page, and the teacher's page starts its camera and
    publishes again by itself, its mic still muted: the student's page decodes the teacher's video again, with
    no click, and lists the teacher as muted."""
    room = "republish"
    a, b = node(tmp_path, "a", redis_url, redis_prefix), node(tmp_path, "b", redis_url, redis_prefix)
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(a.wait_up(http), b.wait_up(http))
            teacher = await chromium.page(f"{a.base}/rooms/{room}?token={a.token(room, 'prof', 'instructor')}",
                                          label="teacher")
            await wait_js(teacher, JOINED, timeout=15)
            await teacher.click("#btn-camera")
            await wait_js(teacher, "window.stoa.state.ownTracks.size >= 2", timeout=15)  # published on a
            await teacher.click("#btn-mic")  # muted: it must come back muted
            student = await chromium.page(f"{a.base}/rooms/{room}?token={a.token(room, 'ada', 'student')}",
                                          label="student")
            await wait_js(student, JOINED, timeout=15)
            await wait_frames_decoded(student, minimum=10, timeout=20)

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            killed = time.monotonic()
            for page in (teacher, student):
                await page.wait_for_url(f"{b.base}/rooms/{room}?token=*", timeout=10_000)
                await wait_js(page, JOINED, timeout=10)
            await wait_js(teacher, "window.stoa.state.camera !== null && window.stoa.state.ownTracks.size >= 2",
                          timeout=15)  # camera and microphone published on b, from the page itself
            first = await wait_frames_decoded(student, minimum=5, timeout=15)
            decoding = time.monotonic() - killed
            await wait_frames_decoded(student, minimum=10, above=first["framesDecoded"], timeout=10)  # rising
            assert "moved=" not in teacher.url, "the address bar keeps no `moved` (a copied link starts nothing)"
            assert await teacher.evaluate("window.stoa.state.camera.getAudioTracks()[0].enabled") is False
            await wait_js(student, "document.querySelector('#participants li[data-identity=\"prof\"]')"
                                   ".textContent.includes('muted')", timeout=10)
            await screenshot(teacher, artifacts_dir, "cluster-teacher-after-failover")
            await screenshot(student, artifacts_dir, "cluster-student-after-teacher-republished")
            print(f"failover: the student decodes the teacher's camera again {decoding:.2f} s after SIGKILL of a")
    finally:
        a.stop()
        b.stop()
