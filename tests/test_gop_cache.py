"""GOP cache: a viewer who joins late sees a picture at once even when the publisher ignores keyframe
requests (OBS), because its leg starts from the cached keyframe and catches up with live."""

from __future__ import annotations

from av.video.frame import PictureType

from sfu.aiortc_seam import ignore_feedback
from sfu.buffer import CachedPacket
from sfu.forwarder import Forwarder
from sfu.gopcache import GopCache
from signaling.room import ROOMS
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.test_whip_whep import (ROOM, WhepViewer, WhipPublisher, assert_counters_healthy, http,  # noqa: F401
                                  token, wait_no_peers, wait_until)

KEYFRAME_INTERVAL = 120  # frames: 4 s at 30 fps, and nothing in between


class ScheduledKeyframes(CounterVideoTrack):
    """Counter frames with a keyframe every KEYFRAME_INTERVAL frames, as an encoder on a fixed GOP."""

    async def recv(self):
        frame = await super().recv()
        if (self.count - 1) % KEYFRAME_INTERVAL == 0:
            frame.pict_type = PictureType.I
        return frame


def pkt(seq: int, ts: int, keyframe: bool = False, size: int = 1000, arrival: float = 0.0) -> CachedPacket:
    return CachedPacket(seq, ts, 0, b"\x00" * size, None, arrival, keyframe)


def test_gop_cache_keeps_packets_since_the_last_keyframe_within_its_bounds():
    gop = GopCache(max_seconds=2.0, max_bytes=10_000)
    gop.add(pkt(1, 0))
    assert gop.packets is None, "nothing before the first keyframe"
    gop.add(pkt(2, 3000, keyframe=True))
    gop.add(pkt(3, 3000, keyframe=True))  # the IDR's first fragment after the SPS: same frame
    gop.add(pkt(4, 6000))
    assert [p.seq for p in gop.packets] == [2, 3, 4]
    old = gop.packets
    gop.add(pkt(5, 9000, keyframe=True, arrival=1.0))
    assert [p.seq for p in gop.packets] == [5] and [p.seq for p in old] == [2, 3, 4]
    for seq in range(6, 20):
        gop.add(pkt(seq, seq * 3000, arrival=1.0))
    assert gop.packets is None and gop.overflows == 1, "over 10 000 bytes: given up"
    gop.add(pkt(20, 90000, keyframe=True, arrival=5.0))
    gop.add(pkt(21, 93000, arrival=7.5))
    assert gop.packets is None and gop.overflows == 2, "over 2 s: given up"


def test_replayed_timestamps_are_compressed_and_live_continues_at_real_spacing():
    fwd = Forwarder(90000, video=True, initial_seq=1000, initial_ts=50_000)
    assert fwd.munge_replay(10, 9000, True, 0.0, 4.0) == (1000, 50_000)
    assert fwd.munge_replay(11, 9000 + 3000, False, 0.0, 4.0) == (1001, 50_750)
    assert fwd.munge_replay(12, 9000 + 12000, False, 0.0, 4.0) == (1002, 53_000)
    fwd.end_replay()
    assert fwd.munge(13, 9000 + 15000, False, 0.0) == (1003, 56_000), "the next frame 3000 ticks later"
    assert fwd.out_timestamp(11, 12000) == 50_750, "a retransmitted replayed packet keeps its timestamp"
    assert fwd.out_timestamp(13, 24000) == 56_000


async def test_a_late_viewer_decodes_at_once_although_the_publisher_ignores_pli(stoa_server, http):
    video = ScheduledKeyframes()
    pub = WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "obs", "instructor"))
    await pub.publish(video, ToneAudioTrack())
    for transceiver in pub.pc.getTransceivers():
        ignore_feedback(transceiver.sender)
    room = stoa_server.app[ROOMS].rooms[ROOM]
    up = next(t for t in room.tracks() if t.kind == "video")

    # Join in the middle of the second GOP: the next keyframe is more than a second away.
    await wait_until(lambda: video.count >= KEYFRAME_INTERVAL + 40, 30, "the second GOP")
    joined_at = video.count
    next_keyframe = 2 * KEYFRAME_INTERVAL
    viewer = await WhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "late", "viewer")).start()
    await wait_until(lambda: "video" in viewer.collectors, 10, "the video track")
    await viewer.video.wait_frames(1, timeout=20)
    first_decoded_at = video.count
    assert first_decoded_at < next_keyframe, (
        f"the first frame was decoded at publisher frame {first_decoded_at}, before its next keyframe "
        f"({next_keyframe}); joined at {joined_at}")
    assert viewer.video.counters[0] == KEYFRAME_INTERVAL, "the leg started on the cached keyframe"
    assert up.plis_sent >= 1 and up.replays == 1

    # It catches up with live and stays there, every frame in order.
    await wait_until(lambda: viewer.video.counters and viewer.video.counters[-1] >= video.count - 10, 15,
                     "the viewer to catch up with live")
    await viewer.video.wait_frames(len(viewer.video.counters) + 30, timeout=10)
    assert_counters_healthy(viewer.video.counters, min_ratio=0.95)
    leg = next(d for _, d in room.participants["late"].subscriber.legs if d.kind == "video")
    assert leg.replayed > 0 and not up._replays and leg in up.downtracks
    assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)


class RecordingLeg:
    """A leg that records what the UpTrack does with it (the replay protocol of sfu/downtrack.py)."""

    subscriber_id = "rec"

    def __init__(self) -> None:
        import asyncio
        import types

        self.seam = types.SimpleNamespace(ready=asyncio.Event())
        self.seam.ready.set()
        self.events: list[tuple] = []

    def replay(self, packet, speedup: float) -> None:
        self.events.append(("replay", packet.seq))

    def end_replay(self) -> None:
        self.events.append(("live",))

    def forward(self, cached, ntp, send_time, tails) -> None:
        self.events.append(("forward", cached.seq))

    def detach(self, uptrack=None) -> None:
        pass


async def test_replay_follows_on_into_a_fresher_gop_then_goes_live_without_a_gap():
    import asyncio
    import time

    from aiortc.rtp import RtpPacket

    from tests.test_sfu_uptrack import make_track

    def vp8(seq: int, keyframe: bool) -> RtpPacket:
        payload = b"\x10" + (b"\x00" if keyframe else b"\x01") + b"\x00" * 20
        return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=1, payload=payload)

    track = make_track("video")
    t0 = time.time() - 8.0
    for seq in range(1, 21):  # a GOP 8 s old: replayed at 4x, a packet every 0.1 s, 2 s in all
        await track.on_rtp(vp8(seq, seq == 1), t0 + (seq - 1) * 0.4)
    leg = RecordingLeg()
    track.add_downtrack(leg)
    assert leg not in track.downtracks, "replaying first"
    await asyncio.sleep(0.3)
    await track.on_rtp(vp8(21, True), time.time())  # the publisher answered the PLI
    deadline = time.monotonic() + 5
    while ("live",) not in leg.events and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await track.on_rtp(vp8(22, False), time.time())
    assert leg.events == [("replay", seq) for seq in range(1, 22)] + [("live",), ("forward", 22)], \
        "the old GOP, then the new one, then live: every packet once, in order"
    assert track.downtracks == [leg]
    track.close()
