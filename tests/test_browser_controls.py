"""Admission screens, teacher controls, muted by the teacher, the recording indicator and the end states of the
room page, in real headless Chromium (docs/room-page.md, "Admission and ends", "Teacher controls")."""

from __future__ import annotations

import asyncio
import time

import pytest

from signaling.room import ROOMS
from tests.browser import inbound, screenshot, wait_frames_decoded, wait_js
from tests.client import RoomClient
from tests.fixtures.recording import record_room

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]
VIEW = {"width": 1366, "height": 768}

# Counts the room sockets a page opens: a refused join must not be followed by another for 10 s.
COUNT_SOCKETS = """(() => {
  window.__sockets = 0;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) { super(url, protocols); if (String(url).includes('/ws/rooms/')) window.__sockets++; }
  };
})()"""


async def room_page(chromium, server, room, identity, role, *, label=None, **token_kw):
    ctx = await chromium.new_context(viewport=VIEW)
    await ctx.add_init_script(COUNT_SOCKETS)
    url = f"{server.base}/rooms/{room}?token={server.token(room, identity, role, **token_kw)}"
    return await chromium.page(url, label=label or identity, context=ctx)


async def screen_of(page, kind, timeout=15):
    await wait_js(page, f"document.getElementById('admission')?.dataset.screen === {kind!r} && "
                        "!document.getElementById('admission').hidden", timeout=timeout)
    return await page.inner_text("#admission")


async def joined(page, timeout=20):
    await wait_js(page, "window.stoa.state.joined === true", timeout=timeout)


async def session(api, title, **extra):
    return await api.ok("POST", "/api/sessions", auth=api.admin, json={"title": title, "instructor": "prof", **extra})


async def start(api, s):
    await api.ok("POST", f"/api/sessions/{s['id']}/start", auth=api.admin)


async def test_each_refusal_has_its_own_screen_and_no_retry(stoa_server, api, chromium, artifacts_dir):
    scheduled = await session(api, "Optics", scheduled_start=time.time() + 3600)
    full = await session(api, "Full house", capacity=1)
    locked = await session(api, "Locked", password="lens")
    for s in (full, locked):
        await start(api, s)
    await api.ok("POST", f"/api/sessions/{locked['id']}/bans", auth=api.admin, json={"identity": "eve", "reason": "spam"})
    sitting = await RoomClient(stoa_server.ws_base, full["room"], stoa_server.token(full["room"], "s1", "student")).connect()
    recorded = await record_room(stoa_server, "archive", 1.0)
    await api.ok("POST", f"/api/sessions/{recorded['session_id']}/end", auth=api.admin)

    pages = {
        "not-started": await room_page(chromium, stoa_server, scheduled["room"], "ann", "student"),
        "full": await room_page(chromium, stoa_server, full["room"], "s2", "student"),
        "banned": await room_page(chromium, stoa_server, locked["room"], "eve", "student"),
        "password": await room_page(chromium, stoa_server, locked["room"], "ann", "student"),
        "ended": await room_page(chromium, stoa_server, "archive", "sam", "student"),
    }
    texts = {kind: await screen_of(page, kind) for kind, page in pages.items()}
    assert "has not started yet" in texts["not-started"] and "scheduled for" in texts["not-started"]
    assert "joins by itself" in texts["not-started"]
    assert "This class is full" in texts["full"]
    assert "Reason: spam" in texts["banned"] and "apikey" not in texts["banned"]
    assert "needs a password" in texts["password"]
    assert "has ended" in texts["ended"]
    link = await pages["ended"].get_attribute("#admission a.recording-link", "href")
    assert link.startswith(f"/recordings/{recorded['row'].id}?token=")

    # A token for another room, refused at the join (a page whose token changed under it).
    other = await room_page(chromium, stoa_server, "chem", "ann", "student")
    await joined(other)
    await other.evaluate(f"window.stoa.cfg.token = {stoa_server.token('elsewhere', 'ann', 'student')!r}; "
                         "window.stoa.rejoin()")
    assert "another class" in await screen_of(other, "other-room")

    for kind, page in {**pages, "other-room": other}.items():
        await screenshot(page, artifacts_dir, f"admission-{kind}")
    await asyncio.sleep(10)  # no page tries again by itself
    counts = {kind: await page.evaluate("window.__sockets") for kind, page in pages.items()}
    assert counts == dict.fromkeys(pages, 1), counts
    assert await other.evaluate("window.__sockets") == 2
    assert not await pages["full"].evaluate("document.getElementById('banner').textContent.includes('reconnect')")

    # The password screen: a wrong one says so, the right one joins.
    page = pages["password"]
    await page.fill("#admission-password", "wrong")
    await page.click("#admission button[type=submit]")
    assert "password is wrong" in await screen_of(page, "password-wrong")
    await screenshot(page, artifacts_dir, "admission-password-wrong")
    await page.fill("#admission-password", "lens")
    await page.click("#admission button[type=submit]")
    await joined(page)
    assert await page.is_hidden("#admission")

    # The scheduled class starts: the waiting page joins by itself (a status check, then one join).
    await start(api, scheduled)
    await joined(pages["not-started"], timeout=20)
    assert await pages["not-started"].evaluate("window.__sockets") == 2

    # A link that has expired (checked when the page loads).
    expired = await chromium.page(
        f"{stoa_server.base}/rooms/chem?token={stoa_server.token('chem', 'ann', 'student', ttl=-60)}",
        label="expired", viewport=VIEW)
    assert "This link has expired" in await expired.inner_text("h1")
    await screenshot(expired, artifacts_dir, "admission-expired")
    await sitting.close()
    assert not chromium.errors(), chromium.errors()


async def audio_packets(page) -> int:
    return sum(e.get("packetsReceived", 0) for e in await inbound(page, "audio"))


async def video_frames(page) -> int:
    return sum(e.get("framesDecoded", 0) for e in await inbound(page, "video"))


async def growth(page, read, seconds=1.5) -> int:
    before = await read(page)
    await asyncio.sleep(seconds)
    return await read(page) - before


async def test_teacher_mutes_a_student_from_the_page(stoa_server, chromium, artifacts_dir):
    room = "ctl"
    teacher = await room_page(chromium, stoa_server, room, "prof", "instructor", name="Ms Ada")
    await joined(teacher)
    student = await room_page(chromium, stoa_server, room, "ann", "student", name="Ann", can_publish=True)
    classmate = await room_page(chromium, stoa_server, room, "bo", "student", name="Bo")
    await joined(student)
    await joined(classmate)
    await student.click("#btn-camera")
    await wait_frames_decoded(classmate, minimum=5, timeout=20)
    await wait_js(classmate, "(async () => { const s = []; (await window.stoa.state.sub.getStats()).forEach("
                             "x => s.push(x)); return s.some(x => x.type === 'inbound-rtp' && x.kind === 'audio' "
                             "&& x.packetsReceived > 10); })()", timeout=15)

    mute = "#participants li[data-identity=ann] .tile-controls button[data-action=mute-mic]"
    await wait_js(teacher, f"document.querySelector({mute!r}) && !document.querySelector({mute!r}).disabled", timeout=15)
    await teacher.click("[data-tab=people]")  # the participant list is the People tab
    await screenshot(teacher, artifacts_dir, "controls-teacher")
    await teacher.click(mute)

    # The student's page says so and the microphone button asks instead of unmuting.
    await wait_js(student, "document.getElementById('btn-mic').textContent === 'Muted by the teacher'")
    assert "The teacher muted your microphone" in await student.inner_text("#room-notices")
    # An unmute is refused by the server.
    await student.evaluate("window.__errors = []; window.stoa.on('error', (m) => window.__errors.push(m.code));"
                           "const [id] = [...window.stoa.state.ownTracks].find(([, t]) => t.source === 'microphone');"
                           "window.stoa.send({type: 'mute', track_id: id, muted: false});")
    await wait_js(student, "window.__errors.includes('muted_by_moderator')")
    mic = next(t for t in stoa_server.app[ROOMS].rooms[room].tracks() if t.source == "microphone")
    assert mic.muted
    await screenshot(student, artifacts_dir, "controls-student-muted")

    # Classmates see it muted, and its audio stops while the camera goes on decoding.
    await wait_js(classmate, "document.querySelector('#participants li[data-identity=ann]')?.dataset.mic === 'off'")
    assert "muted by the teacher" in await classmate.inner_text("#participants li[data-identity=ann]")
    await asyncio.sleep(0.5)  # packets already on the way
    assert await growth(classmate, audio_packets) == 0
    assert await growth(classmate, video_frames) > 0

    # The student asks; the teacher allows; the student unmutes and the audio flows again.
    await student.click("#btn-mic")
    await wait_js(teacher, "document.querySelector('#unmute-requests .room-notice[data-identity=ann]')")
    assert "Ann asks to unmute" in await teacher.inner_text("#unmute-requests")
    await screenshot(teacher, artifacts_dir, "controls-teacher-unmute-request")

    # Stop the camera meanwhile: classmates get a muted tile, not a frozen frame, and no more frames.
    await teacher.click("#participants li[data-identity=ann] .tile-controls button[data-action=stop-camera]")
    await wait_js(classmate, "document.querySelector('#stage .tile[data-participant=ann] .tile-veil:not([hidden])')")
    assert "camera stopped by the teacher" in await classmate.inner_text("#stage .tile[data-participant=ann]")
    await asyncio.sleep(0.5)
    assert await growth(classmate, video_frames) == 0
    await screenshot(classmate, artifacts_dir, "controls-classmate-sees-muted")

    await teacher.click("#unmute-requests .room-notice[data-identity=ann] button.primary")
    await wait_js(student, "document.getElementById('btn-mic').textContent === 'Unmute mic'")
    await student.click("#btn-mic")
    await wait_js(student, "document.getElementById('btn-mic').textContent === 'Mute mic'")
    await wait_js(classmate, "document.querySelector('#participants li[data-identity=ann]')?.dataset.mic === 'on'")
    assert await growth(classmate, audio_packets) > 0
    assert not chromium.errors(), chromium.errors()


async def test_recording_indicator_on_every_page(stoa_server, chromium, artifacts_dir):
    room = "rec"
    teacher = await room_page(chromium, stoa_server, room, "prof", "instructor", name="Ms Ada")
    students = [await room_page(chromium, stoa_server, room, f"s{i}", "student") for i in range(2)]
    pages = [teacher, *students]
    for page in pages:
        await joined(page)
    await teacher.click("#btn-camera")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 2", timeout=15)

    async def all_show(visible: bool, within: float) -> None:
        expr = f"document.getElementById('rec-indicator').hidden === {'false' if visible else 'true'}"
        await asyncio.gather(*(wait_js(p, expr, timeout=within, interval=0.05) for p in pages))

    await teacher.click("#btn-record")
    await all_show(True, within=2.0)
    assert await teacher.inner_text("#btn-record") == "Stop recording"
    await screenshot(students[0], artifacts_dir, "recording-indicator-student")

    # A joiner is told before joining, then sees the indicator.
    late = await room_page(chromium, stoa_server, room, "late", "student")
    assert "being recorded" in await screen_of(late, "consent")
    assert await late.evaluate("window.__sockets") == 0, "nothing joins before the joiner agrees"
    await screenshot(late, artifacts_dir, "recording-consent")
    await late.click("#admission button.primary")
    await joined(late)
    assert await late.is_visible("#rec-indicator")
    pages.append(late)

    await teacher.click("#btn-record")
    await all_show(False, within=2.0)
    assert await teacher.inner_text("#btn-record") == "Start recording"
    assert not chromium.errors(), chromium.errors()


async def test_remove_ban_leave_and_end_states(stoa_server, api, chromium, artifacts_dir):
    s = await session(api, "Ends")
    await start(api, s)
    room = s["room"]
    teacher = await room_page(chromium, stoa_server, room, "prof", "instructor", name="Ms Ada")
    ann, bo, cy = [await room_page(chromium, stoa_server, room, i, "student", name=i.title()) for i in ("ann", "bo", "cy")]
    for page in (teacher, ann, bo, cy):
        await joined(page)
    await wait_js(teacher, "document.querySelectorAll('#participants li .tile-controls').length === 3", timeout=15)

    await teacher.click("[data-tab=people]")  # the participant list is the People tab

    async def moderate(action, identity, reason):
        await teacher.click(f"#participants li[data-identity={identity}] .tile-controls button[data-action={action}]")
        await teacher.fill("#mod-reason", reason)
        if action == "ban":
            await screenshot(teacher, artifacts_dir, "controls-ban-dialog")
        await teacher.click("#mod-confirm")

    chat_input = "#cr-chat textarea, #cr-chat input"
    await moderate("remove", "ann", "take a break")
    text = await screen_of(ann, "end-removed")
    assert "You were removed" in text and "Reason: take a break" in text
    assert await ann.evaluate(f"[...document.querySelectorAll({chat_input!r})].every(e => e.disabled)")
    assert await ann.evaluate("document.querySelectorAll('#participants li').length") == 0
    await screenshot(ann, artifacts_dir, "end-removed")
    await ann.click("#admission button.primary")  # Rejoin
    await joined(ann)
    assert await ann.evaluate(f"[...document.querySelectorAll({chat_input!r})].some(e => !e.disabled)")

    await moderate("ban", "bo", "spam")
    text = await screen_of(bo, "end-banned")
    assert "Reason: spam" in text and "apikey" not in text
    assert await bo.locator("#admission button").count() == 0, "no Rejoin after a ban"
    await screenshot(bo, artifacts_dir, "end-banned")

    await cy.click("#btn-leave")
    assert "You left" in await screen_of(cy, "end-left")
    await screenshot(cy, artifacts_dir, "end-left")

    await teacher.click("#btn-leave")
    await wait_js(ann, "document.getElementById('room-notices').textContent.includes('The host left')")
    await screenshot(ann, artifacts_dir, "end-host-left")

    await api.ok("POST", f"/api/sessions/{s['id']}/end", auth=api.admin)
    assert "The class has ended" in await screen_of(ann, "end-ended")
    assert await ann.locator("#admission button").count() == 0
    await screenshot(ann, artifacts_dir, "end-ended")
    assert not chromium.errors(), chromium.errors()
