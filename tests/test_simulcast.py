"""Simulcast units: VP8 descriptor rewriting byte for byte, the SDP edits, the layer selector on an
injected clock, and a leg moved between layers only on the target layer's keyframe, continuing one
stream (sequence numbers, timestamps, PictureID, TL0PICIDX)."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from sfu.forwarder import Forwarder, Vp8Munger
from sfu.rtp import vp8_descriptor, vp8_ids, vp8_is_keyframe, vp8_keyframe_size, vp8_rewrite
from sfu.simulcast import (BASE_HOLD, MAX_HOLD, PROBE_GRACE, PROBE_TIME, SETTLE, Layer, LayerChoice,
                           SimulcastUpTrack, ceiling,
                           simulcast_offer, with_simulcast)
from sfu.uptrack import PublisherClock
from tests.test_sfu_uptrack import FakeTimers


def vp8(pid: int, tl0: int, keyframe: bool, start: bool = True, size: tuple[int, int] = (320, 180)) -> bytes:
    """A VP8 payload as Chromium sends it: X, I (15-bit PictureID), L, T, then the frame."""
    head = bytes((0x90 if start else 0x80, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, 0x20))
    if not keyframe:
        return head + b"\x01\x00\x00" + b"\xaa" * 10
    w, h = size
    return head + b"\x10\x02\x00\x9d\x01\x2a" + w.to_bytes(2, "little") + h.to_bytes(2, "little") + b"\xbb" * 8


# --- bytes ---------------------------------------------------------------------------------------

def test_vp8_descriptor_and_ids():
    payload = vp8(0x1234, 0x56, keyframe=True)
    assert vp8_descriptor(payload) == (2, 15, 4, 6)
    assert vp8_ids(payload) == (0x1234, 0x56)
    assert vp8_is_keyframe(payload) and vp8_keyframe_size(payload) == (320, 180)
    assert not vp8_is_keyframe(vp8(1, 1, keyframe=False))
    assert vp8_keyframe_size(vp8(1, 1, keyframe=False)) is None
    assert vp8_ids(b"\x10\x01") == (None, None), "no extension bits: no ids"
    assert vp8_ids(b"\x80\x80\x81") == (None, None), "a 15-bit PictureID cut short"
    seven = bytes((0x90, 0x80, 0x05)) + b"\x01"
    assert vp8_descriptor(seven) == (2, 7, -1, 3) and vp8_ids(seven) == (5, None)


def test_vp8_rewrite_changes_only_the_two_fields():
    payload = vp8(0x7FFE, 0xFF, keyframe=True)
    out = vp8_rewrite(payload, 3, 2)
    assert len(out) == len(payload)
    assert out[:2] == payload[:2] and out[6:] == payload[6:]
    assert out[2:5] == bytes((0x80, 0x01, 0x01)), "PictureID wraps at 15 bits, keeps M; TL0PICIDX at 8"
    assert vp8_ids(out) == (1, 1)
    assert vp8_rewrite(payload, 0x8000, 0x100) == payload
    seven = bytes((0x90, 0x80, 0x7F)) + b"\x01"
    assert vp8_rewrite(seven, 2, 9) == bytes((0x90, 0x80, 0x01)) + b"\x01", "7-bit PictureID, no TL0PICIDX"
    assert vp8_rewrite(b"\x10\x01\x02", 5, 5) == b"\x10\x01\x02", "nothing to rewrite"


def test_munger_continues_picture_ids_over_a_switch():
    munger = Vp8Munger()
    # epoch 1: layer q, ids kept as they are
    assert munger.munge(vp8(100, 7, True), 1) == vp8(100, 7, True)
    assert vp8_ids(munger.munge(vp8(101, 7, False), 1)) == (101, 7)
    assert vp8_ids(munger.munge(vp8(102, 8, False), 1)) == (102, 8)
    # epoch 2: layer f, its own numbering (5000, 200); its keyframe follows as 103 / 9
    out = munger.munge(vp8(5000, 200, True, size=(1280, 720)), 2)
    assert vp8_ids(out) == (103, 9) and vp8_keyframe_size(out) == (1280, 720)
    assert vp8_ids(munger.munge(vp8(5001, 200, False, start=False), 2)) == (104, 9)
    # a retransmission of an earlier packet of this epoch maps the same way and changes nothing
    assert vp8_ids(munger.rewrite(vp8(5000, 200, True))) == (103, 9)
    assert vp8_ids(munger.munge(vp8(5002, 201, False), 2)) == (105, 10)
    # back down, across the 15-bit wrap of the source
    assert vp8_ids(munger.munge(vp8(0x7FFF, 0, True), 3)) == (106, 11)
    assert vp8_ids(munger.munge(vp8(0, 1, False), 3)) == (107, 12)


def test_forwarder_and_munger_make_one_stream_of_two_layers():
    fwd, munger = Forwarder(90000, video=True, initial_seq=1000, initial_ts=50_000), Vp8Munger()
    out = []

    def send(seq, ts, payload, keyframe, arrival):
        munged = fwd.munge(seq, ts, keyframe, arrival)
        if munged is not None:
            out.append((*munged, vp8_ids(munger.munge(payload, fwd.epoch))))

    send(10, 9000, vp8(40, 3, True), True, 1.0)
    send(11, 9000 + 4500, vp8(41, 3, False), False, 1.05)
    fwd.switch_source()
    send(60000, 777, vp8(900, 50, False), False, 1.08)  # the new layer's delta frame: dropped
    send(60001, 777 + 4500, vp8(901, 51, True), True, 1.10)
    send(60002, 777 + 9000, vp8(902, 51, False), False, 1.15)
    assert out == [
        (1000, 50_000, (40, 3)), (1001, 54_500, (41, 3)),
        (1002, 54_500 + 4500, (42, 4)), (1003, 54_500 + 9000, (43, 4)),
    ]
    assert fwd.source_seq(1001) is None, "NACKs for the old layer's packets do not map into the new one"
    assert fwd.source_seq(1003) == 60002


# --- SDP -----------------------------------------------------------------------------------------

OFFER = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
         "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
         "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=sendonly\r\n"
         "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n"
         "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\n")


def test_simulcast_sections_of_an_offer():
    assert simulcast_offer(OFFER) == {"1": ["q", "h", "f"]}
    reverse = OFFER.replace("a=simulcast:send q;h;f", "a=simulcast:send f;h;~q")
    assert simulcast_offer(reverse) == {"1": ["q", "h", "f"]}, "known names sort lowest first; ~ is paused"
    other = OFFER.replace("a=simulcast:send q;h;f", "a=simulcast:send lo,lo2;hi")
    assert simulcast_offer(other) == {"1": ["lo", "hi"]}, "other names keep the offer's order"
    assert simulcast_offer(OFFER.replace("a=simulcast:send q;h;f", "a=simulcast:send q")) == {}


def test_answer_gets_rid_and_simulcast_lines_in_that_section_only():
    answer = ("v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
              "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n"
              "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n")
    out = with_simulcast(answer, {"1": ["q", "h", "f"]})
    sections = out.split("\r\nm=")
    assert sections[2].endswith("a=recvonly\r\na=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\n"
                                "a=simulcast:recv q;h;f")
    assert "a=rid" not in sections[1] and "a=rid" not in sections[3]
    assert with_simulcast(out, {"1": ["q", "h", "f"]}) == out, "idempotent"
    rejected = answer.replace("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1", "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1")
    assert with_simulcast(rejected, {"1": ["q", "h"]}) == rejected


# --- the selector ----------------------------------------------------------------------------------

LAYERS = [Layer(145_000, 180), Layer(366_000, 360), Layer(800_000, 720)]
BIG = 10_000_000  # a viewer's estimate that vetoes nothing


def test_ceiling_follows_the_render_size():
    assert ceiling(LAYERS, None) == 2, "no size reported: as high as the link allows"
    assert ceiling(LAYERS, 0) == 0, "hidden: the lowest"
    assert ceiling(LAYERS, 90) == 0 and ceiling(LAYERS, 180) == 0
    assert ceiling(LAYERS, 300) == 1 and ceiling(LAYERS, 400) == 1 and ceiling(LAYERS, 420) == 2
    assert ceiling(LAYERS, 2000) == 2
    assert ceiling([LAYERS[0], Layer(0, 360, live=False), LAYERS[2]], 300) == 2, "skips a layer not sent"


def test_steps_up_one_layer_per_hold_on_a_clean_link():
    choice, now = LayerChoice(0, 0.0), 0.0
    assert choice.decide(LAYERS, now=BASE_HOLD - 0.1, estimate=BIG) == 0, "holds first"
    assert choice.decide(LAYERS, now=BASE_HOLD) == 0, "twice as long while the viewer sends no estimate"
    now = BASE_HOLD
    assert choice.decide(LAYERS, now=now, estimate=BIG) == 1
    choice.switched(1, now)
    assert choice.decide(LAYERS, now=now + 1, estimate=BIG) == 1
    now += BASE_HOLD
    assert choice.decide(LAYERS, now=now, estimate=BIG) == 2
    choice.switched(2, now)
    assert choice.decide(LAYERS, now=now + 60, estimate=BIG) == 2


def test_render_size_caps_it_and_a_smaller_size_takes_it_down_at_once():
    choice = LayerChoice(0, 0.0)
    assert choice.decide(LAYERS, now=10.0, render_height=180) == 0
    choice = LayerChoice(2, 0.0)
    assert choice.decide(LAYERS, now=0.1, render_height=90) == 0, "no hold to go down for the size"


def test_loss_steps_down_after_settling_and_a_failed_try_doubles_the_hold():
    choice = LayerChoice(0, 0.0)
    choice.switched(1, BASE_HOLD)                       # tried h
    assert choice.decide(LAYERS, now=BASE_HOLD + 0.5, loss=0.3) == 1, "settles first"
    t = BASE_HOLD + SETTLE
    assert choice.decide(LAYERS, now=t, loss=0.3) == 0
    choice.switched(0, t)
    assert choice.failed_tries == 1 and choice.hold == 2 * BASE_HOLD
    assert choice.decide(LAYERS, now=t + BASE_HOLD, estimate=BIG) == 0
    assert choice.decide(LAYERS, now=t + 2 * BASE_HOLD, estimate=BIG) == 1
    for _ in range(10):                                 # it keeps failing: the hold stops at MAX_HOLD
        choice.switched(1, t)
        choice.switched(0, t + 1)
    assert choice.hold == MAX_HOLD
    assert choice.decide(LAYERS, now=t + 0.5, loss=0.05) == 0, "some loss: no try"


def test_a_held_step_up_resets_the_hold():
    choice = LayerChoice(0, 0.0)
    choice.switched(1, 2.0)
    choice.switched(0, 3.0)
    assert choice.hold == 2 * BASE_HOLD
    choice.switched(1, 10.0)
    assert choice.decide(LAYERS, now=20.0) == 2 and choice.hold == BASE_HOLD


def test_a_low_estimate_alone_does_not_take_it_down():
    # A viewer's REMB starts low and lags behind every step up: only loss counts.
    choice = LayerChoice(2, 0.0)
    assert choice.decide(LAYERS, now=5.0, estimate=150_000) == 2
    assert choice.decide(LAYERS, now=5.0, estimate=150_000, loss=0.2) == 1, "one layer at a time"


def test_a_step_up_waits_for_a_clean_probe():
    choice = LayerChoice(0, 0.0)
    assert choice.decide(LAYERS, now=BASE_HOLD, estimate=BIG, can_probe=True) == 0
    layer, until, rate, _, _ = choice.probe
    assert layer == 1 and until == BASE_HOLD + PROBE_TIME and rate == pytest.approx(366_000 * 1.2 - 145_000)
    assert choice.decide(LAYERS, now=BASE_HOLD + 0.5, estimate=BIG, can_probe=True) == 0 and choice.probe
    assert choice.decide(LAYERS, now=until, estimate=BIG, can_probe=True) == 1, "the link carried it: up"
    choice.switched(1, until)
    assert choice.probe is None
    # The next probe (h -> f) sees NACKs: no step, the hold doubles, and the loss it caused is let pass.
    t = until + BASE_HOLD
    assert choice.decide(LAYERS, now=t, estimate=BIG, can_probe=True, counts=(100, 0)) == 1
    assert choice.probe[0] == 2
    assert choice.decide(LAYERS, now=t + 0.5, estimate=BIG, can_probe=True, counts=(130, 3)) == 1, "3 of 30"
    assert choice.probe is None and choice.failed_tries == 1 and choice.hold == 2 * BASE_HOLD
    assert choice.decide(LAYERS, now=t + 0.5 + SETTLE, loss=0.3, estimate=BIG) == 1, "its own loss"
    resumed = t + 0.5 + PROBE_GRACE
    assert choice.decide(LAYERS, now=resumed + 2 * BASE_HOLD - 0.1, estimate=BIG, can_probe=True) == 1
    assert not choice.probe
    assert choice.decide(LAYERS, now=resumed + 2 * BASE_HOLD, estimate=BIG, can_probe=True) == 1
    assert choice.probe[0] == 2


def test_a_probe_fails_when_the_viewers_estimate_falls():
    choice = LayerChoice(0, 0.0)
    assert choice.decide(LAYERS, now=5.0, estimate=230_000, can_probe=True) == 0 and choice.probe
    assert choice.decide(LAYERS, now=5.0 + PROBE_TIME, estimate=200_000, can_probe=True) == 0
    assert choice.failed_tries == 1
    grows = LayerChoice(0, 0.0)
    grows.decide(LAYERS, now=5.0, estimate=230_000, can_probe=True)
    assert grows.decide(LAYERS, now=5.0 + PROBE_TIME, estimate=260_000, can_probe=True) == 1


def test_a_layer_that_stops_is_left_at_once():
    choice = LayerChoice(2, 0.0)
    layers = [LAYERS[0], LAYERS[1], Layer(0, 720, live=False)]
    assert choice.decide(layers, now=0.1) == 1
    assert LayerChoice(0, 0.0).decide([Layer(0, live=False)] * 3, now=9.0) == 0


# --- the track: keyframe-aligned moves --------------------------------------------------------------

class Leg:
    """Stands in for a DownTrack: what the layers forward to it, and the selector's inputs."""

    def __init__(self) -> None:
        self.uptrack = None
        self.vp8 = None
        self.layer_choice = None
        self.remb = None
        self.render_height = None
        self.forwarder = Forwarder(90000, video=True)
        self.subscriber_id = "viewer"
        self.packets_sent = 0

        class Retransmit:
            new_losses = 0
        self.retransmit = Retransmit()
        self.got: list[tuple[str, int]] = []

        class Quality:
            loss = 0.0
        self.quality = Quality()

    def forward(self, packet, ntp, send_time, tails) -> None:
        self.got.append((self.uptrack.rid, packet.seq))

    def can_probe(self) -> bool:
        return False

    def detach(self, uptrack=None) -> None:
        self.uptrack = None


def layer_packet(ssrc: int, seq: int, keyframe: bool) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 4500, ssrc=ssrc,
                     payload=vp8(seq, seq // 3, keyframe, size=(ssrc * 320, ssrc * 180)))


def simulcast_track(timers: FakeTimers, plis: list | None = None) -> SimulcastUpTrack:
    async def send_pli(ssrc: int) -> None:
        if plis is not None:
            plis.append(ssrc)

    return SimulcastUpTrack(rids=["q", "h", "f"], track_id="TR_sim", kind="video", mime_type="video/VP8",
                            clock_rate=90000, payload_type=96, publisher_id="pub", source="camera",
                            clock=PublisherClock(), send_pli=send_pli, monotonic=timers.monotonic,
                            call_later=timers.call_later)


async def test_a_leg_moves_on_the_target_layers_keyframe_and_rtx_probes_are_dropped():
    timers = FakeTimers()
    track = simulcast_track(timers)
    try:
        leg = Leg()
        track.add_downtrack(leg)
        assert leg.uptrack is track.layers[0] and isinstance(leg.vp8, Vp8Munger)
        for seq in (1, 2):
            for ssrc, rid in ((1, "q"), (2, "h"), (4, "f")):
                await track.on_layer_rtp(rid, layer_packet(ssrc, seq, keyframe=seq == 1), False)
        assert leg.got == [("q", 1), ("q", 2)]
        assert track.sizes == {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
        assert track.legs() == [leg]

        timers.advance(2 * BASE_HOLD + 0.1)
        track.tick(timers.now)                             # clean link, no size, no estimate: try h
        assert leg.layer_choice.target == 1 and leg.uptrack.rid == "q"
        await track.on_layer_rtp("h", layer_packet(2, 3, keyframe=False), False)
        await track.on_layer_rtp("q", layer_packet(1, 3, keyframe=False), False)
        assert leg.got[-1] == ("q", 3), "stays on q until h has a keyframe"
        await track.on_layer_rtp("h", layer_packet(2, 4, keyframe=True), False)
        await track.on_layer_rtp("q", layer_packet(1, 4, keyframe=False), False)
        assert leg.got[-1] == ("h", 4) and leg.uptrack.rid == "h" and leg.layer_choice.current == 1
        assert all(rid == "h" for rid, _ in leg.got[3:])

        # RTX on h: padding-only probes and copies of packets it has are dropped; a real repair passes.
        def rtx(seq: int, payload: bytes) -> RtpPacket:
            return RtpPacket(payload_type=97, sequence_number=500 + seq, timestamp=seq * 4500, ssrc=20,
                             payload=seq.to_bytes(2, "big") + payload)
        await track.on_layer_rtp("h", rtx(4, b""), True)
        await track.on_layer_rtp("h", rtx(4, layer_packet(2, 4, False).payload), True)
        assert track.probes_dropped == 1 and track.duplicates_dropped == 1
        await track.on_layer_rtp("h", rtx(6, layer_packet(2, 6, False).payload), True)
        assert leg.got[-1] == ("h", 6) and track.layers[1].cache.get(6) is not None

        track.muted = True
        assert all(layer.muted for layer in track.layers)
        track.remove_downtrack(leg)
        assert track.legs() == []
    finally:
        track.close()
    assert all(layer.closed for layer in track.layers)


@pytest.mark.parametrize("render_height, layer", [(180, "q"), (360, "h"), (720, "f")])
async def test_a_render_size_picks_the_layer(render_height, layer):
    timers = FakeTimers()
    track = simulcast_track(timers)
    try:
        leg = Leg()
        leg.render_height = render_height
        track.add_downtrack(leg)
        seq = 0
        for _ in range(6):                                 # at most two steps up, one per (doubled) hold
            seq += 1
            for ssrc, rid in ((1, "q"), (2, "h"), (4, "f")):
                await track.on_layer_rtp(rid, layer_packet(ssrc, seq, keyframe=True), False)
            timers.advance(BASE_HOLD + 0.1)
            track.tick(timers.now)
        seq += 1
        for ssrc, rid in ((1, "q"), (2, "h"), (4, "f")):
            await track.on_layer_rtp(rid, layer_packet(ssrc, seq, keyframe=True), False)
        assert leg.uptrack.rid == layer
    finally:
        track.close()
