"""Codecs over WHIP: any H.264 profile is taken and each leg keeps it; codecs Stoa cannot forward get 406."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCRtpSender

from sfu.aiortc_seam import register_h264_profiles
from sfu.peer import UnsupportedCodec, check_forwardable, codec_preferences, h264_profile, same_codec
from signaling.room import ROOMS
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import client_pc, make_offer
from tests.test_whip_whep import (ROOM, SDP, WhepViewer, WhipPublisher, assert_counters_healthy, http,  # noqa: F401
                                  token, wait_no_peers, wait_until)


def h264_caps(profile_level_id: str, mode: str = "1"):
    register_h264_profiles()
    caps = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in caps if c.mimeType.lower() == "video/h264"
              and c.parameters.get("profile-level-id") == profile_level_id
              and str(c.parameters.get("packetization-mode")) == mode]
    assert chosen, f"H.264 {profile_level_id} mode {mode} is registered"
    return chosen + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def test_h264_profiles_match_as_rfc_6184_says():
    assert h264_profile({"profile-level-id": "640c1f", "packetization-mode": "1"}) != \
        h264_profile({"profile-level-id": "64001f", "packetization-mode": "1"}), "constrained high is not high"
    assert same_codec("video/H264", {"profile-level-id": "64001f", "packetization-mode": "1"},
                      "video/h264", {"profile-level-id": "640028", "packetization-mode": "1"}), "levels may differ"
    assert not same_codec("video/H264", {"profile-level-id": "42e01f", "packetization-mode": "1"},
                          "video/H264", {"profile-level-id": "42e01f", "packetization-mode": "0"})
    assert same_codec("video/H264", {}, "video/H264", {"profile-level-id": "42e01f"}), \
        "no profile-level-id means constrained baseline"
    assert not same_codec("video/VP8", {}, "video/H264", {})
    assert h264_profile({"profile-level-id": "zz"}) is None


def test_each_leg_is_restricted_to_the_publishers_profile():
    register_h264_profiles()
    for fmtp in ({"profile-level-id": "4d001f", "packetization-mode": "1"},
                 {"profile-level-id": "64001e", "packetization-mode": "1"},
                 {"profile-level-id": "42e01f", "packetization-mode": "0"}):
        prefs = codec_preferences("video", "video/H264", fmtp)
        h264 = [c for c in prefs if c.mimeType.lower() == "video/h264"]
        assert len(h264) == 1 and same_codec("video/H264", h264[0].parameters, "video/H264", fmtp)
        assert prefs[-1].mimeType.lower() == "video/rtx"


async def offer_with_codec(name: str) -> str:
    """An aiortc sendonly offer whose video codec is renamed to `name` (AV1, H265): what such an encoder offers."""
    pc = client_pc()
    video = pc.addTransceiver(CounterVideoTrack(), direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    video.setCodecPreferences([c for c in caps if c.mimeType.lower() == "video/vp8"])
    pc.addTransceiver(ToneAudioTrack(), direction="sendonly")
    sdp = await make_offer(pc)
    await pc.close()
    return re.sub(r"VP8/90000", f"{name}/90000", sdp)


@pytest.mark.parametrize("codec", ["AV1", "H265"])
async def test_a_codec_stoa_cannot_forward_gets_406_naming_what_it_takes(stoa_server, http, codec):
    offer = await offer_with_codec(codec)
    with pytest.raises(UnsupportedCodec):
        check_forwardable(offer)
    pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(CounterVideoTrack(), ToneAudioTrack())
    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
    await wait_until(lambda: "video" in viewer.collectors, 10, "the video track")
    await viewer.video.wait_frames(10, timeout=10)

    # The same identity as the live publisher: its session must survive the refused offer.
    async with http.post(f"{stoa_server.base}/whip/{ROOM}", data=offer, headers={
            "Content-Type": SDP, "Authorization": f"Bearer {token(stoa_server, 'obs', 'instructor')}"}) as r:
        text = await r.text()
        assert r.status == 406, text
        assert codec in text and "VP8" in text and "H.264" in text and "Opus" in text, text
        assert r.headers.get("Access-Control-Allow-Origin") == "*"
    frames = viewer.video.frames
    await wait_until(lambda: viewer.video.frames > frames + 10, 10, "the viewer to keep decoding")
    assert set(stoa_server.app[ROOMS].rooms[ROOM].participants) == {"obs", "v"}
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


@pytest.mark.parametrize("profile_level_id", ["4d001f", "640c1f", "64001f"], ids=["main", "constrained-high", "high"])
async def test_h264_main_and_high_publishers_reach_viewers_on_the_same_profile(stoa_server, http, profile_level_id):
    pub = WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor"))
    video = pub.pc.addTransceiver(CounterVideoTrack(), direction="sendonly")
    video.setCodecPreferences(h264_caps(profile_level_id))
    await pub.publish(ToneAudioTrack())
    assert f"profile-level-id={profile_level_id}" in pub.answer
    room = stoa_server.app[ROOMS].rooms[ROOM]
    up = next(t for t in room.tracks() if t.kind == "video")
    assert up.codec_parameters["profile-level-id"] == profile_level_id

    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
    await wait_until(lambda: "video" in viewer.collectors, 10, "the video track")
    await viewer.video.wait_frames(30, timeout=15)
    assert_counters_healthy(viewer.video.counters)
    leg = next(d for _, d in room.participants["v"].subscriber.legs if d.kind == "video")
    assert leg.seam.params.parameters["profile-level-id"] == profile_level_id
    assert [c for c in leg.seam.params.offered if c[0].lower() == "video/h264"] == \
        [c for c in leg.seam.params.offered if c[1].get("profile-level-id") == profile_level_id], \
        "the leg negotiated that profile only"
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


async def test_the_answer_keeps_payload_types_chrome_takes_from_35_to_63(stoa_server, http):
    """Chrome numbers its extra H.264 profiles 35-63; the answer must use those numbers, not reuse
    one of its own for another codec (Chrome: "Duplicate payload type with conflicting codec")."""
    pc = client_pc()
    video = pc.addTransceiver(CounterVideoTrack(), direction="sendonly")
    video.setCodecPreferences(h264_caps("64001f"))
    sdp = await make_offer(pc)
    await pc.close()
    section = sdp[sdp.index("m=video"):]
    pt = int(re.search(r"a=rtpmap:(\d+) H264/90000", section).group(1))
    rtx = int(re.search(rf"a=fmtp:(\d+) apt={pt}", section).group(1))
    offer = re.sub(rf"\b{pt}\b", "45", re.sub(rf"\b{rtx}\b", "46", section))
    offer = sdp[:sdp.index("m=video")] + offer
    async with http.post(f"{stoa_server.base}/whip/{ROOM}", data=offer, headers={
            "Content-Type": SDP, "Authorization": f"Bearer {token(stoa_server, 'chrome', 'instructor')}"}) as r:
        answer = await r.text()
        assert r.status == 201, answer
    video_answer = answer[answer.index("m=video"):]
    assert "a=rtpmap:45 H264/90000" in video_answer and "a=fmtp:46 apt=45" in video_answer, video_answer
    pts = re.findall(r"a=rtpmap:(\d+) ", video_answer)
    assert len(pts) == len(set(pts)), f"each payload type once: {pts}"
    async with http.delete(stoa_server.base + r.headers["Location"],
                           headers={"Authorization": f"Bearer {token(stoa_server, 'chrome', 'instructor')}"}) as d:
        assert d.status == 200
    await wait_no_peers(stoa_server)


async def test_a_whep_viewer_that_cannot_take_the_broadcast_codec_gets_406(stoa_server, http):
    pub = WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor"))
    video = pub.pc.addTransceiver(CounterVideoTrack(), direction="sendonly")
    video.setCodecPreferences(h264_caps("64001f"))
    await pub.publish(ToneAudioTrack())
    pc = client_pc()
    viewer_video = pc.addTransceiver("video", direction="recvonly")
    viewer_video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                      if c.mimeType.lower() == "video/vp8"])
    offer = await make_offer(pc)
    await pc.close()
    async with http.post(f"{stoa_server.base}/whep/{ROOM}", data=offer, headers={
            "Content-Type": SDP, "Authorization": f"Bearer {token(stoa_server, 'v', 'viewer')}"}) as r:
        text = await r.text()
        assert r.status == 406, text
        assert "VP8" in text and "64001f" in text, text
    assert set(stoa_server.app[ROOMS].rooms[ROOM].participants) == {"obs"}, "the refused viewer left no trace"
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)
