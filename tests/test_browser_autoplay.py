"""The room page when the browser blocks autoplay (a link opened from a learning platform): one
"Click to enable sound" control, and sound after the click. Real Chromium with the policy on."""

from __future__ import annotations

import pytest

from tests.browser import inbound, wait_js
from tests.test_browser_media import CAMERA_WIDTH, frames_advance, open_page, receives_audio

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_args() -> list[str]:
    return ["--autoplay-policy=document-user-activation-required"]


@pytest.mark.xfail(strict=False, reason="headless Chromium "
    "lets the WebRTC <audio> play under this policy in some runs (no NotAllowedError): the block is not "
    "reliably provoked yet; see docs/room-page.md")
async def test_blocked_autoplay_shows_enable_sound_and_plays_after_a_click(stoa_server, chromium):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    await teacher.click("#btn-camera")
    student = await open_page(stoa_server, chromium, "stud", "student")
    await frames_advance(student, CAMERA_WIDTH)  # muted video may autoplay
    await receives_audio(student)
    await wait_js(student, "document.getElementById('btn-sound')", timeout=15)
    assert await student.evaluate("document.querySelectorAll('#btn-sound').length") == 1
    # Blocked: the sound stays paused until the user clicks (a play() still pending may settle first).
    await wait_js(student, "[...document.querySelectorAll('audio')].every(a => a.paused && a.currentTime === 0)",
                  timeout=5)
    await student.click("#btn-sound")
    await wait_js(student, "!document.getElementById('btn-sound') && "
                           "[...document.querySelectorAll('audio')].some(a => !a.paused && a.currentTime > 0)",
                  timeout=15)
    audio = [a for a in await inbound(student, "audio") if a.get("totalSamplesReceived", 0) > 0]
    assert audio, "no decoded audio samples"
