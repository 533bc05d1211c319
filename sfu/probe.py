"""Probing a viewer's downlink before a layer switch up (LiveKit's pkg/sfu/bwe probe, much reduced).

A leg that could show a higher layer than the viewer's estimate allows first sends padding on its RTX
stream, so that the viewer receives about what the higher layer would cost (`target`), and switches
up only if the viewer's feedback holds. Padding-only RTP (sfu/rtp.padding_packet) is counted by
Chromium's receive-side estimator (it carries abs-send-time) and dropped by its RTX stream before the
decoder, so it never shows as media.

The feedback is REMB, and REMB is read as Chromium computes it (measured here): while its delay
detector says "normal" the estimate is in its increase state and every REMB (200 ms to 1 s apart) is
higher than the last, by 8% a second far from the link's last known capacity and by 1 kbit/s a REMB
near it, never above 1.5 times the incoming rate; while delay builds it holds or falls. Padding
raises the incoming rate, so a REMB that keeps rising during the probe means the viewer's link takes
the target without queueing. The detector needs a moment to see a queue build, so the REMB must still be
rising after PROBE_MIN: a probe holds on a higher REMB that comes PROBE_MIN or later into it, PROBE_RISE
over where it began, without a congestion signal; it fails on a congestion signal, on a REMB that stops rising for PROBE_STALL (the viewer's
estimator holds while delay builds: the padding queued; a rising one moves every 200-250 ms; it also
holds for a few seconds after a queue drained, so a probe then fails for nothing and the wait stays
short), or after
PROBE_DURATION without the rise. Failing fast matters: on a link that cannot carry the target, the
padding queues ahead of the media. A failed probe
doubles the wait before the next one (PROBE_WAIT to PROBE_WAIT_MAX); a held one resets it.

With transport-cc feedback from the viewer (sfu/twcc.py's PacketResults: send time, arrival time and
size of each packet) the verdict comes from the packets themselves, as libwebrtc's ProbeBitrateEstimator
and delay-based detector read them. A packet's one-way delay is arrival - sent (two clocks: only its
growth means anything); its queueing delay is that over the least one-way delay of the last BASE_FOR
seconds, and the queue is read through a MIN_WINDOW minimum filter (a padding tick's burst or a frame's
packets queue for a moment without the link being full). A feedback probe fails as soon as the queueing
delay grew TCC_GROWTH over the probe, or TCC_LOSS of its packets are lost; it holds once its packets
arrived over TCC_HOLD_SPAN at TCC_HOLD_RATIO of the rate they were sent without that growth. A probe
above the bottleneck fills its queue, and the packets that waited in it arrive spaced by the bottleneck's
rate: that rate (`Probe.capacity`) is the link's capacity, so the allocator can go to the right layer at
once instead of stepping.

`ProbeController` is pure (the caller passes `now`; tests/test_sfu_probe.py drives it); `PaddingSender`
is the timer that sends the padding of a running probe on one leg; `FeedbackHistory` keeps a viewer's
recent PacketResults.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sfu.twcc import PacketResult

logger = logging.getLogger(__name__)

PROBE_DURATION = 2.5   # s a probe may take to show the rise
PROBE_RISE = 1.015     # the REMB must rise 1.5% over its value when the probe began (3 REMBs near capacity)
PROBE_STALL = 1.2      # s without a higher REMB: the padding queued (a flat REMB comes once a second)
PROBE_MIN = 1.2        # s before a rise counts: Chromium sees a queue build within half a second
PROBE_WAIT = 2.0       # s after a congestion signal or a failed probe before the next probe
PROBE_WAIT_MAX = 4.0   # s, the longest wait after failed probes (a widened link is found within it)
PROBE_GAP = 1.0        # s after a probe held, before the next (the switch happens meanwhile)
PADDING_TICK = 0.02    # s between two batches of padding
PADDING_MAX = 2_000_000  # bits/s of padding at most, whatever the target
MONITOR_RATE = 40_000  # bits/s of numbered padding between transport-cc probes (the queue's samples)

# Transport-cc verdicts (libwebrtc's probe_bitrate_estimator.cc and delay-based detector, much reduced)
TCC_GROWTH = 0.025     # s of queueing delay growth over a probe: the link cannot carry it
TCC_HOLD_SPAN = 0.8    # s of arrivals without that growth before a probe holds (a link's token bucket hides
                       # the first bytes over its rate: the probe must outlast it)
TCC_HOLD_RATIO = 0.85  # of what the probe sent (by send time), received (by arrival time)
TCC_LOSS = 0.05        # lost share of a probe's packets that fails it
TCC_MIN_PACKETS = 20   # packets a loss share is judged on
TCC_PROBE_MAX = 1.5    # s without a verdict: failed
TCC_FAR = 0.6          # a link measured under this share of the probe's target ...
TCC_WAIT_MAX = 8.0     # ... makes the next probe wait up to this
QUEUED = 0.004         # s over the base delay: the packet waited in the bottleneck's queue
MIN_WINDOW = 0.03      # s, the minimum filter over a probe's queueing delays (over a padding tick)
BASE_FOR = 10.0        # s the base (queue-free) one-way delay is the minimum over
HISTORY = 2.0          # s of PacketResults kept
QUEUE_SPAN = 0.06      # s of sending the queue's growth is read over, at least (three padding ticks) ...
QUEUE_FIT = 0.2        # ... and at most (the last of it: before, the link's token bucket may have hidden it)
TCC_SURE = 0.05        # s of growth that fails a probe whatever the slope says
TCC_UNDER = 0.8        # a probe whose link delivered less than this of its target failed (nearer, the
                       # growth may be the viewer's own stall: its arrival times bunch up again)
UTILIZATION = 0.95     # of a measured capacity, the estimate (libwebrtc's kTargetUtilizationFraction)


@dataclass
class Probe:
    key: object          # what the probe is for (the leg)
    target: float        # bits/s the viewer should receive during the probe
    padding: float       # bits/s of padding that makes it up
    started: float
    remb: float          # the REMB when it began
    peak: float = 0.0    # the highest REMB since, and when it came
    peak_at: float = 0.0
    feedback: bool = False  # judged from transport-cc PacketResults, not REMB
    results: list = field(default_factory=list)  # its PacketResults (sent since it began)
    capacity: float | None = None  # bits/s the bottleneck delivered, when the probe overfilled it
    received: float = 0.0  # bits/s received of the probe's covered packets


def arrival_rate(results: Sequence[PacketResult]) -> float | None:
    """Bits/s over the arrival span of received results sorted by arrival (the first one's bytes came
    before the span began), as libwebrtc's receive rate; None under two packets or no span."""
    if len(results) < 2:
        return None
    span = results[-1].arrival - results[0].arrival
    if span <= 0:
        return None
    return 8 * (sum(r.size for r in results) - results[0].size) / span


def send_rate(results: Sequence[PacketResult]) -> float | None:
    ordered = sorted(results, key=lambda r: r.sent)
    if len(ordered) < 2 or ordered[-1].sent <= ordered[0].sent:
        return None
    return 8 * (sum(r.size for r in ordered) - ordered[-1].size) / (ordered[-1].sent - ordered[0].sent)


def min_queue(queued: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """The least queueing delay of (arrival, delay) points arriving in [start, end]."""
    inside = [q for at, q in queued if start <= at <= end]
    return min(inside) if inside else None


def queued_run(received: Sequence[PacketResult], base: float) -> list[PacketResult]:
    """The last run of received packets (by arrival) that waited in the bottleneck's queue: they left it
    back to back, at the link's rate. Empty when too few queued to tell a rate."""
    run = 0
    for r in reversed(received):
        if r.arrival - r.sent - base <= QUEUED:
            break
        run += 1
    tail = list(received[len(received) - run:]) if run else []
    if run < 5 or tail[-1].arrival - tail[0].arrival < 0.02:
        return []
    return tail


def bottleneck_rate(received: Sequence[PacketResult], base: float) -> float | None:
    """The rate the last queued run arrived at (the link's, when every packet is numbered)."""
    return arrival_rate(queued_run(received, base))


def queue_slope(received: Sequence[PacketResult], base: float) -> float | None:
    """How fast the queueing delay grew per second of sending (least squares over the last run of packets
    that waited QUEUED, at most QUEUE_FIT of sending); None over less than QUEUE_SPAN. Into a FIFO link of rate C
    at a rate R the delay grows (R - C) / C a second, so C = R / (1 + slope), whatever the packets that
    are not numbered (they wait in the same queue) and however the viewer batches its arrival times."""
    points = sorted((r.sent, r.arrival - r.sent - base) for r in received)
    if not points:
        return None
    last, run = points[-1][0], 0
    for sent, q in reversed(points):  # the packets that met the queue, up to the last one
        if q <= QUEUED or sent < last - QUEUE_FIT:
            break
        run += 1
    points = points[len(points) - run - 1:] if run < len(points) else points  # and the one before it
    if run < 3 or last - points[0][0] < QUEUE_SPAN:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_q = sum(q for _, q in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (q - mean_q) for t, q in points) / var if var > 0 else None


class FeedbackHistory:
    """One viewer's recent PacketResults and the base one-way delay (the least of the last BASE_FOR s)."""

    def __init__(self) -> None:
        self.results: deque[PacketResult] = deque()
        self._mins: deque[tuple[int, float]] = deque()  # (second sent, least one-way delay in it)
        self.media = False  # media packets carry the transport-wide number (not only padding)

    def add(self, results: Iterable[PacketResult], now: float) -> None:
        for r in results:
            self.results.append(r)
            if not r.probe:
                self.media = True
            if r.arrival is None:
                continue
            delay, second = r.arrival - r.sent, int(r.sent)
            if self._mins and self._mins[-1][0] == second:
                if delay < self._mins[-1][1]:
                    self._mins[-1] = (second, delay)
            else:
                self._mins.append((second, delay))
        while self.results and self.results[0].sent < now - HISTORY:
            self.results.popleft()
        while len(self._mins) > 1 and self._mins[0][0] < now - BASE_FOR:
            self._mins.popleft()

    @property
    def base(self) -> float | None:
        return min(d for _, d in self._mins) if self._mins else None

    def received(self, since: float = -math.inf) -> list[PacketResult]:
        """Received results sent at `since` or later, by arrival."""
        return sorted((r for r in self.results if r.arrival is not None and r.sent >= since),
                      key=lambda r: r.arrival)

    def lost_share(self, since: float) -> tuple[int, float]:
        window = [r for r in self.results if r.sent >= since]
        lost = sum(1 for r in window if r.arrival is None)
        return len(window), (lost / len(window) if window else 0.0)


class ProbeController:
    """One viewer's probes, one at a time."""

    def __init__(self) -> None:
        self.probe: Probe | None = None
        self.wait = PROBE_WAIT
        self.not_before = -math.inf
        self.started = self.succeeded = self.failed = 0
        self.last_result: str | None = None
        self.feedback = False  # new probes are judged from transport-cc feedback (on_feedback)

    def ready(self, now: float) -> bool:
        return self.probe is None and now >= self.not_before

    def start(self, key: object, target: float, sent: float, remb: float | None, now: float) -> Probe | None:
        """Begin a probe toward `target` bits/s while `sent` bits/s of media go to the viewer."""
        if not self.ready(now) or remb is None or target <= sent:
            return None
        self.probe = Probe(key, target, min(PADDING_MAX, target - sent), now, remb, remb, now, self.feedback)
        self.started += 1
        return self.probe

    def on_congestion(self, now: float) -> str | None:
        """The viewer's link is full: a running probe failed; either way the next one waits."""
        if self.probe is not None:
            return self._end(False, now, "congestion")
        self.not_before = max(self.not_before, now + self.wait)
        return None

    def on_estimate(self, remb: float, now: float) -> str | None:
        """A REMB during the probe: "held" or "failed" when that decides it, else None."""
        probe = self.probe
        if probe is None or probe.feedback:
            return None  # a feedback probe is judged by its packets (REMB rises whatever arrives)
        rising = remb > probe.peak
        if rising:
            probe.peak, probe.peak_at = remb, now
        if rising and now - probe.started >= PROBE_MIN and remb >= probe.remb * PROBE_RISE:
            return self._end(True, now, f"REMB {probe.remb / 1000:.0f} -> {remb / 1000:.0f} kbps")
        if remb < probe.remb * 0.97:
            return self._end(False, now, f"REMB fell to {remb / 1000:.0f} kbps")
        return self.check(now)

    def check(self, now: float) -> str | None:
        """The probe's time limits (called on every REMB and on the padding timer)."""
        probe = self.probe
        if probe is None:
            return None
        elapsed = now - probe.started
        if probe.feedback:
            return self._end(False, now, "no verdict from feedback") if elapsed >= TCC_PROBE_MAX else None
        if elapsed >= PROBE_DURATION:
            return self._end(False, now, "no rise")
        if now - probe.peak_at >= PROBE_STALL:
            return self._end(False, now, f"REMB stalled at {probe.peak / 1000:.0f} kbps")
        return None

    def on_feedback(self, history: FeedbackHistory, now: float) -> str | None:
        """New PacketResults are in `history`: "held" or "failed" when they decide the feedback probe."""
        probe = self.probe
        if probe is None or not probe.feedback:
            return None
        base = history.base
        got = history.received(probe.started)
        count, lost = history.lost_share(probe.started)
        if count >= TCC_MIN_PACKETS and lost > TCC_LOSS:
            # the queue overflowed: its last run left at the link's rate
            probe.capacity = self._link_rate(probe, got, base) if base is not None else None
            return self._end(False, now, f"{lost:.0%} lost{self._capacity(probe)}")
        if base is None or len(got) < 5:
            return self.check(now)
        queued = [(r.arrival, r.arrival - r.sent - base) for r in got]
        first, last = queued[0][0], queued[-1][0]
        growth = min_queue(queued, last - MIN_WINDOW, last) - min_queue(queued, first, first + MIN_WINDOW)
        if growth > TCC_GROWTH:
            # a queue grew, unless the viewer's own stall (a loaded machine) delayed its arrival times:
            # then they bunch up again and the delay did not grow over the probe as a whole
            capacity = self._link_rate(probe, got, base)
            if growth > TCC_SURE or (capacity is not None and capacity < TCC_UNDER * probe.target):
                probe.capacity = capacity
                return self._end(False, now, f"delay +{growth * 1000:.0f} ms{self._capacity(probe)}")
        if last - first >= TCC_HOLD_SPAN:
            received, sent = arrival_rate(got), send_rate(got)
            probe.received = received or 0.0
            if received and sent and received >= TCC_HOLD_RATIO * sent:
                # media unnumbered: the padding alone must have gone out at about its rate
                expected = probe.target if history.media else probe.padding
                if sent >= TCC_HOLD_RATIO * expected:
                    return self._end(True, now, f"received {received / 1000:.0f} kbps, delay +{growth * 1000:.0f} ms")
        return self.check(now)

    @staticmethod
    def _link_rate(probe: Probe, got: list[PacketResult], base: float) -> float | None:
        """What the overfilled link delivered: all that was sent (`target`) over 1 + the queue's growth."""
        slope = queue_slope(got, base)
        return None if slope is None or slope <= 0 else probe.target / (1 + slope)

    @staticmethod
    def _capacity(probe: Probe) -> str:
        return "" if probe.capacity is None else f", the link delivered {probe.capacity / 1000:.0f} kbps"

    def cancel(self) -> None:
        self.probe = None

    def _end(self, held: bool, now: float, why: str) -> str:
        probe, self.probe = self.probe, None
        self.last_result = f"{'held' if held else 'failed'} at {probe.target / 1000:.0f} kbps: {why}"
        if held:
            self.succeeded += 1
            self.wait = PROBE_WAIT
            self.not_before = now + PROBE_GAP
            return "held"
        self.failed += 1
        self.not_before = now + self.wait
        # a feedback probe that measured a link far under its target waits longer (each floods a narrow
        # link's queue for a moment); TCC_WAIT_MAX still finds a widened link within the 15 s
        far = probe.feedback and probe.capacity is not None and probe.capacity < TCC_FAR * probe.target
        self.wait = min(TCC_WAIT_MAX if far else PROBE_WAIT_MAX, self.wait * 2)
        return "failed"


class PaddingSender:
    """Sends a probe's padding on one leg (`leg.send_padding(packets)`) every PADDING_TICK until stopped."""

    def __init__(self, leg, bits_per_second: float, loop: asyncio.AbstractEventLoop | None = None):
        self.leg = leg
        self.per_second = bits_per_second / 8 / leg.padding_bytes
        self.per_tick = self.per_second * PADDING_TICK
        self._owed = 0.0
        self.sent = 0
        self.bytes = 0
        self._loop = loop or asyncio.get_event_loop()
        self._last: float | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(0, self._tick)

    def _tick(self) -> None:
        # what the time since the last tick owes (a loaded loop runs the timer late), at most 3 ticks' worth
        now = self._loop.time()
        elapsed = PADDING_TICK if self._last is None else min(3 * PADDING_TICK, now - self._last)
        self._last = now
        self._owed += self.per_second * elapsed
        count = int(self._owed)
        if count:
            self._owed -= count
            sent = self.leg.send_padding(count)
            self.sent += sent
            self.bytes += sent * self.leg.padding_bytes
        self._timer = self._loop.call_later(PADDING_TICK, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
