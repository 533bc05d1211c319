"""The room page shows who is speaking: Chromium's fake microphone (a beep) makes the instructor a speaker
at the server, and the student's page marks the instructor's list entry and tile."""

from __future__ import annotations

import pytest

from tests.browser import wait_frames_decoded, wait_js
from tests.test_browser_room import teacher_and_student

pytestmark = pytest.mark.browser


async def test_student_page_marks_the_speaking_instructor(stoa_server, chromium):
    teacher, student = await teacher_and_student(stoa_server, chromium)
    await student.evaluate("window.speakerEvents = []; window.stoa.on('speakers', (m) => window.speakerEvents.push(m))")
    await teacher.click("#btn-camera")
    await wait_frames_decoded(student, timeout=20)
    event = await wait_js(student, "window.speakerEvents.find((m) => m.speakers.some((s) => s.identity === 'teach'))",
                          timeout=20)
    assert -127 < event["speakers"][0]["level"] <= 0
    await wait_js(student, "document.querySelector('#participants li[data-identity=\"teach\"]').classList"
                           ".contains('speaking')", timeout=10)
    await wait_js(student, "[...document.querySelectorAll('#stage .tile.speaking')].some(t => t.dataset.participant"
                           " === 'teach')", timeout=10)
    # The instructor's own page marks its own tile when it is the one speaking.
    await wait_js(teacher, "document.querySelector('#tile-self').classList.contains('speaking')", timeout=10)
    assert not chromium.errors(), chromium.errors()
