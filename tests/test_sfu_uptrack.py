"""UpTrack units: sinks that fail, and keyframe requests coalesced on an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtpPacket

from sfu.uptrack import KEYFRAME_REQUEST_INTERVAL, PublisherClock, UpTrack

pytestmark = pytest.mark.unit  # the fast lane: no server, no browser (README)


class FakeTimers:
    """An injected clock and call_later: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[list] = []  # [when, callback, cancelled]

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback):
        entry = [self.now + delay, callback, False]
        self.pending.append(entry)

        class Handle:
            def cancel(self_inner) -> None:
                entry[2] = True
        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [e for e in self.pending if e[0] <= self.now and not e[2]]
        self.pending = [e for e in self.pending if e not in due and not e[2]]
        for entry in sorted(due, key=lambda e: e[0]):
            entry[1]()


def make_track(kind: str = "video", timers: FakeTimers | None = None, plis: list | None = None) -> UpTrack:
    async def send_pli(ssrc: int) -> None:
        if plis is not None:
            plis.append((timers.now if timers else 0.0, ssrc))

    extra = {"monotonic": timers.monotonic, "call_later": timers.call_later} if timers else {}
    return UpTrack(track_id="TR_test", kind=kind, mime_type="video/VP8" if kind == "video" else "audio/opus",
                   clock_rate=90000 if kind == "video" else 48000, payload_type=96, publisher_id="pub",
                   source="camera", clock=PublisherClock(), send_pli=send_pli, **extra)


def packet(seq: int, keyframe: bool = True) -> RtpPacket:
    # VP8 descriptor with S=1, partition 0, then a frame tag whose bit 0 is clear on a keyframe.
    payload = b"\x10" + (b"\x00" if keyframe else b"\x01") + b"\x00" * 20
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=1234, payload=payload)


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[int] = []

    def feed(self, packet: RtpPacket, arrival: float) -> None:
        if self.fail:
            raise RuntimeError("this sink is broken")
        self.seen.append(packet.sequence_number)


async def test_a_failing_sink_is_removed_and_the_next_sink_still_gets_the_packet():
    track = make_track("audio")
    first, broken, after = Sink(), Sink(fail=True), Sink()
    for sink in (first, broken, after):
        track.add_sink(sink)
    await track.on_rtp(packet(1), 0.0)
    assert after.seen == [1], "the sink after a failing one gets the same packet"
    assert track.sinks == [first, after]
    await track.on_rtp(packet(2), 0.0)
    assert first.seen == [1, 2] and after.seen == [1, 2]


async def test_two_failing_sinks_in_a_row_are_both_removed():
    track = make_track("audio")
    a, b, c = Sink(fail=True), Sink(fail=True), Sink()
    for sink in (a, b, c):
        track.add_sink(sink)
    await track.on_rtp(packet(1), 0.0)
    assert track.sinks == [c] and c.seen == [1]


class BrokenLeg:
    subscriber_id = "broken"

    def forward(self, *args) -> None:
        raise ValueError("packet is too long")


class Leg:
    subscriber_id = "ok"

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def forward(self, cached, ntp, send_time, tails) -> None:
        self.seqs.append(cached.seq)


async def test_a_leg_that_raises_never_reaches_the_publishers_receive_loop():
    track = make_track("audio")
    ok = Leg()
    track.downtracks.extend([BrokenLeg(), ok])
    for seq in range(3):
        await track.on_rtp(packet(seq), 0.0)  # must not raise
    assert ok.seqs == [0, 1, 2], "the leg after a failing one keeps every packet"
    assert track.forward_errors == 3


async def drain() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_keyframe_requests_inside_the_interval_are_sent_when_it_ends():
    timers, plis = FakeTimers(), []
    track = make_track("video", timers, plis)
    await track.on_rtp(packet(1), 0.0)  # learns the media SSRC

    track.request_keyframe()
    await drain()
    assert len(plis) == 1, "the first request goes out at once"

    timers.advance(0.2)
    track.request_keyframe()  # inside the interval: deferred, not dropped
    timers.advance(0.1)
    track.request_keyframe()  # coalesced with the pending one
    await drain()
    assert len(plis) == 1

    timers.advance(KEYFRAME_REQUEST_INTERVAL - 0.3 - 0.001)
    await drain()
    assert len(plis) == 1, "not before the interval ends"
    timers.advance(0.002)
    await drain()
    assert len(plis) == 2, "sent when the interval ends"
    assert plis[1][0] - plis[0][0] >= KEYFRAME_REQUEST_INTERVAL
    assert track.keyframe_requests == 3 and track.plis_sent == 2

    # Nothing more pending: a quiet period sends nothing.
    timers.advance(5.0)
    await drain()
    assert len(plis) == 2
    # A request long after the last one goes out at once again.
    track.request_keyframe()
    await drain()
    assert len(plis) == 3


async def test_a_deferred_request_dies_with_the_track():
    timers, plis = FakeTimers(), []
    track = make_track("video", timers, plis)
    await track.on_rtp(packet(1), 0.0)
    track.request_keyframe()
    track.request_keyframe()
    await drain()
    track.close()
    timers.advance(1.0)
    await drain()
    assert len(plis) == 1


class ReportingSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.reports: list[int] = []

    def sender_report(self, ntp_time: float, rtp_timestamp: int) -> None:
        self.reports.append(rtp_timestamp)


async def test_sinks_attach_once_and_only_report_takers_get_sender_reports():
    track = make_track("audio")
    plain, reporting = Sink(), ReportingSink()
    for sink in (plain, reporting, reporting):
        track.add_sink(sink)
    assert track.sinks == [plain, reporting]
    track.on_sender_report(1, (3_900_000_000 << 32), 1234, arrival=100.0)
    assert reporting.reports == [1234]
    track.remove_sink(reporting)
    track.remove_sink(reporting)  # not attached any more: ignored
    track.on_sender_report(1, (3_900_000_000 << 32), 5678, arrival=101.0)
    await track.on_rtp(packet(1), 0.0)
    assert reporting.reports == [1234] and reporting.seen == [] and plain.seen == [1]


async def test_a_request_stands_until_a_keyframe_comes_and_a_met_one_is_not_sent():
    timers, plis = FakeTimers(), []
    track = make_track("video", timers, plis)
    await track.on_rtp(packet(1), 0.0)
    track.request_keyframe()
    await drain()
    timers.advance(0.2)
    await track.on_rtp(packet(2, keyframe=False), 0.0)  # inside the interval: not yet
    assert len(plis) == 1
    timers.advance(KEYFRAME_REQUEST_INTERVAL)
    await track.on_rtp(packet(3, keyframe=False), 0.0)  # no keyframe came: the publisher missed it
    await drain()
    assert len(plis) == 2 and track.keyframe_requests == 1
    await track.on_rtp(packet(4), 0.0)  # the keyframe: the request is met
    timers.advance(KEYFRAME_REQUEST_INTERVAL)
    await track.on_rtp(packet(5, keyframe=False), 0.0)
    await drain()
    assert len(plis) == 2
    track.request_keyframe()  # goes out at once
    timers.advance(0.1)
    track.request_keyframe()  # inside the interval: deferred ...
    await track.on_rtp(packet(6), 0.0)  # ... and met by a keyframe before it ends: never sent
    timers.advance(KEYFRAME_REQUEST_INTERVAL)
    await drain()
    assert len(plis) == 3 and track.keyframe_requests == 3
