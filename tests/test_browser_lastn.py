"""Last-N on the room page: with last_n = 1 and three aiortc cameras, Chromium decodes only the first
publisher's video and shows avatars on the other tiles; pinning a tile brings its video (decoded) and turns
the other into an avatar."""

from __future__ import annotations

import pytest

from tests.browser import screenshot, wait_js
from tests.client import RoomClient
from tests.media import CounterVideoTrack

pytestmark = pytest.mark.browser
ROOM = "lastn"

# framesDecoded per publishing participant, from getStats() and the offer's track map (mid -> participant).
DECODED_JS = """(async () => {
  const out = {};
  (await window.stoa.state.sub.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp" || s.kind !== "video") return;
    const info = window.stoa.state.trackInfo.get(s.mid);
    if (info) out[info.participant] = s.framesDecoded || 0;
  });
  return out;
})()"""


@pytest.fixture
def server_settings(server_settings):
    server_settings.last_n = 1
    return server_settings


async def decoded(page) -> dict:
    return await page.evaluate(DECODED_JS)


async def only_decoding(page, who: str, everyone: list[str], timeout: float = 15.0) -> None:
    """`who`'s video decodes more frames and the others' do not, over one second."""
    await wait_js(page, f"({DECODED_JS}).then((d) => (d[{who!r}] || 0) > 0)", timeout=timeout)
    before = await decoded(page)
    await page.wait_for_timeout(1500)
    after = await decoded(page)
    grew = {p for p in everyone if after.get(p, 0) > before.get(p, 0)}
    assert grew == {who}, (before, after)


async def test_page_shows_avatars_for_videos_not_forwarded_and_a_pin_brings_one_back(stoa_server, chromium,
                                                                                      artifacts_dir):
    names = {"p1": "Ada Lovelace", "p2": "Bo Chen", "p3": "Cy Young"}
    publishers = []
    try:
        for identity, name in names.items():  # published in this order: p1 is sent first
            client = await RoomClient(stoa_server.ws_base, ROOM, stoa_server.token(
                ROOM, identity, "student", can_publish=True, name=name)).connect()
            publishers.append(client)
            await client.publish(CounterVideoTrack(fps=10), sources=["camera"])
        page = await chromium.page(
            f"{stoa_server.base}/rooms/{ROOM}?token={stoa_server.token(ROOM, 'viewer', 'viewer', name='Viewer')}",
            label="viewer")
        await wait_js(page, "document.querySelectorAll('#stage .tile[data-participant^=\"p\"]').length === 3", 20)
        await only_decoding(page, "p1", list(names))
        avatars = await wait_js(page, "(() => { const t = [...document.querySelectorAll('.tile.not-forwarded')]; "
                                      "return t.length === 2 && t.map((el) => el.dataset.participant + ':' + "
                                      "el.querySelector('.avatar').textContent).sort(); })()", 10)
        assert avatars == ["p2:BC", "p3:CY"]
        assert not await page.evaluate("document.getElementById('tile-p1-camera').classList.contains('not-forwarded')")
        await screenshot(page, artifacts_dir, "lastn-avatars")

        # The Pin button on p3's tile pins p3 at the server: its video comes back, p1's becomes an avatar.
        await page.evaluate("document.querySelector('#tile-p3-camera .tile-btn.pin').click()")
        await only_decoding(page, "p3", list(names))
        await wait_js(page, "!document.getElementById('tile-p3-camera').classList.contains('not-forwarded') && "
                            "document.getElementById('tile-p1-camera').classList.contains('not-forwarded')", 10)
        await screenshot(page, artifacts_dir, "lastn-pinned")
        assert not chromium.errors(), chromium.errors()
    finally:
        for client in publishers:
            await client.close()
