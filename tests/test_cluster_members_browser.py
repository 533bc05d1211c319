"""The room page as an edge member (docs/scaling.md, "Classroom state across nodes"): opened on a node that is
not the room's home, with `spread_members` on, the page stays there, decodes the teacher's video through the
relay and chats with a classmate on the home through the home's classroom."""

from __future__ import annotations

import aiohttp
import pytest

from tests.browser import screenshot, wait_frames_decoded, wait_js
from tests.fixtures.classroom_e2e import Member
from tests.test_cluster import node, redis_client  # noqa: F401 (fixture)
from tests.test_cluster_browser import CHAT_SHOWS, JOINED, teacher_on_a
from tests.test_cluster_members import On, chats

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_the_page_on_an_edge_node_decodes_the_teacher_and_chats_through_the_home(
        tmp_path, redis_url, redis_prefix, redis_client, chromium, artifacts_dir):  # noqa: F811
    room = "edgepage"
    env = {"STOA_SPREAD_MEMBERS": "true"}
    a, b = (node(tmp_path, n, redis_url, redis_prefix, env=env) for n in ("a", "b"))
    teacher = classmate = None
    try:
        async with aiohttp.ClientSession() as http:
            teacher = await teacher_on_a(http, a, b, room, redis_client, redis_prefix)
            classmate = await Member(On(a), room, "bo").start()
            page = await chromium.page(f"{b.base}/rooms/{room}?token={b.token(room, 'ada', 'student')}")
            await wait_js(page, JOINED, timeout=15)
            assert page.url.startswith(f"{b.base}/rooms/{room}?token="), page.url  # served where it landed
            assert (await page.evaluate("window.stoa.state.cluster"))["home"] == "a"
            await wait_frames_decoded(page, minimum=10, timeout=20)
            # The home's participants are listed (the teacher, bo), so the page does not say the host is away.
            await wait_js(page, "['teacher', 'bo'].every(i => window.stoa.state.participants.has(i))", timeout=10)
            # Its `joined` carried the home's relayed tracks: the list shows the teacher's camera on.
            await wait_js(page, "document.querySelector('#participants li[data-identity=\"teacher\"]')"
                                "?.dataset.camera === 'on'", timeout=10)

            await classmate.ok("chat.send", {"text": "hello from a"})
            await wait_js(page, CHAT_SHOWS % "hello from a", timeout=10)
            await page.fill("#chat-input", "hello from b")
            await page.click("#chat-send")
            await wait_js(page, CHAT_SHOWS % "hello from b", timeout=10)  # the home's copy, not an echo
            await classmate.wait(lambda p: p["type"] == "chat.message" and p["data"]["text"] == "hello from b")
            assert chats(classmate).count("hello from b") == 1
            await screenshot(page, artifacts_dir, "cluster-page-edge-member")
    finally:
        if classmate is not None:
            await classmate.close()
        if teacher is not None:
            await teacher.pc.close()
        a.stop()
        b.stop()
