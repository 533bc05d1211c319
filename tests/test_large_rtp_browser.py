"""Chromium as a WHEP viewer of a publisher that sends 1500-byte RTP packets: the forwarded SRTP
datagrams are over 1500 bytes (up to libwebrtc's 2048), and Chromium decodes them."""

from __future__ import annotations

import pytest

from sfu.aiortc_seam import rtp_payload_limit
from signaling.room import ROOMS
from tests.browser import inbound, wait_frames_decoded
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.test_large_rtp import OVERHEAD, SizeSink
from tests.test_whip_whep import ROOM, WhipPublisher, http, token, wait_no_peers, wait_until  # noqa: F401

WHEP_JS = """async ([url, token]) => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
  });
  const resp = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
                                 headers: {'Content-Type': 'application/sdp', Authorization: 'Bearer ' + token}});
  const body = await resp.text();
  if (resp.status !== 201) return resp.status + ' ' + body;
  await pc.setRemoteDescription({type: 'answer', sdp: body});
  window.whep = pc;
  window.whepLocation = resp.headers.get('Location');
  return resp.status;
}"""


@pytest.mark.browser
async def test_chromium_decodes_a_publisher_sending_1500_byte_packets(stoa_server, http, chromium):
    with rtp_payload_limit(1500 - OVERHEAD):
        pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "gst", "instructor")) \
            .publish(CounterVideoTrack(640, 480), ToneAudioTrack())
        room = stoa_server.app[ROOMS].rooms[ROOM]
        up = next(t for t in room.tracks() if t.kind == "video")
        sizes = SizeSink()
        up.add_sink(sizes)
        page = await chromium.page(stoa_server.base + "/")
        status = await page.evaluate(WHEP_JS, [f"{stoa_server.base}/whep/{ROOM}", token(stoa_server, "c", "viewer")])
        assert status == 201, status
        entry = await wait_frames_decoded(page, "window.whep", minimum=60, timeout=30)
        assert entry["frameWidth"] == 640 and entry["frameHeight"] == 480
        assert sizes.largest > 1480, f"the publisher sent packets of up to {sizes.largest} bytes"
        leg = next(d for _, d in room.participants["c"].subscriber.legs if d.kind == "video")
        assert leg.oversize_drops == 0 and leg.packets_sent > 100
        video = (await inbound(page, "video", "window.whep"))[0]
        assert video["packetsReceived"] > 100
        async with http.delete(stoa_server.base + await page.evaluate("window.whepLocation"),
                               headers={"Authorization": f"Bearer {token(stoa_server, 'c', 'viewer')}"}) as r:
            assert r.status == 200
        assert await pub.stop() == 200
    await wait_no_peers(stoa_server)
