"""Names on the recording pages, over a real recording through the SFU: files labelled by the source the
publisher declared (camera / microphone), session titles on the list and the player, and an ad hoc room's
chat on the review timeline (its classroom history lives under the room's derived key)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from recorder.service import RECORDINGS
from tests.browser import screenshot, wait_js
from tests.client import RoomClient
from tests.fixtures.recording import operator_token, record_room


async def page(stoa_server, path: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stoa_server.base}{path}?token={operator_token(stoa_server)}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_ad_hoc_room_has_a_timeline_and_labelled_files(stoa_server, chromium, artifacts_dir):
    room = "adhoc-lab"
    student = await RoomClient(stoa_server.ws_base, room, stoa_server.token(room, "sam", "student", name="Sam")).connect()
    try:
        async def chat_while_recording():
            while stoa_server.app[RECORDINGS].status(room) is None:
                await asyncio.sleep(0.05)
            await student.send({"type": "data", "payload": {"v": 1, "type": "chat.send", "id": "c1",
                                                             "data": {"text": "ad hoc hello"}}})

        chatter = asyncio.ensure_future(chat_while_recording())
        made = await record_room(stoa_server, room, 2.0, session=False)
        await asyncio.wait_for(chatter, 5)
    finally:
        await student.close()
    row = made["row"]
    assert row.session_id is None
    labels = {f["source"]: f["label"] for f in row.files}
    assert labels == {"camera": "teacher · camera", "microphone": "teacher · microphone"}
    html = await page(stoa_server, f"/recordings/{row.id}")
    assert "ad hoc hello" in html and 'id="timeline"' in html and "timeline-empty" not in html
    assert "no scheduled session" in html
    review = await chromium.page(f"{stoa_server.base}/recordings/{row.id}?token={operator_token(stoa_server)}",
                                 label="review")
    choices = await wait_js(review, "document.querySelectorAll('#files label').length === 2 && "
                                    "[...document.querySelectorAll('#files label')].map((l) => l.textContent)")
    assert sorted(choices) == ["teacher · camera", "teacher · microphone"]
    timeline = await review.text_content("#timeline")
    assert "ad hoc hello" in timeline and "Chat · Sam" in timeline
    await screenshot(review, artifacts_dir, "review-ad-hoc-timeline-labels")


async def test_session_title_on_the_list_and_the_player(stoa_server, short_recording):
    row = short_recording["row"]
    listing = await page(stoa_server, "/recordings")
    assert "Lesson in review" in listing and "<th>Session</th>" in listing
    player = await page(stoa_server, f"/recordings/{row.id}")
    assert '<strong id="rec-title">Lesson in review</strong>' in player


async def test_review_page_shows_the_sessions_feedback_to_staff_only(stoa_server, short_recording):
    from storage.store import STORE

    row, sid = short_recording["row"], short_recording["session_id"]
    await stoa_server.app[STORE].feedback.put(sid, "sam", name="Sam", rating=4, comment="good pace", now=1.0)
    player = await page(stoa_server, f"/recordings/{row.id}")
    assert 'id="feedback"' in player and "4.0 / 5 from 1 person" in player and "Sam: good pace" in player
    async with aiohttp.ClientSession() as http:  # a participant sees the recording, not the comments
        async with http.get(f"{stoa_server.base}/recordings/{row.id}?token="
                            f"{stoa_server.token('review', 'sam', 'student')}") as resp:
            assert resp.status == 200 and 'id="feedback"' not in await resp.text()
