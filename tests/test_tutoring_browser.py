"""The tutoring dashboards in headless Chromium: a student asks for help, an instructor accepts on the
dashboard (it appears live, no reload), and both land in the tutoring room and see each other's video."""

from __future__ import annotations

import re

import pytest

from classroom.sessions import Actor
from signaling.api import TUTORING
from tests.browser import screenshot, wait_frames_decoded, wait_js

pytestmark = pytest.mark.browser


async def test_student_requests_instructor_accepts_both_land_in_the_room(stoa_server, chromium, artifacts_dir):
    base = stoa_server.base
    student = await chromium.page(f"{base}/dashboard?token={stoa_server.token('*', 'stu', 'student', name='Stu')}",
                                  label="student")
    teacher = await chromium.page(
        f"{base}/dashboard?token={stoa_server.token('*', 'prof', 'instructor', name='Prof')}", label="instructor")
    pages = {"student": student, "instructor": teacher}
    try:
        for page in pages.values():
            await wait_js(page, "document.getElementById('banner').textContent === 'Live'")

        await student.fill("input[name=course_ref]", "PHYS-101")
        await student.fill("input[name=lesson_ref]", "Lesson 4")
        await student.fill("textarea[name=note]", "Stuck on momentum")
        await student.click("#btn-request")
        await wait_js(student, "document.querySelectorAll('#pending li[data-id]').length === 1")
        await wait_js(student, "document.querySelector('[data-count=pending]').textContent === 'pending: 1'")

        # The request shows up on the instructor's dashboard by itself (over /ws/notify).
        item = teacher.locator("#pending li[data-id]")
        await wait_js(teacher, "document.querySelectorAll('#pending li[data-id]').length === 1")
        assert "Stuck on momentum" in await item.inner_text()
        assert "PHYS-101" in await item.inner_text()
        await screenshot(teacher, artifacts_dir, "tutoring-dashboard-instructor")
        async with teacher.expect_navigation(url=re.compile(r"/rooms/tutoring-[0-9a-f]+\?token=")):
            await item.locator("button.accept").click()

        # The student's dashboard now offers the room.
        await wait_js(student, "document.querySelectorAll('#active a.join').length === 1")
        async with student.expect_navigation(url=re.compile(r"/rooms/tutoring-[0-9a-f]+\?token=")):
            await student.locator("#active a.join").click()
        assert student.url.split("?")[0] == teacher.url.split("?")[0], "both are in the same room"

        for page in pages.values():
            await wait_js(page, "window.stoa && stoa.state.participants.size === 2", timeout=15)
        # Both may publish in a tutoring room: the instructor starts the (fake) camera, the student sees it.
        await teacher.click("#btn-camera")
        await wait_frames_decoded(student, minimum=10, timeout=20)
        await student.click("#btn-camera")
        await wait_frames_decoded(teacher, minimum=10, timeout=20)

        view = await stoa_server.app[TUTORING].student_view(Actor("stu"))
        assert view["counts"]["active"] == 1
        assert not chromium.errors(), chromium.errors()
    finally:
        for name, page in pages.items():
            await screenshot(page, artifacts_dir, f"tutoring-{name}")
