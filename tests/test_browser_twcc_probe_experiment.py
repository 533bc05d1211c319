"""Experiment (not a test to keep): does Chromium send transport-cc feedback for padding stamped alone,
and keep sending REMB for media? Prints rates."""
from __future__ import annotations

import asyncio
import time

import pytest

from shared.config import load_settings
from tests.test_browser_ice_drop import browser_args  # noqa: F401
from tests.test_browser_simulcast import browser_netns, publishing_three_layers, ROOM  # noqa: F401
from tests.browser import inbound

pytestmark = [pytest.mark.browser]


@pytest.fixture
def server_settings(tmp_path, browser_netns):
    return load_settings(environ={}, overrides={
        "dev": True, "host": browser_netns.host_address, "port": 8080, "data_dir": str(tmp_path / "data"),
        "ice_addresses": ["127.0.0.1", browser_netns.host_address], "overload_control": False,
        "workers": 0, "downlink_transport_cc": True})


async def test_experiment(stoa_server, chromium):
    from signaling.room import ROOMS
    from sfu.probe import PaddingSender
    teacher, student, track = await publishing_three_layers(stoa_server, chromium)
    sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
    leg = sub.downtrack(track.track_id)
    rembs = []
    stock = leg.on_remb

    def counted(bitrate):
        rembs.append((time.monotonic(), bitrate))
        stock(bitrate)
    leg.on_remb = counted
    print("ext ids", leg._ext_ids, "params", leg.seam.params.header_extensions)

    async def phase(name, seconds):
        f0, r0, t0 = dict(sub.twcc_stats), len(rembs), time.monotonic()
        d0 = max((s.get("framesDecoded", 0) for s in await inbound(student)), default=0)
        await asyncio.sleep(seconds)
        dt = time.monotonic() - t0
        d1 = max((s.get("framesDecoded", 0) for s in await inbound(student)), default=0)
        f1 = sub.twcc_stats
        print(f"{name}: {dt:.1f}s feedback/s {(f1['feedback'] - f0['feedback']) / dt:.1f} "
              f"REMB/s {(len(rembs) - r0) / dt:.1f} results {f1['results'] - f0['results']} "
              f"received {f1['received'] - f0['received']} probe_received {f1['probe_received'] - f0['probe_received']} "
              f"frames {d1 - d0} padding_sent {leg.padding_sent} history {sub.twcc.packets_sent} "
              f"unknown {sub.twcc.unknown} REMBs {[round(b / 1000) for _, b in rembs[r0:]]}")
    await phase("baseline", 5)
    padding = PaddingSender(leg, 300_000)
    await phase("padding 300k", 6)
    padding.stop()
    await phase("after", 5)
    sub.allocate()
    print("allocator transport_cc", getattr(sub.allocator, "transport_cc", None))
