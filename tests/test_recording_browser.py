"""The review page in headless Chromium: an operator's recording plays, and clicking a chat event seeks it."""

from __future__ import annotations

import pytest

from recorder.service import RECORDINGS
from tests.browser import screenshot, wait_js
from tests.fixtures.recording import operator_token

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_args():
    # The test starts playback from script, which Chromium's autoplay policy refuses without a gesture.
    return ["--autoplay-policy=no-user-gesture-required"]


async def test_operator_plays_a_recording_and_a_chat_event_seeks(stoa_server, short_recording, chromium,
                                                                  artifacts_dir):
    row = short_recording["row"]
    page = await chromium.page(f"{stoa_server.base}/recordings/{row.id}?token={operator_token(stoa_server)}",
                               label="review")
    try:
        kinds = await wait_js(page, "window.stoaReview && stoaReview.elements.length >= 2 "
                                    "&& stoaReview.elements.map((e) => e.tagName)")
        assert kinds == ["VIDEO", "AUDIO"]
        await wait_js(page, "stoaReview.elements[0].readyState >= 2", timeout=10)
        await page.evaluate("stoaReview.elements[0].play()")
        start = await page.evaluate("stoaReview.elements[0].currentTime")
        await wait_js(page, f"stoaReview.elements[0].currentTime > {start} + 0.5", timeout=10)
        assert await page.evaluate("stoaReview.elements[0].videoWidth") == 320
        # The recorded video decodes in the browser, not just a clock that advances.
        decoded = await page.evaluate("stoaReview.elements[0].getVideoPlaybackQuality().totalVideoFrames")
        assert decoded >= 10, decoded

        # Back to the start, paused; then click the chat event two seconds in.
        await page.evaluate("stoaReview.elements[0].pause(); stoaReview.seek(0)")
        await wait_js(page, "stoaReview.position() < 0.3")
        item = page.locator("#timeline li", has_text="two seconds in")
        offset = float(await item.get_attribute("data-offset"))
        assert 1.0 < offset < 2.5
        await item.click()
        position = await wait_js(page, f"Math.abs(stoaReview.position() - {offset}) < 0.35 && stoaReview.position()")
        assert position >= offset - 0.35
        await wait_js(page, "document.querySelector('#timeline li.current')?.textContent.includes('two seconds in')"
                            " || document.querySelector('#timeline li.current')?.textContent.includes('Ready?')")
        assert await page.locator("#timeline li").count() == 4
        assert await page.locator("svg.activity").count() == 1

        await page.evaluate("stoaReview.report()")
        views = await stoa_server.app[RECORDINGS].repo.views(row.id)
        assert [v.identity for v in views] == ["olga"] and views[0].last_position > 0
        assert not chromium.errors(), chromium.errors()
    finally:
        await screenshot(page, artifacts_dir, "recording-review")


@pytest.mark.slow
async def test_exported_composite_is_what_the_page_plays(stoa_server, short_recording, chromium):
    row = short_recording["row"]
    manager = stoa_server.app[RECORDINGS]
    job = await manager.export(row.id, "grid")
    await job.task
    assert job.status == "done", job.error
    page = await chromium.page(f"{stoa_server.base}/recordings/{row.id}?token={operator_token(stoa_server)}",
                               label="composite")
    names = await wait_js(page, "window.stoaReview && stoaReview.elements.length && "
                                "stoaReview.elements.map((e) => e.dataset.name)")
    assert names == ["composite-grid.mp4"]
    await wait_js(page, "stoaReview.elements[0].readyState >= 2", timeout=10)
    assert await page.evaluate("stoaReview.elements[0].videoWidth") == 1280
    await page.evaluate("stoaReview.elements[0].play()")
    await wait_js(page, "stoaReview.elements[0].currentTime > 0.5", timeout=10)
    assert not chromium.errors(), chromium.errors()
