"""Probing before a step up (sfu/probe.py), the padding packet, the allocator's probe requests and
priorities, the hold on a congestion step down and the paced keyframe of a switch up: pure logic on a
fake clock (the browser test is tests/test_browser_simulcast.py)."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from sfu import pacer as pacing, probe as pr
from sfu.allocator import DRAIN_FOR, UP_MARGIN, LayerAllocator
from sfu.layers import BURST_PACING, LayerSwitcher
from sfu.pacer import Pacer
from sfu.probe import PaddingSender, ProbeController
from sfu.rtp import ExtensionIds, build_extensions, padding_packet, parse_header
from tests.test_sfu_retransmit import FakeClock
from tests.test_sfu_simulcast import FakeLayer, FakeLeg, legs_of, packet, simulcast_track, vp8

pytestmark = pytest.mark.unit


# -- the padding packet ------------------------------------------------------------------------

def test_padding_packet_byte_for_byte():
    ext = build_extensions(ExtensionIds(mid=1, abs_send_time=3), b"1", b"\x01\x02\x03", None)
    data = padding_packet(97, 0x1234, 0xAABBCCDD, 0x01020304, ext, size=4)
    assert data == bytes.fromhex(
        "b061" "1234" "aabbccdd" "01020304"       # V=2 P=1 X=1, PT 97, seq, timestamp, SSRC
        "bede0002" "1031" "32010203" "0000"       # mid "1", abs-send-time, padded to 32 bits
        "00000004")                               # padding: zeros, then its length; no payload
    assert parse_header(data) == (0, 97, 0x1234, 0xAABBCCDD, 0x01020304)
    full = padding_packet(97, 1, 2, 3, b"")
    assert len(full) == 12 + 255 and full[0] == 0xA0 and full[-1] == 255 and not any(full[12:-1])
    with pytest.raises(ValueError, match="1 to 255"):
        padding_packet(97, 1, 2, 3, b"", size=256)


class PaddingLeg:
    padding_bytes = 280

    def __init__(self):
        self.asked: list[int] = []

    def send_padding(self, count):
        self.asked.append(count)
        return count


async def test_padding_sender_spreads_the_probe_rate_over_its_ticks():
    leg = PaddingLeg()
    sender = PaddingSender(leg, 280 * 8 * 100)  # 100 packets a second: 2 per 20 ms tick
    await asyncio.sleep(0.25)
    sender.stop()
    assert set(leg.asked) <= {1, 2, 3, 4, 5, 6} and 8 <= len(leg.asked) <= 14  # what the time since the last tick owes
    assert 16 <= sender.sent <= 30 and sender.bytes == sender.sent * 280


# -- the probe controller ----------------------------------------------------------------------

def test_a_probe_holds_when_the_remb_rises_and_the_next_waits_a_gap():
    probes = ProbeController()
    probe = probes.start("leg", 450_000, 200_000, 250_000, 10.0)
    assert probe.padding == 250_000 and not probes.ready(10.0)
    assert probes.start("other", 450_000, 200_000, 250_000, 10.0) is None  # one at a time
    assert probes.on_estimate(251_000, 10.3) is None
    assert probes.on_estimate(250_000 * pr.PROBE_RISE, 10.6) is None  # too early: a queue shows later
    assert probes.on_estimate(250_000 * pr.PROBE_RISE, 10.0 + pr.PROBE_MIN) is None  # not higher: no verdict
    t = 10.0 + pr.PROBE_MIN + 0.1
    assert probes.on_estimate(250_000 * pr.PROBE_RISE + 1000, t) == "held"  # still rising
    assert probes.succeeded == 1 and probes.probe is None and "held at 450 kbps" in probes.last_result
    assert not probes.ready(t + pr.PROBE_GAP - 0.1) and probes.ready(t + pr.PROBE_GAP)


def test_a_probe_fails_on_a_stalled_or_falling_remb_or_congestion_and_backs_off():
    probes = ProbeController()
    t = 0.0
    probes.start("leg", 450_000, 200_000, 250_000, t)
    assert probes.on_estimate(251_000, t + 0.2) is None
    assert probes.check(t + 0.2 + pr.PROBE_STALL - 0.01) is None
    assert probes.check(t + 0.2 + pr.PROBE_STALL) == "failed"  # the padding queued: the REMB holds
    assert "stalled at 251 kbps" in probes.last_result
    waits = []
    for reason in ("fell", "congestion", "fell", "congestion"):
        t = probes.not_before
        waits.append(probes.wait)
        probes.start("leg", 450_000, 200_000, 250_000, t)
        if reason == "fell":
            assert probes.on_estimate(240_000, t + 0.3) == "failed"
        else:
            assert probes.on_congestion(t + 0.3) == "failed"
    assert waits == [2 * pr.PROBE_WAIT, pr.PROBE_WAIT_MAX, pr.PROBE_WAIT_MAX, pr.PROBE_WAIT_MAX]
    assert probes.failed == 5
    t = probes.not_before
    probes.start("leg", 450_000, 200_000, 250_000, t)
    assert probes.on_estimate(300_000, t + pr.PROBE_MIN + 0.1) == "held"
    assert probes.wait == pr.PROBE_WAIT  # a probe that held resets the back-off


def test_a_probe_without_a_rise_ends_at_its_duration_and_congestion_delays_the_next():
    probes = ProbeController()
    probes.start("leg", 450_000, 200_000, 250_000, 0.0)
    t = 0.0
    while t < pr.PROBE_DURATION - 0.2:  # rising, but too little
        t += 0.2
        assert probes.on_estimate(250_000 * (1 + t / 1000), t) is None
    assert probes.check(pr.PROBE_DURATION) == "failed" and "no rise" in probes.last_result
    probes = ProbeController()
    assert probes.on_congestion(5.0) is None and not probes.ready(5.0 + pr.PROBE_WAIT - 0.1)
    assert probes.start("leg", 100_000, 200_000, 250_000, 5.0 + pr.PROBE_WAIT) is None  # nothing to add


# -- the allocator: probe requests, drain, priority ----------------------------------------------

def test_allocator_asks_for_a_probe_and_steps_up_at_once_when_it_holds():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track(), can_pad=True)
    alloc.allocate([leg], 0.0)
    assert not alloc.on_estimate(1_400_000, 950_000, 0.5)
    assert alloc.on_estimate(300_000, 950_000, 1.0)  # the link is full: down, the old layer held
    assert alloc.allocate([leg], 1.0) == {leg: 0} and leg.switcher.holds == [True]
    assert alloc.probe_request is None  # the next probe waits PROBE_WAIT after congestion
    t = 1.0 + DRAIN_FOR
    assert alloc.allocate([leg], t) == {} and alloc.probe_request is not None
    probed, target, sent = alloc.probe_request
    assert probed is leg and sent == 150_000 and target == pytest.approx(400_000 * UP_MARGIN)
    # Never lifted blind: much later, without a probe, the leg stays down.
    assert alloc.allocate([leg], t + 60) == {} and leg.switcher.target == 0
    alloc.probe_held(leg, target)
    assert alloc.allocate([leg], t + 60) == {leg: 1}  # at once, no UP_HOLD
    assert alloc.probe_request is None or alloc.probe_request[1] == pytest.approx(900_000 * UP_MARGIN)


def test_allocator_does_not_probe_for_a_leg_its_size_caps():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track(), can_pad=True)
    alloc.set_size("TR_cam", 300, 170)
    alloc.on_estimate(1_000_000, 900_000, 0.0)
    alloc.on_estimate(200_000, 900_000, 0.5)
    alloc.allocate([leg], 10.0)
    assert leg.switcher.target == 0 and alloc.probe_request is None


def test_a_drained_budget_steps_down_past_a_layer_that_only_just_fits():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track())
    alloc.on_estimate(1_400_000, 950_000, 0.0)
    assert alloc.on_estimate(450_000, 950_000, 1.0)  # 400k fits 450k, not 80% of it
    assert alloc.allocate([leg], 1.0) == {leg: 0}


def test_priority_the_screen_then_the_active_speaker_then_the_other_cameras():
    alloc = LayerAllocator()
    screen = legs_of(simulcast_track(source="screen", publisher="teach"))
    teacher = legs_of(simulcast_track(publisher="teach"))
    speaker = legs_of(simulcast_track(publisher="ana"))
    other = legs_of(simulcast_track(publisher="bo"))
    alloc.speakers = ["ana", "teach"]  # ana speaks now, the teacher spoke a moment ago
    assert [alloc.priority(leg) for leg in (screen, speaker, teacher, other)] == [0, 1, 2, 2]
    assert sorted([other, teacher, speaker, screen], key=alloc.priority)[:2] == [screen, speaker]
    alloc.speakers = []
    assert alloc.priority(speaker) == 2
    # 1 Mbps: one top layer (900k) and one low one; the speaker's camera is paid first.
    alloc.speakers = ["ana"]
    legs = [other, speaker]
    alloc.on_estimate(2_000_000, 2_000_000, 0.0)
    alloc.on_estimate(1_000_000, 2_000_000, 1.0)
    alloc.allocate(legs, 1.0 + DRAIN_FOR)
    assert (other.switcher.target, speaker.switcher.target) == (0, 2)


# -- the switch: hold on a congestion step down, paced keyframe on a switch up ---------------------

class RecordingPacer:
    def __init__(self):
        self.bursts: list[tuple[float, float]] = []

    def pace_burst(self, seconds, bytes_per_second=0.0):
        self.bursts.append((seconds, bytes_per_second))


def test_a_congestion_step_down_stops_the_old_layer_after_its_frame_and_a_step_up_is_paced():
    layers = [FakeLayer(), FakeLayer()]
    layers[0].bitrate = lambda: 150_000.0
    layers[1].bitrate = lambda: 800_000.0
    track = SimpleNamespace(layers=layers, rids=["q", "f"], mime_type="video/VP8")
    leg = FakeLeg()
    leg.pacer = RecordingPacer()
    switcher = LayerSwitcher(leg, track, 1)
    layers[1].feed(packet(1, vp8(500, 7, key=True), key=True))
    switcher.select(0, hold=True)
    unfinished = packet(2, vp8(501, 8))
    unfinished.marker = 0
    layers[1].feed(unfinished)                       # the frame under way is finished ...
    layers[1].feed(packet(3, vp8(501, 8, start=False)))  # ... up to its marker
    layers[1].feed(packet(4, vp8(502, 9)))           # then the old layer waits
    layers[1].feed(packet(5, vp8(503, 10)))
    assert [p.seq for p in leg.sent] == [1, 2, 3]
    layers[0].feed(packet(20, vp8(30, 1, key=True), key=True))
    assert leg.sent[-2] == "switch" and leg.sent[-1].seq == 20 and not switcher.holding
    assert leg.pacer.bursts == []  # down: the keyframe is small
    switcher.select(1)
    layers[1].feed(packet(6, vp8(504, 11, key=True), key=True))
    assert leg.pacer.bursts == [(BURST_PACING, 100_000.0)]  # up: through the pacer, at f's rate


async def test_pacer_paces_media_during_a_burst_and_returns_to_what_the_leg_asked():
    clock = FakeClock(1000.0)
    sent = []
    pacer = Pacer(lambda data: sent.append(data) or True, clock=clock)
    assert not pacer.pacing_media
    pacer.pace_burst(0.5, 100_000)
    assert pacer.pacing_media and pacer.rate == pacing.PACING_FACTOR * 100_000
    # A keyframe beyond the bucket waits in the queue instead of going out in one burst.
    for _ in range(40):
        if pacer.backlog or not pacer.admit(1200, clock.t):
            pacer.enqueue(bytes(1200))
        else:
            sent.append(b"")
    assert pacer.backlog == 40 - len(sent) > 0
    pacer.set_pacing_media(False)  # the viewer's quality is good: still paced until the burst ends
    assert pacer.pacing_media
    pacer.end_burst()
    assert not pacer.pacing_media
    pacer.set_pacing_media(True)
    pacer.pace_burst(0.01)
    await asyncio.sleep(0.05)  # the burst ends on its own timer
    assert pacer.pacing_media and pacer._burst_timer is None  # the leg still wants it (its viewer shows loss)
    pacer.close()


# -- transport-cc: verdicts from per-packet feedback on a simulated link --------------------------

from sfu import allocator as al  # noqa: E402
from sfu.probe import FeedbackHistory, arrival_rate, bottleneck_rate, queue_slope  # noqa: E402
from sfu.twcc import PacketResult  # noqa: E402


class Link:
    """A tbf as tests/netns.py sets one (rate, burst, latency), or no limit (rate None); arrival on the
    viewer's clock (an offset of its own), 10 ms of propagation. `loss`: every n-th packet is lost."""

    def __init__(self, rate=None, burst=16_000, latency=0.4, loss=0):
        self.rate, self.burst, self.latency, self.loss = rate, burst, latency, loss
        self.tokens, self.at, self.free = burst, 0.0, 0.0
        self.count = 0

    def send(self, sent, size):
        self.count += 1
        if self.loss and self.count % self.loss == 0:
            return None
        if self.rate is None:
            return sent + 0.01 + 500.0
        rate = self.rate / 8
        t = max(sent, self.free)
        tokens = min(self.burst, self.tokens + rate * (t - self.at))
        leave = t if tokens >= size else t + (size - tokens) / rate
        if leave - sent > self.latency:
            return None  # the queue is full: dropped
        self.tokens = min(self.burst, tokens + rate * (leave - t)) - size
        self.at = self.free = leave
        return leave + 0.01 + 500.0


class Viewer:
    """One viewer's camera leg through `link`: media at its layer's rate (a keyframe of 10 frames on each
    switch), 40 kbit/s of audio, a probe's padding every 20 ms, transport-cc feedback every 50 ms for the
    numbered packets (the padding only, as Stoa sends them, or all), and the allocator driven as
    sfu/subscriber.py drives it."""

    def __init__(self, link, rates=(150_000, 400_000, 900_000), numbered="padding"):
        self.link, self.rates, self.numbered = link, rates, numbered  # which packets carry the transport-wide seq
        self.alloc = LayerAllocator()
        self.leg = legs_of(simulcast_track(rates), can_pad=True)
        self.leg.switcher.probing = None
        self.alloc.transport_cc = True  # the first feedback came (the leg is on the top layer until then)
        self.alloc.allocate([self.leg], 0.0)
        self.pending, self.seq, self.t = [], 0, 0.0
        self.padding, self.owed = 0.0, 0.0
        self.layers: list[tuple[float, int]] = [(0.0, self.leg.switcher.target)]
        self.keyframe = True
        self.dropped = 0

    def _send(self, size, probe=False):
        arrival = self.link.send(self.t, size)
        self.dropped += arrival is None
        if probe or self.numbered == "all":
            self.pending.append(PacketResult(self.seq, self.t, size, arrival, probe))
            self.seq += 1

    def run(self, seconds):
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = round(self.t + 0.005, 3)
            ms = round(self.t * 1000)
            if ms % 50 == 0:  # a video frame
                size = self.rates[self.leg.switcher.target] / 8 / 20 * (10 if self.keyframe else 1)
                self.keyframe = False
                while size > 0:
                    self._send(min(1200, size) + 40)
                    size -= 1200
            if ms % 20 == 0:
                self._send(120)  # audio
                self.owed += self.padding / 8 * 0.02 / 280
                while self.owed >= 1:
                    self.owed -= 1
                    self._send(280, probe=True)
            if ms % 50 == 0:
                self._feedback()

    def _feedback(self):
        now = self.t + 0.015
        ready = [r for r in self.pending if r.arrival is None or r.arrival - 500.0 <= self.t]
        self.pending = [r for r in self.pending if r not in ready]
        alloc, prober = self.alloc, self.alloc.prober
        alloc.on_transport_feedback(ready, now)
        prober.check(now)
        if prober.probe is None:
            self.padding = pr.MONITOR_RATE  # the trickle between probes (sfu/subscriber.py)
        before = self.leg.switcher.target
        alloc.allocate([self.leg], now)
        if self.leg.switcher.target != before:
            self.layers.append((round(self.t, 2), self.leg.switcher.target))
            self.keyframe = True
        if alloc.probe_request is not None:
            probe = prober.start(*alloc.probe_request, alloc.estimate, now)
            if probe is not None:
                self.padding = probe.padding

    def layer_at(self, t):
        return [layer for at, layer in self.layers if at <= t][-1]


def test_results_rates_and_the_bottleneck_run():
    got = [PacketResult(i, i * 0.01, 1000, 500.0 + i * 0.02, False) for i in range(11)]
    assert arrival_rate(got) == pytest.approx(10 * 8000 / 0.2)
    assert bottleneck_rate(got, 500.0) == pytest.approx(400_000)  # each waited longer: they queued
    assert bottleneck_rate(got[:1], 500.0) is None
    assert queue_slope(got, 500.0) == pytest.approx(1.0)  # sent at 800 kbit/s into 400: 1 s more a second
    assert queue_slope(got[:3], 500.0) is None  # too short to tell
    history = FeedbackHistory()
    history.add(got + [PacketResult(11, 0.11, 1000, None, True)], 0.2)
    assert history.base == pytest.approx(500.0) and history.media
    assert history.lost_share(0.0) == (12, pytest.approx(1 / 12))


@pytest.mark.parametrize("numbered", ["padding", "all"])
@pytest.mark.parametrize("rate, layer", [(300_000, 0), (800_000, 1), (None, 2)])
def test_a_new_leg_starts_low_and_is_on_the_layer_its_link_carries_within_2_s(rate, layer, numbered):
    viewer = Viewer(Link(rate), numbered=numbered)
    assert viewer.leg.switcher.target == 0  # the start estimate fits the low layer only
    viewer.run(2.0)
    assert viewer.leg.switcher.target == layer, (viewer.layers, viewer.alloc.prober.last_result)
    viewer.run(18.0)  # and stays there: later probes fail without moving it
    assert viewer.leg.switcher.target == layer, (viewer.layers, viewer.alloc.prober.last_result)
    assert len(viewer.layers) <= 3, viewer.layers  # the start, at most one step past, no flapping
    assert viewer.alloc.prober.started >= 1


@pytest.mark.parametrize("numbered", ["padding", "all"])
def test_a_probe_over_the_link_fails_fast_and_reports_what_the_link_delivered(numbered):
    viewer = Viewer(Link(800_000), numbered=numbered)
    viewer.run(0.1)
    probe = viewer.alloc.prober.probe
    assert probe is not None and probe.feedback and probe.target > 1_000_000  # for the top layer at once
    while viewer.alloc.prober.probe is probe:
        viewer.run(0.05)
    assert viewer.t - probe.started < 0.8 and viewer.alloc.prober.failed == 1
    assert "delay +" in viewer.alloc.prober.last_result
    assert probe.capacity == pytest.approx(800_000, rel=0.1)  # the bottleneck's rate
    assert viewer.alloc.cap == pytest.approx(max(pr.UTILIZATION * probe.capacity, probe.target - probe.padding))


def test_loss_on_numbered_media_caps_the_viewer():
    viewer = Viewer(Link(None), numbered="all")
    viewer.run(3.0)
    assert viewer.leg.switcher.target == 2
    viewer.link.loss = 5  # a fifth of the packets lost
    viewer.run(1.5)
    assert viewer.leg.switcher.target < 2 and viewer.alloc.congestion_events >= 1
    assert "lost" in viewer.alloc.last_congestion


@pytest.mark.parametrize("numbered", ["padding", "all"])
def test_a_link_that_narrows_and_widens_steps_down_within_3_s_and_back_up_within_15_s(numbered):
    """The queue the media meets shows in the feedback on the padding's trickle (or on the media)."""
    link = Link(None)
    viewer = Viewer(link, numbered=numbered)
    viewer.run(5.0)
    assert viewer.leg.switcher.target == 2
    link.rate, link.tokens, link.at, link.free = 300_000, link.burst, viewer.t, viewer.t
    narrowed = viewer.t
    viewer.run(3.0)
    assert viewer.layer_at(narrowed + 3.0) == 0, viewer.layers
    viewer.run(7.0)
    assert viewer.leg.switcher.target == 0, viewer.layers  # probes fail meanwhile
    link.rate = None
    widened = viewer.t
    viewer.run(15.0)
    assert viewer.leg.switcher.target == 2, viewer.layers
    ups = [at for at, layer in viewer.layers if at > widened]
    assert ups and ups[-1] - widened < 15.0


def test_without_transport_cc_the_allocator_reads_remb_as_before():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track(), can_pad=True)
    assert alloc.allocate([leg], 0.0) == {} and leg.switcher.target == 2  # no start estimate: the top layer
    assert not alloc.transport_cc and alloc.cap == math.inf
    alloc.on_estimate(1_400_000, 950_000, 0.5)
    assert alloc.estimate == 1_400_000 and alloc.cap == math.inf  # REMB caps only when it falls


def test_a_probe_marks_the_layer_it_is_for_so_dynacast_runs_it():
    from sfu.dynacast import needed_layers

    viewer = Viewer(Link(300_000))
    viewer.run(0.1)
    assert viewer.alloc.prober.probe is not None and viewer.leg.switcher.probing == 2
    while viewer.alloc.prober.probe is not None:
        viewer.run(0.05)
    viewer.run(0.05)
    assert viewer.leg.switcher.probing is None
    # needed_layers counts it (a real LayerSwitcher, as dynacast sees it)
    layers = [FakeLayer(), FakeLayer(), FakeLayer()]
    track = SimpleNamespace(layers=layers, rids=["q", "h", "f"], mime_type="video/VP8", sinks=[])
    leg = FakeLeg()
    leg.unselected = False
    switcher = LayerSwitcher(leg, track, 0)
    leg.switcher = switcher
    assert needed_layers(track) == {0}
    switcher.probing = 2
    assert needed_layers(track) == {0, 2}


def test_an_answer_with_transport_cc_starts_low_and_two_probes_without_feedback_go_back_to_remb():
    alloc = LayerAllocator()
    leg = legs_of(simulcast_track(), can_pad=True)
    alloc.expect_transport_cc()  # the answer takes it; no feedback yet
    assert alloc.feedback_mode and not alloc.transport_cc
    assert alloc.allocate([leg], 0.0) == {leg: 0}
    t = 0.1
    alloc.allocate([leg], t)  # on the low layer: the first probe, at once
    assert alloc.probe_request is not None and alloc.probe_request[1] >= 1_200_000
    for _ in range(2):  # an aiortc viewer answers with the extension and sends no feedback
        probe = alloc.prober.start(*alloc.probe_request, alloc.estimate, t)
        assert probe.feedback
        t += pr.TCC_PROBE_MAX + 0.01
        assert alloc.prober.check(t) == "failed"
        t = alloc.prober.not_before
        alloc.allocate([leg], t)
    assert not alloc.feedback_mode and not alloc.prober.feedback  # REMB from now on
    assert not alloc.on_estimate(1_400_000, 200_000, t + 0.5) and alloc.cap == 1_400_000
