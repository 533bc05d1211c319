"""A simulcast track relayed to a media worker one stream per layer (sfu/pool.py, sfu/worker.py,
docs/scaling.md): the control messages byte for byte, and the main process's streams against a worker's
MirrorTracks and a real LayerSwitcher, wired back to back without processes."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiortc.rtp import RtpPacket

from sfu.dynacast import needed_layers
from sfu.layers import LayerSwitcher
from sfu.peer import IceSettings
from sfu.pool import WorkerPool
from sfu.relay import ControlDecoder, decode_datagram, encode_control
from sfu.uptrack import PublisherClock, UpTrack
from sfu.worker import MirrorTrack, Worker
from tests.test_sfu_simulcast import FakeLeg, vp8

pytestmark = pytest.mark.unit


def test_layer_messages_byte_for_byte():
    assert encode_control({"type": "wants", "stream": 7, "layers": [0, 2]}) == \
        b"\x00\x00\x00\x2a" + b'{"type":"wants","stream":7,"layers":[0,2]}'
    assert encode_control({"type": "video_size", "session": "s1", "stream": 7, "width": 240, "height": 135}) == \
        b"\x00\x00\x00\x48" + b'{"type":"video_size","session":"s1","stream":7,"width":240,"height":135}'
    speakers = {"type": "speakers", "session": "s1", "participants": ["teacher", "ana"]}
    assert encode_control(speakers) == \
        b"\x00\x00\x00\x43" + b'{"type":"speakers","session":"s1","participants":["teacher","ana"]}'
    assert ControlDecoder().feed(encode_control(speakers)) == [speakers]
    track = {"type": "track", "stream": 7, "track_id": "TR_a", "kind": "video", "mime_type": "video/VP8",
             "clock_rate": 90000, "payload_type": 96, "layers": [5, 6, 7], "rids": ["q", "h", "f"]}
    assert ControlDecoder().feed(encode_control(track)) == [track]


@pytest.mark.parametrize("message, problem", [
    ({"type": "wants", "stream": 7, "layers": [0, 0]}, "'wants': layers: .* non-unique"),
    ({"type": "wants", "stream": 7, "layers": [8]}, "'wants': layers/0: 8 is greater than the maximum of 7"),
    ({"type": "video_size", "session": "s", "stream": 7, "width": -1, "height": 0},
     "'video_size': width: -1 is less than the minimum of 0"),
    ({"type": "speakers", "session": "s", "participants": "teacher"},
     "'speakers': participants: 'teacher' is not of type 'array'"),
    ({"type": "track", "stream": 7, "track_id": "TR_a", "kind": "video", "mime_type": "video/VP8",
      "clock_rate": 90000, "payload_type": 96, "layers": [5, 7]}, "'track': message: 'rids' is a dependency"),
])
def test_bad_layer_messages_are_named(message, problem):
    decoder = ControlDecoder()
    assert decoder.feed(encode_control(message)) == []
    assert len(decoder.rejected) == 1 and re.search(problem, decoder.rejected[0]), decoder.rejected


class FakeLink:
    """What RelayStream and WorkerPool.ref use of a WorkerLink."""

    alive = True

    def __init__(self):
        self.messages: list[dict] = []
        self.entries: list[bytes] = []

    def notify(self, message):
        self.messages.append(message)

    def push(self, entry):
        self.entries.append(entry)


def published(plis: list[int]) -> UpTrack:
    async def send_pli(ssrc):
        plis.append(ssrc)

    def make(track_id):
        return UpTrack(track_id=track_id, kind="video", mime_type="video/VP8", clock_rate=90000, payload_type=96,
                       publisher_id="teacher", source="camera", clock=PublisherClock(), send_pli=send_pli)
    layers = [make("TR_cam.q"), make("TR_cam.h"), make("TR_cam")]
    layers[-1].set_layers(layers, ["q", "h", "f"])
    return layers[-1]


def rtp(seq: int, ssrc: int, key: bool = False) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=ssrc,
                     payload=vp8(seq, 1, key=key))


async def test_each_layer_goes_to_the_worker_only_while_its_legs_want_it():
    plis: list[int] = []
    face = published(plis)
    for i, layer in enumerate(face.layers):  # the main process has received each layer's SSRC
        await layer.on_rtp(rtp(1, 100 + i), 0.0)
    pool = WorkerPool(2, IceSettings())
    link = FakeLink()
    stream = pool.stream_for(face)
    pool.ref(stream, link)
    tracks = [m for m in link.messages if m["type"] == "track"]
    assert [m["track_id"] for m in tracks] == ["TR_cam.q", "TR_cam.h", "TR_cam"]
    assert tracks[-1]["layers"] == [s.index for s in stream.layers] and tracks[-1]["rids"] == ["q", "h", "f"]
    assert stream.layers[-1] is stream and all(s.links == [] for s in stream.layers)  # nothing wanted yet

    # The worker builds its mirror from those messages; a leg starts on the top layer and says so.
    sent: list[dict] = []
    worker = Worker(0, None, None)
    worker.send = sent.append
    for message in tracks:
        await worker._handle(message)
    mirror = worker.streams[stream.index]
    assert [layer.track_id for layer in mirror.layers] == ["TR_cam.q", "TR_cam.h", "TR_cam"]
    leg = FakeLeg()
    switcher = LayerSwitcher(leg, mirror, 2)
    await asyncio.sleep(0)
    assert sent[-1] == {"type": "wants", "stream": stream.index, "layers": [2]}
    stream.want(link, sent[-1]["layers"])
    assert [s.links for s in stream.layers] == [[], [], [link]] and needed_layers(face) == {0, 2}

    # Only the wanted layer is relayed, on its own stream index.
    for i, layer in enumerate(face.layers):
        await layer.on_rtp(rtp(2, 100 + i), 0.0)
    assert [decode_datagram(b"\x01\x01" + e)[0].stream for e in link.entries] == [stream.index]
    for packet in decode_relayed(stream, 2, key=True):
        mirror.on_relayed(packet, 0.0)
    assert switcher.current == 2 and len(leg.sent) == 1

    # The allocator picks q: the worker wants q and f while the switch waits, the main process asks q's
    # publisher stream for a keyframe, and once it came the worker lets f go.
    before = face.layers[0].keyframe_requests
    switcher.select(0)
    await asyncio.sleep(0)
    assert sent[-1]["layers"] == [0, 2]
    stream.want(link, sent[-1]["layers"])
    assert face.layers[0].keyframe_requests == before + 1
    q = stream.layers[0]
    for packet in decode_relayed(q, 3, key=True):
        worker.streams[q.index].on_relayed(packet, 0.0)
    await asyncio.sleep(0)
    assert switcher.current == 0 and sent[-1]["layers"] == [0]
    stream.want(link, sent[-1]["layers"])
    assert [s.links for s in stream.layers] == [[link], [], []] and needed_layers(face) == {0}

    # The last viewer goes: the streams untrack (top first: its close takes its layers along).
    pool.unref(stream, link)
    assert [m["stream"] for m in link.messages if m["type"] == "untrack"] == [s.index for s in reversed(stream.layers)]
    assert pool.streams == {} and all(not layer.sinks for layer in face.layers)


def decode_relayed(stream, seq: int, key: bool):
    link = FakeLink()
    stream.links = [link]
    stream.feed(rtp(seq, 999, key=key), 0.0)
    stream.links = []
    return decode_datagram(b"\x01\x01" + link.entries[0])


async def test_a_worker_counts_legs_once_per_track_not_per_layer():
    worker = Worker(0, None, None)
    worker.send = lambda message: None
    desc = {"kind": "video", "mime_type": "video/VP8", "clock_rate": 90000, "payload_type": 96}
    for stream, track_id in ((1, "T.q"), (2, "T")):
        await worker._handle({"type": "track", "stream": stream, "track_id": track_id, **desc,
                              **({"layers": [1, 2], "rids": ["q", "f"]} if stream == 2 else {})})
    leg = FakeLeg()
    LayerSwitcher(leg, worker.streams[2], 1).select(0)  # two taps while it switches
    assert isinstance(worker.streams[1], MirrorTrack) and worker.load.leg_count() == 1
    assert worker.load.legs() == [leg]


async def test_a_layer_not_relayed_to_a_worker_tells_it_its_rate():
    """A worker that was never sent a layer has no rate for it, and its allocator would never step up to it
    under a cap (docs/simulcast.md): the main process sends it the layer's rate (`rate`) once a second."""
    now = [0.0]

    async def send_pli(ssrc):
        pass

    layers = [UpTrack(track_id=f"TR_cam{rid}", kind="video", mime_type="video/VP8", clock_rate=90000,
                      payload_type=96, publisher_id="teacher", source="camera", clock=PublisherClock(),
                      send_pli=send_pli, monotonic=lambda: now[0]) for rid in (".q", ".h", "")]
    face = layers[-1]
    face.set_layers(layers, ["q", "h", "f"])
    pool = WorkerPool(2, IceSettings())
    link, other = FakeLink(), FakeLink()
    stream = pool.stream_for(face)
    pool.ref(stream, link)
    pool.ref(stream, other)
    stream.want(link, [0])           # `link` gets q only
    stream.want(other, [0, 1, 2])    # `other` gets every layer: it measures them itself
    for seq in range(1, 11):
        now[0] = seq * 0.15
        for i, layer in enumerate(layers):
            await layer.on_rtp(rtp(seq, 100 + i), now[0])
    rates = [m for m in link.messages if m["type"] == "rate"]
    assert {m["stream"] for m in rates} == {stream.layers[1].index, stream.layers[2].index}
    assert all(m["bitrate"] > 0 for m in rates) and not [m for m in other.messages if m["type"] == "rate"]
    assert ControlDecoder().feed(encode_control(rates[0])) == [rates[0]]
    bad = ControlDecoder()
    assert bad.feed(encode_control({"type": "rate", "stream": 7, "bitrate": -1})) == [] and bad.rejected

    # The worker keeps it as the layer's rate, which its allocator reads (sfu/allocator.py); a rate it
    # measures itself wins.
    worker = Worker(0, None, None)
    worker.send = lambda message: None
    for message in [m for m in link.messages if m["type"] == "track"]:
        await worker._handle(message)
    await worker._handle(rates[-1])
    h = worker.streams[rates[-1]["stream"]]
    assert h.known_bitrate == rates[-1]["bitrate"] and not h.bitrate()
