"""The classroom panels on the room page in headless Chromium: chat, a poll with live bars, the whiteboard."""

from __future__ import annotations

import pytest

from tests.browser import screenshot, wait_js
from tests.client import RoomClient

pytestmark = pytest.mark.browser
ROOM = "browser-class"
READY = "document.getElementById('classroom').classList.contains('ready')"
CHANNEL_OPEN = "window.stoa.state.dataChannel && window.stoa.state.dataChannel.readyState === 'open'"


async def open_room(server, chromium, identity: str, role: str, name: str):
    token = server.token(ROOM, identity, role, name=name)
    page = await chromium.page(f"{server.base}/rooms/{ROOM}?token={token}", label=identity)
    await wait_js(page, READY, timeout=15)
    await wait_js(page, CHANNEL_OPEN, timeout=15)
    return page


async def test_student_chat_appears_at_the_instructor(stoa_server, chromium, artifacts_dir):
    teacher = await open_room(stoa_server, chromium, "prof", "instructor", "Prof")
    student = await open_room(stoa_server, chromium, "stu", "student", "Stu")
    await student.fill("#chat-input", "Can you repeat the last slide?")
    await student.click("#chat-send")
    await wait_js(teacher, "[...document.querySelectorAll('#chat-list .msg')].some("
                           "(li) => li.textContent.includes('Can you repeat the last slide?') && li.dataset.identity === 'stu')")
    # The instructor replies; the reply quotes the question at the student.
    await teacher.locator("#chat-list .msg[data-identity=stu] button", has_text="Reply").click()
    await teacher.fill("#chat-input", "Sure")
    await teacher.click("#chat-send")
    await wait_js(student, "[...document.querySelectorAll('#chat-list .msg')].some("
                           "(li) => li.textContent.includes('Sure') && li.querySelector('.reply-quote'))")
    await screenshot(teacher, artifacts_dir, "classroom-chat-instructor")
    assert not chromium.errors(), chromium.errors()


# The chat list as the reader sees it: where it is scrolled, how far from the bottom, the lines, the button.
CHAT_VIEW = """(() => {
  const l = document.getElementById('chat-list'), jump = document.getElementById('chat-new');
  return {top: l.scrollTop, gap: l.scrollHeight - l.scrollTop - l.clientHeight, lines: l.querySelectorAll('.msg').length,
          button: jump.hidden ? null : jump.textContent,
          anchor: window.__anchor ? window.__anchor.getBoundingClientRect().top - l.getBoundingClientRect().top : null,
          same: Boolean(window.__first && window.__first.isConnected)};
})()"""


@pytest.mark.timeout(60)
async def test_chat_keeps_the_readers_place(stoa_server, chromium, artifacts_dir):
    """Lines are added and removed one by one: scrolled up, new lines leave the view where it is and a button
    counts them, a line deleted above the view does not move it; at the bottom the list follows new lines."""
    bob = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(ROOM, "bob", "student", name="Bob")).connect()
    sent = 0

    async def bob_says(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            sent += 1
            await bob.send({"type": "data", "payload": {"v": 1, "type": "chat.send", "id": f"b{sent}",
                                                        "data": {"text": f"Bob's line {sent}"}}})
    try:
        await bob_says(10)   # the chat bucket's burst
        page = await open_room(stoa_server, chromium, "stu", "student", "Stu")
        await wait_js(page, "document.querySelectorAll('#chat-list .msg').length === 10")
        view = await page.evaluate(CHAT_VIEW)
        assert view["top"] > 0 and view["gap"] <= 2, view           # it overflows, and opens at the bottom

        # The reader scrolls up to the 4th line (the scroll event handled before anything arrives).
        await page.evaluate("""new Promise((done) => {
          const l = document.getElementById('chat-list'), lines = l.querySelectorAll('.msg');
          window.__first = lines[0];
          window.__anchor = lines[3];
          l.addEventListener('scroll', () => done(), { once: true });
          l.scrollTop += lines[3].getBoundingClientRect().top - l.getBoundingClientRect().top;
        })""")
        before = await page.evaluate(CHAT_VIEW)
        assert before["gap"] > 50 and abs(before["anchor"]) <= 1, before
        await bob_says(3)
        await wait_js(page, "document.querySelectorAll('#chat-list .msg').length === 13")
        after = await page.evaluate(CHAT_VIEW)
        assert after["top"] == before["top"] and after["anchor"] == before["anchor"], (before, after)
        assert after["button"] == "3 new messages" and after["same"], after   # appended, nothing redrawn

        # Bob deletes his first line, above the view: the line in view stays where it is on screen.
        first = await page.evaluate("window.__first.dataset.id")
        await bob.send({"type": "data", "payload": {"v": 1, "type": "chat.delete", "id": "del",
                                                    "data": {"message_id": int(first)}}})
        await wait_js(page, "document.querySelectorAll('#chat-list .msg').length === 12")
        deleted = await page.evaluate(CHAT_VIEW)
        assert abs(deleted["anchor"] - before["anchor"]) <= 1 and deleted["top"] < before["top"], (before, deleted)
        await screenshot(page, artifacts_dir, "classroom-chat-scrolled-up")

        # The button takes the reader down; at the bottom the list follows the next line.
        await page.click("#chat-new")
        await wait_js(page, f"(({CHAT_VIEW}).gap <= 2) && document.getElementById('chat-new').hidden")
        await bob_says(1)
        await wait_js(page, "document.querySelectorAll('#chat-list .msg').length === 13")
        followed = await page.evaluate(CHAT_VIEW)
        assert followed["gap"] <= 2 and followed["button"] is None, followed
        assert not chromium.errors(), chromium.errors()
    finally:
        await bob.close()


async def test_poll_vote_moves_the_instructors_bar(stoa_server, chromium, artifacts_dir):
    teacher = await open_room(stoa_server, chromium, "prof", "instructor", "Prof")
    student = await open_room(stoa_server, chromium, "stu", "student", "Stu")
    await teacher.click("[data-tab=polls]")
    await teacher.fill("#poll-question", "Ready for the test?")
    await teacher.fill("#poll-options", "Yes\nNo\nMaybe")
    await teacher.click("#poll-create")
    await wait_js(teacher, "document.querySelector('.poll.open .bar[data-index=\"0\"]')")
    assert await teacher.evaluate("document.querySelector('.poll .bar[data-index=\"1\"]').dataset.count") == "0"

    await student.click("[data-tab=polls]")
    await wait_js(student, "document.querySelector('.poll.open input[value=\"1\"]')")
    await student.check(".poll.open input[value='1']")
    await student.click(".poll.open .vote-btn")
    await wait_js(teacher, "document.querySelector('.poll .bar[data-index=\"1\"]').dataset.count === '1'")
    width = await teacher.evaluate("document.querySelector('.poll .bar[data-index=\"1\"] .fill').style.width")
    assert width == "100%"
    await wait_js(student, "document.querySelector('.poll .bar[data-index=\"1\"]')?.dataset.count === '1'")
    await teacher.locator(".poll").first.scroll_into_view_if_needed()
    await screenshot(teacher, artifacts_dir, "classroom-poll-instructor")
    await teacher.click(".poll.open .close-btn")
    await wait_js(student, "document.querySelector('.poll.closed')")
    assert not chromium.errors(), chromium.errors()


PIXEL = """([x, y]) => {
  const c = document.getElementById('wb-canvas');
  const d = c.getContext('2d').getImageData(Math.round(x * c.width), Math.round(y * c.height), 1, 1).data;
  return [d[0], d[1], d[2]];
}"""


async def test_instructor_stroke_appears_on_the_students_canvas(stoa_server, chromium, artifacts_dir):
    teacher = await open_room(stoa_server, chromium, "prof", "instructor", "Prof")
    student = await open_room(stoa_server, chromium, "stu", "student", "Stu")
    for page in (teacher, student):
        await page.click("[data-tab=board]")
    assert await student.evaluate(PIXEL, [0.5, 0.5]) == [255, 255, 255]
    await teacher.click("#wb-tools .swatch[data-color='#e53935']")
    await teacher.select_option("#wb-size", "16")
    box = await teacher.locator("#wb-canvas").bounding_box()
    y = box["y"] + box["height"] * 0.5
    await teacher.mouse.move(box["x"] + box["width"] * 0.2, y)
    await teacher.mouse.down()
    for i in range(1, 13):
        await teacher.mouse.move(box["x"] + box["width"] * (0.2 + 0.05 * i), y, steps=2)
    await teacher.mouse.up()
    await wait_js(student, "document.getElementById('wb-canvas') && true")
    red = [229, 57, 53]
    await wait_js(student, f"(({PIXEL})([0.5, 0.5])).join() === '{','.join(map(str, red))}'")
    assert await student.evaluate(PIXEL, [0.75, 0.5]) == red
    assert await student.evaluate(PIXEL, [0.5, 0.2]) == [255, 255, 255]
    # Students may not draw until the instructor allows it.
    assert await student.evaluate("document.getElementById('wb-tools').hidden") is True
    await teacher.click("#wb-permit-all")
    await wait_js(student, "document.getElementById('wb-tools').hidden === false")
    await student.locator("#wb-canvas").scroll_into_view_if_needed()
    await screenshot(student, artifacts_dir, "classroom-whiteboard-student")
    assert not chromium.errors(), chromium.errors()


async def test_quiz_popup_qa_and_hands(stoa_server, chromium, artifacts_dir):
    from classroom.interactive import import_bank
    from storage.store import STORE

    await import_bank(stoa_server.app[STORE], {"bank": "b", "questions": [
        {"prompt": "2 + 2 = ?", "choices": ["4", "5"], "answer": 0, "explanation": "Counting."}]})
    teacher = await open_room(stoa_server, chromium, "prof", "instructor", "Prof")
    student = await open_room(stoa_server, chromium, "stu", "student", "Stu")

    await teacher.click("[data-tab=quiz]")
    await teacher.fill("#quiz-bank", "b")
    await teacher.click("#quiz-start")
    await wait_js(student, "!document.getElementById('quiz-popup').hidden")
    assert "2 + 2" in await student.inner_text("#quiz-prompt")
    await wait_js(student, "/\\d+ s/.test(document.getElementById('quiz-countdown').textContent)")
    await student.click("#quiz-popup .choice[data-index='0']")
    await wait_js(student, "document.getElementById('quiz-verdict')?.textContent.includes('Right')")
    await screenshot(student, artifacts_dir, "classroom-quiz-student")
    await wait_js(teacher, "document.querySelector('#quiz-progress tr[data-identity=stu] .right')")
    await student.locator("#quiz-popup button", has_text="Close").click()
    await wait_js(student, "document.getElementById('quiz-popup').hidden")

    await student.click("[data-tab=qa]")
    await student.fill("#qa-text", "Will this be graded?")
    await student.check("#qa-anon")
    await student.click("#qa-ask")
    await teacher.click("[data-tab=qa]")
    await wait_js(teacher, "document.querySelector('#qa-list .question')?.textContent.includes('asked anonymously')")
    assert "Stu" in await teacher.inner_text("#qa-list .question")
    await teacher.locator("#qa-list .question .answer-input").fill("No.")
    await teacher.locator("#qa-list .question button", has_text="Answer").first.click()
    await wait_js(student, "document.querySelector('#qa-list .question .answer')?.textContent === 'No.'")

    await student.click("#hand-btn")
    await wait_js(teacher, "document.querySelector('#hand-queue li[data-identity=stu]')")
    await wait_js(student, "document.getElementById('hand-status').textContent.includes('#1')")
    await teacher.click("#hand-queue li[data-identity=stu] button")
    await wait_js(student, "document.getElementById('hand-btn').textContent.includes('Raise')")
    assert not chromium.errors(), chromium.errors()
