"""WHIP ingest and WHEP egress end to end: real HTTP, real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import fractions
import time

import aiohttp
import numpy as np
import pytest
from aiortc import RTCRtpSender
from av import VideoFrame

from sfu.aiortc_seam import decoder_running
from signaling.room import ROOMS
from tests.media import VIDEO_CLOCK, CounterVideoTrack, ToneAudioTrack, draw_counter
from tests.peers import FrameCollector, apply_answer, client_pc, make_offer

ROOM = "physics"
SDP = "application/sdp"


class OffsetCounterTrack(CounterVideoTrack):
    """Counter frames numbered from `base`, so frames of a second source are told apart."""

    def __init__(self, base: int, **kw):
        super().__init__(**kw)
        self.base = base

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.count / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = draw_counter(self.base + self.count, self.width, self.height)
        frame = VideoFrame.from_ndarray(np.stack([img] * 3, axis=-1), format="rgb24")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


def h264_only(kind: str = "video"):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.mimeType.lower() in ("video/h264", "video/rtx")]


class WhipPublisher:
    """What OBS does: one offer over HTTP, the answer back, DELETE to stop."""

    def __init__(self, http: aiohttp.ClientSession, base: str, room: str, token: str):
        self.http, self.url, self.token = http, f"{base}/whip/{room}", token
        self.base = base
        self.pc = client_pc()
        self.location: str | None = None
        self.answer: str | None = None

    async def publish(self, *tracks, h264: bool = False) -> "WhipPublisher":
        for track in tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if h264 and track.kind == "video":
                transceiver.setCodecPreferences(h264_only())
        offer = await make_offer(self.pc)
        async with self.http.post(self.url, data=offer, headers={
                "Content-Type": SDP, "Authorization": f"Bearer {self.token}"}) as resp:
            body = await resp.text()
            assert resp.status == 201, f"WHIP POST answered {resp.status}: {body}"
            assert resp.content_type == SDP
            self.location = resp.headers["Location"]
            self.etag = resp.headers.get("ETag")
            self.answer = body
        await apply_answer(self.pc, self.answer)
        return self

    async def stop(self) -> int:
        async with self.http.delete(self.base + self.location,
                                    headers={"Authorization": f"Bearer {self.token}"}) as resp:
            status = resp.status
        await self.pc.close()
        return status


class WhepViewer:
    """A recvonly video+audio offer; decodes what the server sends."""

    def __init__(self, http: aiohttp.ClientSession, base: str, room: str, token: str):
        self.http, self.url, self.token, self.base = http, f"{base}/whep/{room}", token, base
        self.pc = client_pc()
        self.collectors: dict[str, FrameCollector] = {}
        self.location: str | None = None
        self.connected_at: float | None = None
        self.pc.on("track", lambda track: self.collectors.setdefault(track.kind, FrameCollector(track)))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = asyncio.get_event_loop().time()

    async def start(self, *, h264: bool = False) -> "WhepViewer":
        video = self.pc.addTransceiver("video", direction="recvonly")
        if h264:
            video.setCodecPreferences(h264_only())
        self.pc.addTransceiver("audio", direction="recvonly")
        offer = await make_offer(self.pc)
        async with self.http.post(self.url, data=offer, headers={
                "Content-Type": SDP, "Authorization": f"Bearer {self.token}"}) as resp:
            body = await resp.text()
            assert resp.status == 201, f"WHEP POST answered {resp.status}: {body}"
            self.location = resp.headers["Location"]
            self.etag = resp.headers.get("ETag")
        await apply_answer(self.pc, body)
        return self

    @property
    def video(self) -> FrameCollector:
        return self.collectors["video"]

    @property
    def audio(self) -> FrameCollector:
        return self.collectors["audio"]

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async def poll():
            while self.connected_at is None:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(poll(), timeout)

    async def stop(self) -> int:
        async with self.http.delete(self.base + self.location,
                                    headers={"Authorization": f"Bearer {self.token}"}) as resp:
            status = resp.status
        for c in self.collectors.values():
            c.stop()
        await self.pc.close()
        return status


def assert_counters_healthy(counters: list[int], *, min_ratio: float = 0.9) -> None:
    assert counters, "no video frame was decoded"
    assert counters == sorted(counters), "frames arrive in the order sent"
    assert len(set(counters)) == len(counters), "no frame is decoded twice"
    span = counters[-1] - counters[0] + 1
    assert len(counters) >= min_ratio * span, f"decoded {len(counters)} of {span} frames sent"


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_event_loop().time() + timeout
    while not predicate():
        if asyncio.get_event_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_no_peers(server) -> None:
    manager = server.app[ROOMS]
    await wait_until(lambda: not manager.peers.live, 5.0, "the server to close every peer connection")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def token(server, identity: str, role: str, room: str = ROOM, **kw) -> str:
    return server.token(room, identity, role, **kw)


async def test_whip_publish_reaches_three_whep_viewers_and_a_late_one(stoa_server, http):
    video = CounterVideoTrack()
    pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(video, ToneAudioTrack())
    assert pub.location.startswith(f"/whip/{ROOM}/")
    assert "m=video" in pub.answer and "m=audio" in pub.answer

    viewers = [await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, f"v{i}", "viewer")).start()
               for i in range(3)]
    for v in viewers:
        await wait_until(lambda: "video" in v.collectors and "audio" in v.collectors, 10, "both tracks")
        await v.video.wait_frames(60, timeout=20)
        await v.audio.wait_frames(50, timeout=10)
    sent_before = video.count
    await asyncio.sleep(1.0)

    room = stoa_server.app[ROOMS].rooms[ROOM]
    for up in room.tracks():
        assert not decoder_running(up.receiver), "the SFU must not decode a WHIP track"
    for v in viewers:
        assert_counters_healthy(v.video.counters)
        assert v.video.counters[-1] >= sent_before - 15, "viewers keep up with the publisher"

    # A viewer joining late: its first frame follows its connection within a second.
    late = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "late", "viewer")).start()
    await late.wait_connected()
    await wait_until(lambda: "video" in late.collectors, 5, "the late viewer's video track")
    await late.video.wait_frames(1, timeout=5)
    assert late.video.first_frame_at - late.connected_at < 1.0
    await late.video.wait_frames(30, timeout=10)
    assert_counters_healthy(late.video.counters)

    for v in [*viewers, late]:
        assert await v.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)
    assert stoa_server.app[ROOMS].peers.live == set()


async def test_whep_viewer_before_publish_then_source_switch(stoa_server, http):
    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "early", "viewer")).start()
    await viewer.wait_connected()
    await asyncio.sleep(0.5)
    assert not viewer.collectors.get("video") or viewer.video.frames == 0

    first = OffsetCounterTrack(0)
    pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(first, ToneAudioTrack())
    await wait_until(lambda: "video" in viewer.collectors, 5, "the video track")
    await viewer.video.wait_frames(30, timeout=10)
    await viewer.audio.wait_frames(25, timeout=10)
    assert_counters_healthy(viewer.video.counters)

    # OBS restarts its stream: a new WHIP session of the same identity replaces the old one.
    second = OffsetCounterTrack(10_000)
    pub2 = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(second, ToneAudioTrack())
    await wait_until(lambda: any(c >= 10_000 for c in viewer.video.counters), 10,
                     "frames of the new source")
    audio_before = viewer.audio.frames
    n_before = sum(1 for c in viewer.video.counters if c >= 10_000)
    await asyncio.sleep(1.5)
    after = [c for c in viewer.video.counters if c >= 10_000]
    assert len(after) >= n_before + 30, "the same viewer leg keeps decoding after the switch"
    assert_counters_healthy(after)
    old = [c for c in viewer.video.counters if c < 10_000]
    assert viewer.video.counters == old + after, "no frame of the old source after the new one"
    assert viewer.audio.frames > audio_before + 40, "audio continues after the switch"

    assert await viewer.stop() == 200
    assert await pub2.stop() == 200
    await pub.pc.close()  # its session was already replaced
    await wait_no_peers(stoa_server)


async def test_obs_like_h264_publish_is_forwarded_as_h264(stoa_server, http):
    pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(CounterVideoTrack(), ToneAudioTrack(), h264=True)
    assert "H264" in pub.answer
    room = stoa_server.app[ROOMS].rooms[ROOM]
    assert {t.mime_type.lower() for t in room.tracks()} == {"video/h264", "audio/opus"}

    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v", "viewer")).start()
    await wait_until(lambda: "video" in viewer.collectors, 5, "the video track")
    await viewer.video.wait_frames(30, timeout=15)
    assert_counters_healthy(viewer.video.counters)
    leg = room.participants["v"].subscriber.legs
    video_leg = next(d for _, d in leg if d.kind == "video")
    assert video_leg.seam.params.mime_type.lower() == "video/h264", "the WHEP leg is restricted to H264"
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


async def test_early_whep_viewer_follows_an_h264_publisher(stoa_server, http):
    """The viewer negotiated every codec before anything was published; the leg switches to H.264."""
    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "early", "viewer")).start()
    await viewer.wait_connected()
    pub = await WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(CounterVideoTrack(), ToneAudioTrack(), h264=True)
    await wait_until(lambda: "video" in viewer.collectors, 5, "the video track")
    await viewer.video.wait_frames(30, timeout=15)
    assert_counters_healthy(viewer.video.counters)
    room = stoa_server.app[ROOMS].rooms[ROOM]
    video_leg = next(d for _, d in room.participants["early"].subscriber.legs if d.kind == "video")
    assert video_leg.seam.params.mime_type.lower() == "video/h264"
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


NO_MEDIA_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")


async def test_bad_requests_get_clear_answers_and_the_room_keeps_serving(stoa_server, http):
    base = stoa_server.base
    pub = await WhipPublisher(http, base, ROOM, token(stoa_server, "obs", "instructor")) \
        .publish(CounterVideoTrack(), ToneAudioTrack())
    watcher = await WhepViewer(http, base, ROOM, token(stoa_server, "watcher", "viewer")).start()
    await wait_until(lambda: "video" in watcher.collectors, 5, "the video track")
    await watcher.video.wait_frames(10, timeout=10)

    offer_pc = client_pc()
    offer_pc.addTransceiver("video", direction="recvonly")
    good_offer = await make_offer(offer_pc)
    await offer_pc.close()
    teacher2 = token(stoa_server, "t2", "instructor")

    def bearer(tok: str) -> dict:
        return {"Authorization": f"Bearer {tok}", "Content-Type": SDP}

    cases = [
        # (method, path, headers, body, expected status, header that must be present)
        ("POST", f"/whip/{ROOM}", bearer(teacher2), "hello", 400, None),
        ("POST", f"/whip/{ROOM}", bearer(teacher2), "v=0\r\nnonsense", 400, None),
        ("POST", f"/whip/{ROOM}", bearer(teacher2), NO_MEDIA_SDP, 400, None),
        ("POST", f"/whep/{ROOM}", bearer(token(stoa_server, "v9", "viewer")), "garbage", 400, None),
        ("POST", f"/whep/{ROOM}", bearer(token(stoa_server, "v9", "viewer")), NO_MEDIA_SDP, 400, None),
        # The live publisher's own identity sending garbage must not replace its session.
        ("POST", f"/whip/{ROOM}", bearer(token(stoa_server, "obs", "instructor")), "junk", 400, None),
        ("POST", f"/whip/{ROOM}", {"Content-Type": SDP}, good_offer, 401, "WWW-Authenticate"),
        ("POST", f"/whip/{ROOM}", bearer("not.a.jwt"), good_offer, 401, "WWW-Authenticate"),
        ("POST", f"/whip/{ROOM}", bearer(token(stoa_server, "t3", "instructor", ttl=-60)), good_offer,
         401, "WWW-Authenticate"),
        ("POST", f"/whip/{ROOM}", bearer(token(stoa_server, "t3", "instructor", room="other")), good_offer,
         401, "WWW-Authenticate"),
        ("POST", f"/whep/{ROOM}", bearer(token(stoa_server, "t3", "viewer", room="other")), good_offer,
         401, "WWW-Authenticate"),
        ("POST", f"/whip/{ROOM}", bearer(token(stoa_server, "v1", "viewer")), good_offer, 403, None),
        ("POST", f"/whip/{ROOM}", bearer(token(stoa_server, "s1", "student")), good_offer, 403, None),
        ("POST", f"/whip/{ROOM}", {**bearer(teacher2), "Content-Type": "application/json"}, good_offer,
         415, None),
        ("POST", f"/whep/{ROOM}", {**bearer(token(stoa_server, "v9", "viewer")), "Content-Type": "text/plain"},
         good_offer, 415, None),
        ("DELETE", f"/whip/{ROOM}/no-such-session", bearer(teacher2), None, 404, None),
        ("DELETE", f"/whep/{ROOM}/no-such-session", bearer(teacher2), None, 404, None),
        ("DELETE", f"/whep/nowhere/no-such-session", bearer(token(stoa_server, "t2", "instructor",
                                                                 room="nowhere")), None, 404, None),
        ("DELETE", pub.location, {}, None, 401, "WWW-Authenticate"),
        ("DELETE", pub.location, bearer(teacher2), None, 403, None),
    ]
    for method, path, headers, body, status, must_have in cases:
        frames = watcher.video.frames
        async with http.request(method, base + path, headers=headers, data=body) as resp:
            text = await resp.text()
            assert resp.status == status, f"{method} {path} with {body!r:.30}: {resp.status} {text}"
            if status >= 400:
                assert text.strip(), "the error names the problem"
            if must_have:
                assert must_have in resp.headers
            assert resp.headers.get("Access-Control-Allow-Origin") == "*"
        await wait_until(lambda: watcher.video.frames > frames + 3, 5,
                         f"the viewer to keep receiving after {method} {path} {body!r:.30} -> {status}")

    for path in (f"/whip/{ROOM}", f"/whep/{ROOM}"):
        async with http.options(base + path) as resp:
            assert resp.status == 200
            assert resp.headers["Accept-Post"] == SDP
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Location" in resp.headers["Access-Control-Expose-Headers"]

    # Trickle ICE through PATCH on both kinds of session.
    candidate = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    for location, tok in ((pub.location, pub.token), (watcher.location, watcher.token)):
        async with http.patch(base + location, data=candidate,
                              headers={"Content-Type": "application/trickle-ice-sdpfrag",
                                       "Authorization": f"Bearer {tok}"}) as resp:
            assert resp.status == 204, await resp.text()
    async with http.patch(base + watcher.location, data=candidate,
                          headers={"Content-Type": "text/plain", "Authorization": f"Bearer {watcher.token}"}) as resp:
        assert resp.status == 415

    room = stoa_server.app[ROOMS].rooms[ROOM]
    assert set(room.participants) == {"obs", "watcher"}, "failed requests leave no participant behind"
    frames = watcher.video.frames
    await asyncio.sleep(0.5)
    assert watcher.video.frames > frames
    assert_counters_healthy(watcher.video.counters)

    assert await watcher.stop() == 200
    assert await pub.stop() == 200
    async with http.delete(base + pub.location, headers={"Authorization": f"Bearer {pub.token}"}) as resp:
        assert resp.status == 404, "a session ends once"
    await wait_no_peers(stoa_server)


async def test_whip_and_whep_respect_session_admission(stoa_server, http):
    """A session's room checks status and bans for WHIP/WHEP too, and records presence."""
    import base64

    from storage.store import STORE

    s = stoa_server.settings
    admin = {"Authorization": "Basic " + base64.b64encode(f"{s.api_key}:{s.api_secret}".encode()).decode()}
    async with http.post(stoa_server.base + "/api/sessions", headers=admin,
                         json={"title": "Lab", "instructor": "obs", "room": "lab-1"}) as r:
        assert r.status == 201, await r.text()
        session = await r.json()
    stu = token(stoa_server, "stu", "student", room="lab-1")
    early = client_pc()
    early.addTransceiver("video", direction="recvonly")
    async with http.post(f"{stoa_server.base}/whep/lab-1", data=await make_offer(early),
                         headers={"Content-Type": SDP, "Authorization": f"Bearer {stu}"}) as r:
        assert r.status == 403 and "session_not_live" in await r.text()
    await early.close()
    viewer = WhepViewer(http, stoa_server.base, "lab-1", stu)
    async with http.post(f"{stoa_server.base}/api/sessions/{session['id']}/start", headers=admin) as r:
        assert r.status == 200
    await viewer.start()
    await viewer.wait_connected()
    intervals = await stoa_server.app[STORE].sessions.intervals(session["id"])
    assert any(i.identity == "stu" and i.left_at is None for i in intervals)
    assert await viewer.stop() == 200
    intervals = await stoa_server.app[STORE].sessions.intervals(session["id"])
    assert all(i.left_at is not None for i in intervals if i.identity == "stu")
    await wait_no_peers(stoa_server)
