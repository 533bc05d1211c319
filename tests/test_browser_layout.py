"""The room page's layout, stage, devices and accessibility in real headless Chromium (docs/room-page.md,
"Layout", "Devices", "Accessibility"). Two Chromium launches: the classroom at 1366x768 and on a phone (with a
screen share taking the stage, the whiteboard, axe), then the device switch, the pre-join check and axe on the
dashboards and the review page. Screenshots of every state go to artifacts/layout-*.png."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.browser import screenshot, wait_frames_decoded, wait_js
from tests.fixtures.recording import operator_token

pytestmark = pytest.mark.browser
ROOM = "layout"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 667}
READY = ("document.getElementById('classroom').classList.contains('ready') && window.stoa.state.dataChannel"
         " && window.stoa.state.dataChannel.readyState === 'open'")
AXE = Path(__file__).parent / "node" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture
def browser_args():
    # Three fake cameras, so a device can be switched mid-session. fake_device_1 is a depth camera (Y16) whose
    # frames WebRTC does not encode; the test switches from fake_device_0 to fake_device_2 (MJPEG).
    return ["--use-fake-device-for-media-stream=device-count=3"]


@pytest.fixture(scope="module")
def axe_js() -> str:
    assert AXE.is_file(), f"{AXE} is missing: scripts/test installs tests/node (npm ci)"
    return AXE.read_text(encoding="utf-8")


async def axe_serious(page, axe_js: str) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each (rule: first offending node)."""
    await page.add_script_tag(content=axe_js)
    found = await page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ["violations"] });
        return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
          .map((v) => `${v.id} (${v.impact}): ${v.nodes.length} nodes, e.g. ${v.nodes[0].html.slice(0, 160)}`);
    }""")
    return found


async def assert_accessible(page, axe_js: str) -> None:
    found = await axe_serious(page, axe_js)
    assert not found, "\n".join(found)


async def open_room(server, chromium, identity, role, name, viewport=LAPTOP, room=ROOM):
    token = server.token(room, identity, role, name=name)
    page = await chromium.page(f"{server.base}/rooms/{room}?token={token}", label=identity, viewport=viewport)
    page.on("dialog", lambda d: pytest.fail(f"the page opened a {d.type} dialog: {d.message}"))
    await wait_js(page, READY, timeout=15)
    return page


INSIDE = """(sel) => {
  const el = document.querySelector(sel);
  if (!el) return `${sel}: missing`;
  const r = el.getBoundingClientRect();
  const ok = r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 && r.right <= innerWidth + 0.5
    && r.bottom <= innerHeight + 0.5;
  if (!ok) return `${sel}: ${JSON.stringify(r)} outside ${innerWidth}x${innerHeight}`;
  // Not hidden under something else or scrolled out of its panel: the page hits it at its centre.
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return hit && (el.contains(hit) || hit.contains(el)) ? "" : `${sel}: covered by ${hit && hit.outerHTML.slice(0, 80)}`;
}"""
NO_SCROLL = "document.documentElement.scrollHeight <= innerHeight && document.documentElement.scrollWidth <= innerWidth"


async def assert_inside(page, *selectors):
    problems = [p for p in [await page.evaluate(INSIDE, s) for s in selectors] if p]
    assert not problems, problems


# The picture a <video> shows (object-fit: contain) and how many frames its own track decoded.
PICTURE = """(sel) => {
  const v = document.querySelector(sel);
  if (!v || !v.videoWidth) return null;
  const scale = Math.min(v.clientWidth / v.videoWidth, v.clientHeight / v.videoHeight);
  return { width: v.videoWidth * scale, viewport: innerWidth, track: v.srcObject.getVideoTracks()[0].id };
}"""
TRACK_FRAMES = """async (trackId) => {
  let n = -1;
  (await window.stoa.state.sub.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video" && s.trackIdentifier === trackId) n = s.framesDecoded;
  });
  return n;
}"""


async def test_classroom_fits_a_laptop_and_a_phone_and_a_share_takes_the_stage(stoa_server, chromium, artifacts_dir,
                                                                              axe_js):
    teacher = await open_room(stoa_server, chromium, "prof", "instructor", "Ms Ada")
    ben = await open_room(stoa_server, chromium, "ben", "student", "Ben")
    cleo = await open_room(stoa_server, chromium, "cleo", "student", "Cleo")
    await screenshot(teacher, artifacts_dir, "layout-prejoin-laptop")
    assert not await ben.is_visible("#prejoin")   # students here may not publish: nothing to check

    # The camera on, a chat, two questions and a poll with a vote: the instructor's busy page.
    await teacher.click("#prejoin-start")
    await cleo.click("[data-tab=qa]")
    for n, text in enumerate(("Is this on the test?", "Can you go over the second example again, more slowly?"), 1):
        await cleo.fill("#qa-text", text)
        await cleo.click("#qa-ask")
        await wait_js(cleo, f"document.querySelectorAll('#qa-list .question').length === {n} || "
                            "document.getElementById('cr-toasts').textContent")
    await ben.fill("#chat-input", "Hello from Ben")
    await ben.click("#chat-send")
    await teacher.click("[data-tab=qa]")
    await wait_js(teacher, "document.querySelectorAll('#qa-list .question').length === 2")
    await teacher.click("[data-tab=polls]")
    await teacher.fill("#poll-question", "Ready for the test?")
    await teacher.fill("#poll-options", "Yes\nNo\nMaybe")
    await teacher.click("#poll-create")
    await cleo.click("[data-tab=polls]")
    await wait_js(cleo, "document.querySelector('.poll.open input[value=\"0\"]')")
    await cleo.check(".poll.open input[value='0']")
    await cleo.click(".poll.open .vote-btn")
    await wait_js(teacher, "document.querySelector('.poll .bar[data-index=\"0\"]').dataset.count === '1'")
    await wait_js(teacher, "document.querySelectorAll('#stage .tile').length === 1", timeout=20)
    await wait_js(teacher, "document.getElementById('people-count').textContent === '3'")
    await wait_frames_decoded(cleo, minimum=5, timeout=20)

    await wait_js(teacher, NO_SCROLL)
    await assert_inside(teacher, "#stage", "#chat-input", "#chat-send", "#btn-leave", ".poll .bar[data-index='2']",
                        "#people-count")
    assert await teacher.evaluate("document.getElementById('stage').dataset.layout") == "grid"
    await screenshot(teacher, artifacts_dir, "layout-instructor-laptop-grid")
    await assert_accessible(teacher, axe_js)

    # The instructor shares the screen: it takes the stage at the students, cameras become a filmstrip.
    await teacher.click("#btn-screen")
    await wait_js(teacher, "document.getElementById('btn-screen').textContent === 'Stop sharing'")
    assert await teacher.get_attribute("#btn-screen", "aria-pressed") == "true"
    lead = "#stage-main .tile[data-source=screen] video"
    picture = await wait_js(cleo, f"document.querySelector('{lead}') && ({PICTURE})(\"{lead}\")", timeout=20)
    first = await cleo.evaluate(TRACK_FRAMES, picture["track"])
    await wait_js(cleo, f"({TRACK_FRAMES})('{picture['track']}').then((n) => n > {first} + 10)", timeout=15)
    picture = await cleo.evaluate(PICTURE, lead)
    assert picture["width"] >= 0.6 * picture["viewport"], picture
    assert await cleo.evaluate("document.getElementById('stage').dataset.layout") == "presenter"
    assert await cleo.evaluate("document.querySelectorAll('#tiles .tile').length") == 1   # the filmstrip
    await wait_js(cleo, NO_SCROLL)
    await assert_inside(cleo, "#chat-input", "#btn-leave", lead)
    await screenshot(cleo, artifacts_dir, "layout-student-laptop-presenter")

    # Pinning a camera puts it on the stage instead; unpinning gives the stage back to the share.
    await cleo.hover("#tile-prof-camera")
    await cleo.click("#tile-prof-camera .tile-btn.pin")
    await wait_js(cleo, "document.querySelector('#stage-main #tile-prof-camera')")
    await screenshot(cleo, artifacts_dir, "layout-student-pinned-camera")
    await cleo.focus("#tile-prof-camera")
    await cleo.keyboard.press("p")
    await wait_js(cleo, f"document.querySelector('{lead}')")

    # The whiteboard takes the stage; its text tool is a box on the board, no window.prompt.
    await teacher.click("[data-tab=board]")
    await teacher.click("#wb-tools .tool[data-tool=text]")
    box = await teacher.locator("#wb-canvas").bounding_box()
    assert box["width"] >= 0.5 * LAPTOP["width"], box
    await teacher.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    await wait_js(teacher, "document.activeElement.id === 'wb-text'")
    await teacher.keyboard.type("Photosynthesis")
    await teacher.keyboard.press("Enter")
    await cleo.click("[data-tab=board]")
    await wait_js(cleo, "document.getElementById('cr-board').offsetWidth > 0.5 * innerWidth")
    await screenshot(teacher, artifacts_dir, "layout-instructor-whiteboard")
    await screenshot(cleo, artifacts_dir, "layout-student-whiteboard")

    # A student on a phone: no page scroll either way, the chat is a tab, the stage above it.
    phone = await open_room(stoa_server, chromium, "dina", "student", "Dina", viewport=PHONE)
    await wait_js(phone, "document.querySelector('#stage-main .tile[data-source=screen] video')?.videoWidth > 0",
                  timeout=20)
    await wait_js(phone, NO_SCROLL)
    await assert_inside(phone, "#stage", "#btn-leave", "#btn-devices", "#chat-input")
    await screenshot(phone, artifacts_dir, "layout-student-phone-chat")
    await phone.click("[data-tab=polls]")
    await assert_inside(phone, ".poll .bar[data-index='0']")
    await screenshot(phone, artifacts_dir, "layout-student-phone-polls")
    await assert_accessible(phone, axe_js)
    await assert_accessible(cleo, axe_js)

    # Stopping the share gives the button its words back and the stage its grid.
    await teacher.click("#btn-screen")
    await wait_js(teacher, "document.getElementById('btn-screen').textContent === 'Share screen'")
    await wait_js(cleo, "!document.querySelector('#stage-main .tile[data-source=screen]')", timeout=15)
    assert not chromium.errors(), chromium.errors()


SENDERS = """() => window.stoa.state.pub.getTransceivers().filter((t) => t.sender.track)
  .map((t) => ({ mid: t.mid, kind: t.sender.track.kind, device: t.sender.track.getSettings().deviceId,
                 track: t.sender.track.id }))"""


async def test_device_switch_keeps_the_sender_and_the_pages_pass_axe(stoa_server, short_recording, chromium,
                                                                     artifacts_dir, axe_js):
    teacher = await chromium.page(label="prof", viewport=LAPTOP)
    # Every publish offer the page sends, to show that the switch sends none.
    await teacher.add_init_script("""(() => {
        window.sentTypes = [];
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
          try { window.sentTypes.push(JSON.parse(data).type); } catch (e) {}
          return send.call(this, data);
        };
    })()""")
    await teacher.goto(f"{stoa_server.base}/rooms/{ROOM}?token="
                       f"{stoa_server.token(ROOM, 'prof', 'instructor', name='Ms Ada')}")
    await wait_js(teacher, READY, timeout=15)
    student = await open_room(stoa_server, chromium, "ben", "student", "Ben")

    # The pre-join check: preview, two cameras to pick from, the microphone level moves (the fake one beeps).
    await teacher.click("#dev-test")
    await wait_js(teacher, "document.getElementById('dev-preview').videoWidth > 0", timeout=10)
    options = await wait_js(teacher, "document.querySelectorAll('#dev-camera option').length === 3 && Object.fromEntries("
                                     "[...document.querySelectorAll('#dev-camera option')].map((o) => [o.textContent, o.value]))")
    cameras = [options["fake_device_0"], options["fake_device_2"]]
    await wait_js(teacher, "document.getElementById('mic-level').value > 0", timeout=10)
    await screenshot(teacher, artifacts_dir, "layout-prejoin-preview")
    await assert_accessible(teacher, axe_js)
    await teacher.select_option("#dev-camera", cameras[0])
    await teacher.click("#prejoin-start")
    await wait_js(teacher, "window.stoa.state.ownTracks.size === 2 && window.stoa.state.pub.signalingState === 'stable'",
                  timeout=20)
    entry = await wait_frames_decoded(student, minimum=5, timeout=20)
    entry = await wait_frames_decoded(student, minimum=30, above=entry["framesDecoded"], timeout=20)
    before = await teacher.evaluate(SENDERS)
    video_before = next(s for s in before if s["kind"] == "video")
    assert video_before["device"] == cameras[0]
    await teacher.evaluate("window.videoSender = window.stoa.state.pub.getSenders().find((s) => s.track?.kind === 'video');"
                           "window.stoa.state.pub.addEventListener('negotiationneeded', () => window.renegotiated = true);"
                           "window.sentTypes.length = 0")

    # Mid-session: the other camera, from the Devices dialog.
    await teacher.click("#btn-devices")
    await wait_js(teacher, "document.getElementById('devices-dialog').open")
    await teacher.select_option("#dev-camera", cameras[1])
    await wait_js(teacher, f"({SENDERS})().some((s) => s.kind === 'video' && s.device === '{cameras[1]}')", timeout=10)
    await screenshot(teacher, artifacts_dir, "layout-devices-dialog")
    await assert_accessible(teacher, axe_js)
    after = await teacher.evaluate(SENDERS)
    video_after = next(s for s in after if s["kind"] == "video")
    assert video_after["mid"] == video_before["mid"] and video_after["track"] != video_before["track"]
    assert [s["mid"] for s in after] == [s["mid"] for s in before]
    assert await teacher.evaluate("window.stoa.state.pub.getSenders().includes(window.videoSender) && "
                                  "window.videoSender.track.getSettings().deviceId") == cameras[1]
    await asyncio.sleep(1.0)   # time for an offer, had one been made
    assert await teacher.evaluate("window.stoa.state.pub.signalingState") == "stable"
    assert "publish" not in await teacher.evaluate("window.sentTypes")
    assert not await teacher.evaluate("Boolean(window.renegotiated)")
    await wait_frames_decoded(student, minimum=30, above=entry["framesDecoded"] + 10, timeout=20)
    await teacher.keyboard.press("Escape")
    await screenshot(student, artifacts_dir, "layout-student-after-device-switch")

    # axe on the dashboards, the recordings list and the review page.
    base = stoa_server.base
    pages = {
        "dashboard-instructor": f"{base}/dashboard?token={stoa_server.token('*', 'prof', 'instructor', name='Ms Ada')}",
        "dashboard-student": f"{base}/dashboard?token={stoa_server.token('*', 'stu', 'student', name='Stu')}",
        "recordings": f"{base}/recordings?token={operator_token(stoa_server)}",
        "review": f"{base}/recordings/{short_recording['row'].id}?token={operator_token(stoa_server)}",
    }
    found = {}
    for name, url in pages.items():
        page = await chromium.page(url, label=name, viewport=LAPTOP)
        await page.wait_for_load_state("networkidle")
        await screenshot(page, artifacts_dir, f"layout-axe-{name}")
        found[name] = await axe_serious(page, axe_js)
        await page.close()
    assert found == {name: [] for name in pages}
    assert not chromium.errors(), chromium.errors()
