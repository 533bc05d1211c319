"""Experiment (not committed): per-packet delay from transport-cc feedback on probes that fit the link and
probes that do not."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from shared.config import load_settings
from tests.test_browser_ice_drop import browser_args  # noqa: F401
from tests.test_browser_simulcast import browser_netns, publishing_three_layers, ROOM, RESIZE_JS, decodes  # noqa: F401
from tests.browser import inbound

pytestmark = [pytest.mark.browser]


@pytest.fixture
def server_settings(tmp_path, browser_netns):
    return load_settings(environ={}, overrides={
        "dev": True, "host": browser_netns.host_address, "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", browser_netns.host_address], "overload_control": False,
        "workers": 0, "downlink_transport_cc": True})


def link(l, rate):
    subprocess.run(["tc", "qdisc", "change", "dev", l.host_if, "root", "tbf", "rate", rate, "burst", "16kb",
                    "latency", "400ms"], check=True, capture_output=True, timeout=10)


async def test_delay(stoa_server, chromium, browser_netns):
    from signaling.room import ROOMS
    from sfu.probe import PaddingSender
    teacher, student, track = await publishing_three_layers(stoa_server, chromium)
    await student.evaluate(RESIZE_JS, [240, 135])
    await decodes(student, 320, 10, "q")
    sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
    leg = sub.downtrack(track.track_id)
    got = []
    sub.allocator.on_transport_feedback = lambda results, now: got.append((now, results))
    link(browser_netns, "600kbit")
    await asyncio.sleep(4)
    for rate in (300_000, 700_000, 300_000, 1_200_000):
        got.clear()
        t0 = time.monotonic()
        p = PaddingSender(leg, rate)
        await asyncio.sleep(1.5)
        p.stop()
        await asyncio.sleep(1.0)
        rs = sorted({r.seq: r for _, rr in got for r in rr}.values(), key=lambda r: r.seq)
        recv = [r for r in rs if r.arrival is not None]
        lost = len(rs) - len(recv)
        if not recv:
            print(f"rate {rate}: no results"); continue
        base = min(r.arrival - r.sent for r in recv)
        # delay by 250 ms bucket of send time
        buckets = {}
        for r in recv:
            buckets.setdefault(int((r.sent - t0) / 0.25), []).append((r.arrival - r.sent - base) * 1000)
        desc = " ".join(f"{k * 0.25:.2f}s:{max(v):.0f}ms" for k, v in sorted(buckets.items()))
        fb_gap = [round((b - a) * 1000) for (a, _), (b, _) in zip(got, got[1:])]
        # receive rate over the probe
        span = recv[-1].arrival - recv[0].arrival
        rx = sum(r.size for r in recv[1:]) * 8 / span / 1000 if span > 0 else 0
        tx_span = recv[-1].sent - recv[0].sent
        tx = sum(r.size for r in recv[1:]) * 8 / tx_span / 1000 if tx_span > 0 else 0
        print(f"rate {rate // 1000} kbps (+ q ~150): {len(rs)} results, {lost} lost, padding sent {tx:.0f} kbps, "
              f"received {rx:.0f} kbps; max extra delay per 250 ms of send time: {desc}; "
              f"feedback every {sorted(fb_gap)[len(fb_gap) // 2] if fb_gap else '?'} ms (median); "
              f"first feedback {(got[0][0] - t0) * 1000:.0f} ms after start")
        await asyncio.sleep(3)
    frames = max((s.get("framesDecoded", 0) for s in await inbound(student)), default=0)
    print("frames", frames)
