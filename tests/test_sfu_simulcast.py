"""Simulcast's pure parts: the SDP lines, VP8 picture-id continuity, the layer switch, the allocator."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from sfu.allocator import DRAIN_FOR, PROBE_AFTER, UP_HOLD, LayerAllocator
from sfu.buffer import CachedPacket
from sfu.layers import LayerSwitcher
from sfu.rtp import vp8_picture_ids
from sfu.simulcast import offered_layers, with_simulcast
from sfu.uptrack import UpTrack

pytestmark = pytest.mark.unit

OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=sendonly",
    "a=rid:f send", "a=rid:q send", "a=rid:h send", "a=simulcast:send f;q;h",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:2", "a=sendonly", "",
])


def test_offered_layers_are_ordered_low_to_high_and_plain_sections_left_out():
    assert offered_layers(OFFER) == {"1": ["q", "h", "f"]}
    paused = OFFER.replace("a=simulcast:send f;q;h", "a=simulcast:send ~q;h")
    assert offered_layers(paused) == {"1": ["q", "h"]}
    assert offered_layers(OFFER.replace("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1", "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1")) == {}


def test_answer_gets_rid_and_simulcast_lines_in_its_section_only():
    answer = OFFER.replace("a=sendonly", "a=recvonly")
    answer = "\r\n".join(line for line in answer.split("\r\n") if not line.startswith(("a=rid", "a=simulcast")))
    out = with_simulcast(answer, {"1": ["q", "h", "f"]})
    sections = out.split("m=")
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in sections[2]
    assert "a=rid" not in sections[1] + sections[3]
    assert out.endswith("\r\n") and with_simulcast(answer, {}) == answer


def vp8(pid: int, tl0: int, key: bool = False, start: bool = True) -> bytes:
    # X=1, S, PID; I=1 L=1; 15-bit picture id; TL0PICIDX; frame tag (bit 0 clear on a keyframe)
    return bytes([0x90 if start else 0x80, 0xC0, 0x80 | pid >> 8, pid & 0xFF, tl0, 0x00 if key else 0x01, 0, 0])


class FakeLayer:
    def __init__(self):
        self.downtracks, self.keyframe_requests = [], 0

    def add_downtrack(self, tap):  # as UpTrack does: a new leg asks for a keyframe
        self.downtracks.append(tap)
        self.keyframe_requests += 1

    def remove_downtrack(self, tap):
        self.downtracks.remove(tap)

    def request_keyframe(self):
        self.keyframe_requests += 1

    def feed(self, packet):
        for tap in list(self.downtracks):
            tap.forward(packet, 0, b"\0\0\0", {})


class FakeLeg:
    subscriber_id = "viewer"

    def __init__(self):
        self.sent: list[CachedPacket] = []
        self.forwarder = SimpleNamespace(switch_source=lambda: self.sent.append("switch"))
        self.source = None

    def forward(self, packet, ntp, send_time, tails):
        self.sent.append(packet)

    def detach(self):
        pass


def packet(seq: int, payload: bytes, key: bool = False) -> CachedPacket:
    return CachedPacket(seq, seq * 3000, 1, payload, None, 0.0, key)


def test_switch_waits_for_a_keyframe_of_the_target_and_continues_the_picture_ids():
    layers = [FakeLayer(), FakeLayer()]
    track = SimpleNamespace(layers=layers, rids=["q", "f"], mime_type="video/VP8")
    leg = FakeLeg()
    switcher = LayerSwitcher(leg, track, 1)
    layers[1].feed(packet(1, vp8(500, 7, key=True), key=True))
    layers[1].feed(packet(2, vp8(501, 8)))
    assert [vp8_picture_ids(p.payload)[0] for p in leg.sent] == [500, 501]
    switcher.select(0)
    assert layers[0].keyframe_requests == 1 and len(layers[0].downtracks) == 1
    assert UpTrack.legs(track) == [leg]  # two taps while it switches, one leg (metrics, overload shedding)
    layers[0].feed(packet(10, vp8(20, 3)))           # not a keyframe: dropped
    layers[1].feed(packet(3, vp8(502, 9)))           # the old layer still goes out meanwhile
    layers[0].feed(packet(11, vp8(21, 4, key=True), key=True))
    layers[0].feed(packet(12, vp8(22, 5)))
    layers[1].feed(packet(4, vp8(503, 10)))          # the old layer's tap is gone
    assert leg.sent[3] == "switch"
    sent = [p for p in leg.sent if p != "switch"]
    ids = [vp8_picture_ids(p.payload) for p in sent]
    assert [i[0] for i in ids] == [500, 501, 502, 503, 504]
    assert [p.payload[i[3]] for p, i in zip(sent, ids)] == [7, 8, 9, 10, 11]
    assert layers[1].downtracks == [] and leg.source is layers[0] and switcher.describe()["layer"] == "q"
    # a retransmission of the new layer's packet carries the same rewritten ids
    assert vp8_picture_ids(switcher.rewrite_payload(vp8(22, 5)))[0] == 504


class Leg(SimpleNamespace):
    __hash__ = object.__hash__


def legs_of(track, **leg):
    """A leg whose switches happen at once; `can_pad`: it carries probe padding (RTX negotiated)."""
    switcher = SimpleNamespace(target=len(track.layers) - 1, current=len(track.layers) - 1, holds=[])

    def select(i, hold=False):
        switcher.target = switcher.current = i
        switcher.holds.append(hold)

    switcher.select = select
    pad = leg.get("can_pad", False)
    return Leg(kind="video", uptrack=track, switcher=switcher, can_pad=lambda: pad,
               quality=SimpleNamespace(level=leg.get("quality", "good")), retransmit=SimpleNamespace(media_rate=0.0))


def simulcast_track(rates=(150_000, 400_000, 900_000), source="camera", publisher="teach"):
    layers = [SimpleNamespace(bitrate=lambda r=r: r, frame_size=(320 << i, 180 << i)) for i, r in enumerate(rates)]
    return SimpleNamespace(layers=layers, track_id="TR_cam", source=source, rids=["q", "h", "f"],
                           publisher_id=publisher)


def test_allocator_steps_down_on_congestion_and_probes_back_up_one_layer_at_a_time():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track())
    assert alloc.allocate([leg], 0.0) == {}  # no estimate: the top layer
    assert not alloc.on_estimate(1_400_000, 950_000, 1.0)  # REMB over what is sent: no cap
    assert alloc.allocate([leg], 1.0) == {}
    assert not alloc.on_estimate(1_450_000, 2_000_000, 1.5)  # below what is sent, but rising: a lag
    assert alloc.on_estimate(300_000, 950_000, 2.0)  # the link is full
    assert alloc.allocate([leg], 2.0) == {leg: 0}
    assert alloc.allocate([leg], 2.0 + PROBE_AFTER - 1) == {}
    t = 2.0 + PROBE_AFTER
    assert alloc.allocate([leg], t) == {}  # the cap is lifted; the higher layer must fit for UP_HOLD
    assert alloc.allocate([leg], t + UP_HOLD) == {leg: 1}
    assert not alloc.on_estimate(600_000, 450_000, t + UP_HOLD + 0.5)
    assert alloc.on_estimate(250_000, 450_000, t + UP_HOLD + 1)  # the probe failed
    assert alloc.allocate([leg], t + UP_HOLD + 1) == {leg: 0}
    assert alloc.allocate([leg], t + UP_HOLD + 1 + PROBE_AFTER + 1) == {}  # waits twice as long now
    assert alloc.cap != math.inf


def test_allocator_caps_by_rendered_size_and_serves_the_screen_first():
    alloc = LayerAllocator()
    camera, screen = legs_of(simulcast_track()), legs_of(simulcast_track(source="screen"))
    screen.uptrack.track_id = "TR_screen"
    alloc.set_size("TR_cam", 300, 170)
    assert alloc.allocate([camera, screen], 0.0) == {camera: 0}
    alloc.set_size("TR_cam", 0, 0)  # hidden
    assert alloc.size_cap(camera) == 0
    alloc.set_size("TR_cam", 1280, 720)
    alloc.on_estimate(2_000_000, 2_000_000, 0.5)
    alloc.on_estimate(1_000_000, 2_000_000, 1.0)  # room for the screen's top layer, not for the camera's
    alloc.allocate([camera, screen], 1.0 + DRAIN_FOR)  # once the queue has drained
    assert (screen.switcher.target, camera.switcher.target) == (2, 0)


class LibwebrtcPublisher:
    """Real UpTrack layers fed by a fake Chromium: a keyframe request is acted on only 300 ms or more after
    the last one acted on, for all layers at once (libwebrtc's encoder_rtcp_feedback.cc), else ignored."""

    def __init__(self, timers):
        from sfu.uptrack import PublisherClock

        self.timers, self.plis, self.acted_at, self.keyframe_due, self.seq = timers, [], -1.0, True, 0
        names = ["q", "h", "f"]
        self.layers = []
        for i, rid in enumerate(names):
            async def send_pli(ssrc, rid=rid):
                acted = timers.now - self.acted_at >= 0.3
                self.plis.append((round(timers.now, 3), rid, acted))
                if acted:
                    self.acted_at, self.keyframe_due = timers.now, True

            self.layers.append(UpTrack(
                track_id=f"TR_cam.{rid}", kind="video", mime_type="video/VP8", clock_rate=90000, payload_type=96,
                publisher_id="pub", source="camera", clock=PublisherClock(), send_pli=send_pli,
                monotonic=timers.monotonic, call_later=timers.call_later))
        self.track = self.layers[-1]
        self.track.set_layers(self.layers, names)

    async def frame(self, dt: float = 0.05) -> None:
        """`dt` later, one single-packet frame on every layer (a keyframe when one was asked for)."""
        from aiortc.rtp import RtpPacket

        self.timers.advance(dt)
        key, self.keyframe_due = self.keyframe_due, False
        self.seq += 1
        for i, layer in enumerate(self.layers):
            payload = vp8(self.seq & 0x7FFF, self.seq & 0xFF, key=key)
            await layer.on_rtp(RtpPacket(payload_type=96, sequence_number=self.seq, timestamp=self.seq * 4500,
                                         ssrc=1000 + i, payload=payload), self.timers.now)
        for _ in range(3):
            await asyncio.sleep(0)  # the PLI tasks run


async def test_a_step_down_right_after_another_switch_still_happens():
    """The bench's lost step down: the leg steps f -> h, the keyframe comes, and 36 ms later the tile shrinks
    to q. libwebrtc ignores q's PLI (300 ms after h's), so the switch waits until the request is repeated."""
    from tests.test_sfu_uptrack import FakeTimers

    timers = FakeTimers()
    pub = LibwebrtcPublisher(timers)
    leg = FakeLeg()
    switcher = LayerSwitcher(leg, pub.track, 2)
    await pub.frame()
    assert switcher.current == 2
    switcher.select(1)
    await pub.frame(0.0)  # h's PLI goes out (and is acted on) ...
    await pub.frame(0.03)  # ... its keyframe: the leg is on h
    assert switcher.current == 1
    timers.advance(0.006)
    switcher.select(0)  # the tile shrinks: q's PLI, 36 ms after h's, is ignored
    await pub.frame(0.0)
    assert pub.plis[-1][1:] == ("q", False) and switcher.current == 1
    for _ in range(20):  # 1 s of frames
        await pub.frame()
        if switcher.current == 0:
            break
    assert switcher.current == 0, f"still on h after 1 s; PLIs {pub.plis}"
    assert [p for p in pub.plis if p[1] == "q"][-1][2], "the repeated request was acted on"
    sent = len(pub.plis)
    for _ in range(20):
        await pub.frame()
    assert len(pub.plis) == sent, "the keyframe came: no more requests"
