"""Pages in headless Chromium: a quiz bank uploaded from the instructor dashboard (refused with the CLI's
error, then imported), the feedback form offered when a student leaves a session (stored, then shown on the
instructor's dashboard), and the anonymous-question notice saying who sees the asker's name."""

from __future__ import annotations

import json

import pytest

from classroom.interactive.quiz import QuizBankError, load_bank
from storage.store import STORE
from tests.browser import screenshot, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

JOINED = "window.stoa && document.getElementById('banner').classList.contains('ok')"


async def room_page(stoa_server, chromium, room: str, identity: str, role: str, name: str):
    """A joined room page for a token of `room`."""
    token = stoa_server.token(room, identity, role, name=name)
    page = await chromium.page(f"{stoa_server.base}/rooms/{room}?token={token}", label=identity)
    await wait_js(page, JOINED, timeout=15)
    return page


async def live_session(api, title: str, **features) -> dict:
    s = await api.ok("POST", "/api/sessions", auth=api.admin,
                     json={"title": title, "instructor": "prof", "features": features} if features else
                     {"title": title, "instructor": "prof"})
    return await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)


async def test_quiz_bank_upload_from_the_dashboard(stoa_server, chromium, artifacts_dir, tmp_path):
    bad = {"bank": "algebra", "questions": [{"prompt": "2+2?", "choices": ["3", "4"], "answer": 5}]}
    good = {"bank": "algebra", "questions": [{"prompt": "2+2?", "choices": ["3", "4"], "answer": 1},
                                             {"prompt": "3*3?", "choices": ["9", "6"], "answer": 0}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "algebra.json").write_text(json.dumps(good))
    with pytest.raises(QuizBankError) as cli_error:  # what `stoa quiz import bad.json` prints
        load_bank(str(tmp_path / "bad.json"))
    page = await chromium.page(
        f"{stoa_server.base}/dashboard?token={stoa_server.token('*', 'prof', 'instructor', name='Prof Ada')}",
        label="instructor")
    status = "document.querySelector('#quiz-bank-upload .quiz-bank-status').textContent"
    await page.set_input_files("#quiz-bank-upload input[type=file]", str(tmp_path / "bad.json"))
    await page.click("#quiz-bank-upload button[type=submit]")
    text = await wait_js(page, f"{status}.includes('not imported') && {status}")
    assert str(cli_error.value) in text
    await screenshot(page, artifacts_dir, "dashboard-quiz-bank-refused")
    await page.set_input_files("#quiz-bank-upload input[type=file]", str(tmp_path / "algebra.json"))
    await page.click("#quiz-bank-upload button[type=submit]")
    text = await wait_js(page, f"{status}.startsWith('Imported') && {status}")
    assert text == "Imported 2 questions into bank “algebra”."
    from storage.interactive import InteractiveRepository
    stored = await InteractiveRepository(stoa_server.app[STORE]).quiz_questions(bank="algebra")
    assert sorted(q["prompt"] for q in stored) == ["2+2?", "3*3?"]
    await screenshot(page, artifacts_dir, "dashboard-quiz-bank-imported")

    # The room page's Quiz panel has the same upload for staff, and none for students.
    (tmp_path / "geometry.json").write_text(json.dumps({**good, "bank": "geometry"}))
    teacher = await room_page(stoa_server, chromium, "quizroom", "prof", "instructor", "Prof Ada")
    student = await room_page(stoa_server, chromium, "quizroom", "sam", "student", "Sam")
    await teacher.click("#cr-tabs [data-tab=quiz]")
    await teacher.set_input_files("#cr-quiz #quiz-bank-upload input[type=file]", str(tmp_path / "geometry.json"))
    await teacher.click("#cr-quiz #quiz-bank-upload button[type=submit]")
    await wait_js(teacher, f"{status}.startsWith('Imported') && {status}.includes('geometry')")
    assert await student.locator("#quiz-bank-upload").count() == 0
    await screenshot(teacher, artifacts_dir, "room-quiz-bank-imported")
    assert not chromium.errors(), chromium.errors()


async def test_feedback_form_when_a_student_leaves(stoa_server, chromium, api, artifacts_dir):
    s = await live_session(api, "Poetry, period 3")
    room = s["room"]
    student = await room_page(stoa_server, chromium, room, "ann", "student", "Ann Lee")
    assert await student.text_content("#room-title") == "Poetry, period 3"
    assert await student.title() == "Poetry, period 3 · Stoa"
    await student.click("#btn-leave")
    await wait_js(student, "!!document.getElementById('feedback-form')")
    assert await student.text_content("#feedback-title") == "How was Poetry, period 3?"
    await student.check("#feedback-form input[name=rating][value='4']")
    await student.fill("#feedback-comment", "The sonnet examples helped")
    await screenshot(student, artifacts_dir, "room-feedback-form")
    await student.click("#feedback-send")
    await wait_js(student, "!!document.getElementById('feedback-done')")
    got = await stoa_server.app[STORE].feedback.get(s["id"], "ann")
    assert (got.rating, got.comment, got.name) == (4, "The sonnet examples helped", "Ann Lee")
    await screenshot(student, artifacts_dir, "room-feedback-sent")

    dashboard = await chromium.page(
        f"{stoa_server.base}/dashboard?token={stoa_server.token('*', 'prof', 'instructor', name='Prof')}",
        label="instructor")
    text = await wait_js(dashboard, "document.querySelector('#feedback-sessions li[data-session]')?.textContent")
    assert "Poetry, period 3" in text and "4 / 5 from 1 person" in text and "The sonnet examples helped" in text
    await dashboard.locator("#feedback-report").scroll_into_view_if_needed()
    await screenshot(dashboard, artifacts_dir, "dashboard-feedback")
    assert not chromium.errors(), chromium.errors()


async def test_anonymous_question_notice_and_hiding(stoa_server, chromium, api, artifacts_dir):
    note = "document.getElementById('qa-anon-note').textContent"
    # An ad hoc room: classmates don't see the name, the teacher does, and the page says so.
    plain = await room_page(stoa_server, chromium, "adhoc", "bo", "student", "Bo")
    await plain.click("#cr-tabs [data-tab=qa]")
    assert "the teacher sees your name" in await wait_js(plain, f"document.getElementById('classroom').classList.contains('ready') && {note}")
    await screenshot(plain, artifacts_dir, "room-qa-notice-teacher-sees")

    s = await live_session(api, "Ethics", qa_anonymous_to_staff=True)
    room = s["room"]
    teacher = await room_page(stoa_server, chromium, room, "prof", "instructor", "Prof")
    student = await room_page(stoa_server, chromium, room, "ann", "student", "Ann Lee")
    for page in (teacher, student):
        await page.click("#cr-tabs [data-tab=qa]")
    text = await wait_js(student, f"{note}.includes('everyone') && {note}")
    assert text == "Anonymous questions hide your name from everyone, the teacher included."
    await student.fill("#qa-text", "Is the essay graded?")
    await student.check("#qa-anon")
    await student.click("#qa-ask")
    shown = await wait_js(teacher, "document.querySelector('#qa-list li.question')?.textContent")
    assert "Is the essay graded?" in shown and "Anonymous" in shown and "Ann" not in shown
    await wait_js(student, "!!document.querySelector('#qa-list li.question.mine')")
    await screenshot(student, artifacts_dir, "room-qa-notice-hidden-student")
    await screenshot(teacher, artifacts_dir, "room-qa-hidden-teacher")
    assert not chromium.errors(), chromium.errors()


async def test_dev_form_room_carries_its_title_and_names(stoa_server, chromium, artifacts_dir):
    async def join(name: str, role: str, title: str = ""):
        page = await chromium.page(f"{stoa_server.base}/", label=role)
        await page.fill("input[name=room]", "chem-3")
        await page.fill("input[name=title]", title)
        await page.fill("input[name=name]", name)
        await page.select_option("select[name=role]", role)
        await page.click("#dev-form button[type=submit]")
        await page.wait_for_url("**/rooms/chem-3?token=*")
        await wait_js(page, JOINED, timeout=15)
        return page

    teacher = await join("Ms Ada", "instructor", "Chemistry, period 3")
    session = await stoa_server.app[STORE].sessions.get_by_room("chem-3")
    assert (session.title, session.status, session.instructor) == ("Chemistry, period 3", "live", "Ms_Ada")
    student = await join("Sam Roe", "student")
    for page in (teacher, student):
        assert await page.text_content("#room-title") == "Chemistry, period 3"
    names = await wait_js(student, "document.querySelectorAll('#participants li').length === 2 && "
                                   "document.getElementById('participants').textContent")
    assert "Ms Ada" in names and "Sam Roe" in names and "Ms_Ada" not in names
    await screenshot(student, artifacts_dir, "room-dev-form-title")
    assert not chromium.errors(), chromium.errors()
