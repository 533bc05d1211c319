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

`ProbeController` is pure (the caller passes `now`; tests/test_sfu_probe.py drives it); `PaddingSender`
is the timer that sends the padding of a running probe on one leg.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

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


@dataclass
class Probe:
    key: object          # what the probe is for (the leg)
    target: float        # bits/s the viewer should receive during the probe
    padding: float       # bits/s of padding that makes it up
    started: float
    remb: float          # the REMB when it began
    peak: float = 0.0    # the highest REMB since, and when it came
    peak_at: float = 0.0


class ProbeController:
    """One viewer's probes, one at a time."""

    def __init__(self) -> None:
        self.probe: Probe | None = None
        self.wait = PROBE_WAIT
        self.not_before = -math.inf
        self.started = self.succeeded = self.failed = 0
        self.last_result: str | None = None

    def ready(self, now: float) -> bool:
        return self.probe is None and now >= self.not_before

    def start(self, key: object, target: float, sent: float, remb: float | None, now: float) -> Probe | None:
        """Begin a probe toward `target` bits/s while `sent` bits/s of media go to the viewer."""
        if not self.ready(now) or remb is None or target <= sent:
            return None
        self.probe = Probe(key, target, min(PADDING_MAX, target - sent), now, remb, remb, now)
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
        if probe is None:
            return None
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
        if elapsed >= PROBE_DURATION:
            return self._end(False, now, "no rise")
        if now - probe.peak_at >= PROBE_STALL:
            return self._end(False, now, f"REMB stalled at {probe.peak / 1000:.0f} kbps")
        return None

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
        self.wait = min(PROBE_WAIT_MAX, self.wait * 2)
        return "failed"


class PaddingSender:
    """Sends a probe's padding on one leg (`leg.send_padding(packets)`) every PADDING_TICK until stopped."""

    def __init__(self, leg, bits_per_second: float, loop: asyncio.AbstractEventLoop | None = None):
        self.leg = leg
        self.per_tick = bits_per_second / 8 * PADDING_TICK / leg.padding_bytes
        self._owed = 0.0
        self.sent = 0
        self.bytes = 0
        self._loop = loop or asyncio.get_event_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(0, self._tick)

    def _tick(self) -> None:
        self._owed += self.per_tick
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
