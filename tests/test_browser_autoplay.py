"""The room page when the browser blocks autoplay (a link opened from a learning platform): one
"Click to enable sound" control, and sound after the click. Real Chromium with the autoplay policy on.

Chromium exempts MediaStream playback from its autoplay policy (blink's AutoplayPolicy returns "no gesture
needed" for a srcObject load), so remote WebRTC audio plays even under
--autoplay-policy=document-user-activation-required; Safari and Firefox block it. The second test makes
Chromium behave like them: play() of an unmuted element rejects with NotAllowedError until the user has
pressed on the page (the click the test makes, a trusted event)."""

from __future__ import annotations

import pytest

from tests.browser import inbound, wait_js
from tests.test_browser_media import CAMERA_WIDTH, ROOM, frames_advance, open_page, receives_audio

pytestmark = pytest.mark.browser

# Activation is a trusted pointer press on this page (navigator.userActivation already reads true in an
# automated headless page, so it cannot tell).
BLOCK_LIKE_SAFARI = """(() => {
  let activated = false;
  addEventListener("pointerdown", (e) => { if (e.isTrusted) activated = true; }, true);
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (!this.muted && !activated) {
      return Promise.reject(new DOMException("play() can only be initiated by a user gesture", "NotAllowedError"));
    }
    return play.call(this);
  };
})();"""

PLAYING = "[...document.querySelectorAll('audio')].some(a => !a.paused && a.currentTime > 0)"
AUDIO_STATE = """({button: !!document.getElementById('btn-sound'), active: navigator.userActivation.hasBeenActive,
  audio: [...document.querySelectorAll('audio')].map(a => ({paused: a.paused, t: a.currentTime, ready: a.readyState,
    muted: a.muted, tracks: a.srcObject ? a.srcObject.getTracks().map(t => t.readyState + '/' + t.muted) : null}))})"""


@pytest.fixture
def browser_args() -> list[str]:
    return ["--autoplay-policy=document-user-activation-required"]


async def test_remote_audio_plays_under_chromiums_autoplay_policy(stoa_server, chromium):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    await teacher.click("#btn-camera")
    student = await open_page(stoa_server, chromium, "stud", "student")
    await receives_audio(student)
    try:
        await wait_js(student, PLAYING, timeout=15)
    except TimeoutError as e:
        raise AssertionError(f"{e}; the audio elements: {await student.evaluate(AUDIO_STATE)}") from None
    assert await student.evaluate("document.getElementById('btn-sound')") is None


async def test_blocked_autoplay_shows_enable_sound_and_plays_after_a_click(stoa_server, chromium):
    teacher = await open_page(stoa_server, chromium, "teach", "instructor", "Teacher")
    await teacher.click("#btn-camera")
    student = await chromium.page(label="stud")
    await student.add_init_script(BLOCK_LIKE_SAFARI)
    await student.goto(f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'stud', 'student')}")
    await frames_advance(student, CAMERA_WIDTH)  # muted video still plays
    await receives_audio(student)
    await wait_js(student, "document.getElementById('btn-sound')", timeout=15)
    assert await student.evaluate("document.querySelectorAll('#btn-sound').length") == 1
    assert await student.evaluate("[...document.querySelectorAll('audio')].every(a => a.paused)")
    await student.click("#btn-sound")
    await wait_js(student, "!document.getElementById('btn-sound') && " + PLAYING, timeout=15)
    audio = [a for a in await inbound(student, "audio") if a.get("totalSamplesReceived", 0) > 0]
    assert audio, "no decoded audio samples"
