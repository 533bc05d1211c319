"""Layer liveness (sfu/liveness.py): a simulcast layer the publisher stopped sending is not chosen, and a
leg on it or waiting for it moves to a layer that delivers, lower first. Fake clock throughout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sfu.allocator import UP_HOLD, LayerAllocator
from sfu.dynacast import PAUSE_AFTER, Dynacast
from sfu.layers import LayerSwitcher
from sfu.liveness import LIVE_WINDOW, START_GRACE, LayerLiveness
from sfu.peer import IceSettings
from sfu.pool import WorkerPool
from sfu.relay import ControlDecoder, encode_control
from sfu.worker import Worker
from tests.test_sfu_relay_layers import FakeLink, published, rtp
from tests.test_sfu_simulcast import FakeLeg, LibwebrtcPublisher, legs_of, simulcast_track
from tests.test_sfu_uptrack import FakeTimers

pytestmark = pytest.mark.unit


def test_a_layer_is_live_while_packets_come_then_stopped_unless_paused_or_just_resumed():
    liveness = LayerLiveness(10.0)
    assert liveness.state(10.0) == "starting" and liveness.usable(10.0 + START_GRACE - 0.1)
    assert liveness.state(10.0 + START_GRACE) == "stopped"  # published, never delivered
    liveness.last_packet = 20.0
    assert liveness.state(20.0 + LIVE_WINDOW - 0.1) == "live"
    assert liveness.state(20.0 + LIVE_WINDOW) == "stopped" and not liveness.usable(20.0 + LIVE_WINDOW)
    liveness.set_paused(True, 30.0)
    assert liveness.state(30.0) == "paused" and liveness.usable(30.0)  # choosing it resumes it
    liveness.set_paused(False, 40.0)
    assert liveness.state(40.0 + START_GRACE - 0.1) == "starting"
    assert liveness.state(40.0 + START_GRACE) == "stopped"  # resumed, and its packets never came
    liveness.reported = "live"  # a media worker: the main process's view stands
    assert liveness.state(1000.0) == "live"


def track_with_liveness(now: float):
    track = simulcast_track()
    for layer in track.layers:
        layer.liveness = LayerLiveness(now)
        layer.liveness.last_packet = now
    return track


def test_a_leg_moves_off_a_stopped_layer_to_the_nearest_live_one_lower_first():
    alloc = LayerAllocator()
    track = track_with_liveness(0.0)
    leg = legs_of(track)
    assert alloc.allocate([leg], 1.0) == {}  # all live: the top layer
    for layer in track.layers[:2]:
        layer.liveness.last_packet = 5.0  # f stops after 1.0
    assert alloc.allocate([leg], 5.0) == {leg: 1}
    assert leg.switcher.holds == [False]  # not a step down for the link: no hold
    track.layers[1].liveness.last_packet = 0.0  # h stops too
    assert alloc.allocate([leg], 5.5) == {leg: 0}  # within DOWN_HOLD of the last step: moved all the same
    # only the top layer delivers: the leg goes up to it rather than wait on nothing
    track.layers[0].liveness.last_packet = 0.0
    track.layers[2].liveness.last_packet = 10.0
    assert alloc.allocate([leg], 10.0) == {leg: 2}
    # nothing delivers (the publisher stopped sending): the choice stands
    assert alloc.allocate([leg], 30.0) == {}


def test_a_stopped_layer_is_not_stepped_up_to_until_it_delivers_again():
    alloc = LayerAllocator()
    track = track_with_liveness(0.0)
    leg = legs_of(track)
    leg.switcher.target = leg.switcher.current = 1
    track.layers[2].liveness.last_packet = -10.0  # f has stopped
    for t in (0.0, UP_HOLD, 2 * UP_HOLD):
        for layer in track.layers[:2]:
            layer.liveness.last_packet = t
        assert alloc.allocate([leg], t) == {}
    track.layers[2].liveness.last_packet = 10.0  # f flows again: up after UP_HOLD of fitting
    for layer in track.layers:
        layer.liveness.last_packet = 10.0 + UP_HOLD
    assert alloc.allocate([leg], 10.0) == {}
    assert alloc.allocate([leg], 10.0 + UP_HOLD) == {leg: 2}


def test_a_paused_layer_is_chosen_and_gets_a_grace_for_its_first_packets_once_resumed():
    alloc = LayerAllocator()
    track = track_with_liveness(0.0)
    track.layers[2].liveness.set_paused(True, 0.0)
    leg = legs_of(track)
    leg.switcher.target = leg.switcher.current = 1
    for layer in track.layers[:2]:
        layer.liveness.last_packet = UP_HOLD
    alloc.allocate([leg], 0.0)
    assert alloc.allocate([leg], UP_HOLD) == {leg: 2}  # dynacast resumes it because the leg wants it
    track.layers[2].liveness.set_paused(False, UP_HOLD)
    for layer in track.layers[:2]:
        layer.liveness.last_packet = UP_HOLD + START_GRACE
    assert alloc.allocate([leg], UP_HOLD + START_GRACE - 0.1) == {}  # its keyframe may be on the way
    assert alloc.allocate([leg], UP_HOLD + START_GRACE) == {leg: 1}  # it never came


class AllocatedLeg(FakeLeg):
    """A FakeLeg the allocator can drive: a real LayerSwitcher on real UpTrack layers."""

    __hash__ = object.__hash__
    kind = "video"

    def __init__(self, track, layer: int):
        super().__init__()
        self.uptrack = track
        self.pacer = SimpleNamespace(pace_burst=lambda *_: None)
        self.quality = SimpleNamespace(level="good")
        self.retransmit = SimpleNamespace(media_rate=0.0)
        self.unselected = False
        self.switcher = LayerSwitcher(self, track, layer)

    def can_pad(self) -> bool:
        return False


async def test_a_layer_the_encoder_stopped_sending_costs_the_leg_a_switch_not_its_video():
    """Chromium stops encoding the top layer (framesEncoded stuck, `active` true): the leg on it gets the
    middle layer at its next keyframe, and goes back up once the top layer flows again."""
    timers = FakeTimers()
    pub = LibwebrtcPublisher(timers)
    alloc = LayerAllocator()
    leg = AllocatedLeg(pub.track, 2)
    await pub.frame()
    assert leg.switcher.current == 2
    sending = pub.layers[:2]  # f stops
    for _ in range(int((LIVE_WINDOW + 1.0) / 0.05)):
        await frame_on(pub, sending)
        alloc.allocate([leg], timers.now)
    assert leg.switcher.target == 1 and leg.switcher.current == 1, pub.plis
    before = len(leg.sent)
    for _ in range(10):
        await frame_on(pub, sending)
    assert len(leg.sent) - before == 10  # h keeps coming
    for _ in range(int((UP_HOLD + 1.0) / 0.05)):  # f is back
        await pub.frame()
        alloc.allocate([leg], timers.now)
    assert leg.switcher.current == 2


async def frame_on(pub: LibwebrtcPublisher, layers) -> None:
    """LibwebrtcPublisher.frame on some of its layers only."""
    from aiortc.rtp import RtpPacket

    from tests.test_sfu_simulcast import vp8

    pub.timers.advance(0.05)
    key, pub.keyframe_due = pub.keyframe_due, False
    pub.seq += 1
    for i, layer in enumerate(pub.layers):
        if layer in layers:
            await layer.on_rtp(RtpPacket(payload_type=96, sequence_number=pub.seq, timestamp=pub.seq * 4500,
                                         ssrc=1000 + i, payload=vp8(pub.seq & 0x7FFF, pub.seq & 0xFF, key=key)),
                               pub.timers.now)
    for _ in range(3):
        await asyncio.sleep(0)


def test_dynacast_records_pauses_and_reports_each_change_of_the_layers_states():
    track = track_with_liveness(0.0)
    for layer in track.layers:
        layer.downtracks = []
    track.sinks, track.rids = [], ["q", "h", "f"]
    dynacast = Dynacast(track)
    assert dynacast.states(0.5) == ["live", "live", "live"] and dynacast.states(0.6) is None
    assert dynacast.update(0.0) is None
    assert dynacast.update(PAUSE_AFTER) == ["q"]  # nobody needs h and f
    assert track.layers[2].liveness.paused
    assert dynacast.states(PAUSE_AFTER) == ["stopped", "paused", "paused"]  # q's last packet was at 0.0
    track.sinks = [SimpleNamespace(wanted_layers=lambda: {2})]  # a worker's leg wants f
    assert dynacast.update(PAUSE_AFTER + 1) == ["q", "f"]
    assert dynacast.states(PAUSE_AFTER + 1) == ["stopped", "paused", "starting"]


def test_layer_states_byte_for_byte_and_checked():
    message = {"type": "layer_states", "stream": 7, "states": ["live", "live", "stopped"]}
    assert encode_control(message) == \
        b"\x00\x00\x00\x45" + b'{"type":"layer_states","stream":7,"states":["live","live","stopped"]}'
    assert ControlDecoder().feed(encode_control(message)) == [message]
    decoder = ControlDecoder()
    assert decoder.feed(encode_control({**message, "states": ["live", "gone"]})) == []
    assert "'gone' is not one of" in decoder.rejected[0]


async def test_a_worker_takes_the_main_process_view_of_its_layers():
    """A worker receives only the layers its legs forward, so the main process tells it which deliver."""
    face = published([])
    for i, layer in enumerate(face.layers):
        await layer.on_rtp(rtp(1, 100 + i), 0.0)
    pool = WorkerPool(2, IceSettings())
    link = FakeLink()
    stream = pool.stream_for(face)
    pool.ref(stream, link)
    tracks = [m for m in link.messages if m["type"] == "track"]
    assert tracks[-1]["states"] == ["live", "live", "live"]
    worker = Worker(0, None, None)
    worker.send = lambda message: None
    for message in tracks:
        await worker._handle(message)
    mirror = worker.streams[stream.index]
    assert [layer.liveness.state(1e9) for layer in mirror.layers] == ["live"] * 3  # not its own packets
    allocated = []
    worker.sessions["s1"] = SimpleNamespace(downtrack=lambda track_id: track_id == "TR_cam" or None,
                                            allocate=lambda: allocated.append(1))
    stream.layer_states(["live", "live", "stopped"])
    await worker._handle(link.messages[-1])
    assert [layer.liveness.state(0.0) for layer in mirror.layers] == ["live", "live", "stopped"]
    assert allocated == [1]  # its viewers choose again
    assert LayerAllocator.deliverable(SimpleNamespace(uptrack=mirror), 2, 0.0) == 1
    pool.unref(stream, link)
