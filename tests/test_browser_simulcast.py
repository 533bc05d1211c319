"""Simulcast from the room page (docs/simulcast.md)."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser import inbound, wait_js
from tests.serve import eventually
from tests.test_browser_room import ROOM, teacher_and_student

pytestmark = pytest.mark.browser

OUTBOUND_JS = """async () => {
    const out = [];
    (await window.stoa.state.pub.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video')
        out.push({mid: s.mid, rid: s.rid, width: s.frameWidth, sent: s.framesSent, active: s.active,
                  limit: s.qualityLimitationReason, bytes: s.bytesSent});
      if (s.type === 'candidate-pair' && s.nominated) out.push({bwe: s.availableOutgoingBitrate});
    });
    return out; }"""


async def test_diag(stoa_server, chromium):
    from signaling.room import ROOMS

    teacher, student = await teacher_and_student(stoa_server, chromium)
    await teacher.click("#btn-camera")
    for i in range(8):
        await asyncio.sleep(1)
        if i == 2:
            open("/tmp/scdiag/offer.sdp", "w").write(await teacher.evaluate("window.stoa.state.pub.localDescription.sdp"))
            open("/tmp/scdiag/answer.sdp", "w").write(await teacher.evaluate("window.stoa.state.pub.remoteDescription.sdp"))
        print(await teacher.evaluate(OUTBOUND_JS))
        print([(s.get("mid"), s.get("frameWidth"), s.get("framesDecoded")) for s in await inbound(student)])
        sub = stoa_server.app[ROOMS].rooms[ROOM].participants["stud"].subscriber
        print("alloc", sub.allocator.estimate, sub.allocator.cap, sub.allocator.congestion_events, sub.allocator.sizes, [d.stats().get("simulcast") for _, d in sub.legs], [round(d.retransmit.media_rate*8) for _, d in sub.legs], [d.quality.level for _, d in sub.legs])
    await teacher.click("#btn-screen")
    for i in range(12):
        await asyncio.sleep(1)
        print(await teacher.evaluate(OUTBOUND_JS))
        print([(s.get("mid"), s.get("frameWidth"), s.get("framesDecoded")) for s in await inbound(student)])
        pub = stoa_server.app[ROOMS].rooms[ROOM].participants["teach"].publisher
        for t in pub.tracks.values():
            print(t.source, t.packets_received, [(l.track_id, l.packets_received, round(l.bitrate())) for l in t.layers or []])
        print("alloc", sub.allocator.estimate, sub.allocator.cap, sub.allocator.congestion_events, [d.stats().get("simulcast") for _, d in sub.legs], [round(d.retransmit.media_rate*8) for _, d in sub.legs], [d.quality.level for _, d in sub.legs])
        demux = pub.pc.getTransceivers()[0].receiver.transport._stoa_simulcast
        print("demux", len(demux.streams), demux.dropped_probes, demux.dropped_unbound, pub.transport_cc[0].packets_seen, pub.transport_cc[0].feedback_sent)
