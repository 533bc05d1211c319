"""Which simulcast layer each of one viewer's legs forwards (LiveKit's StreamAllocator, much reduced).

Inputs, all per viewer:
- the downlink estimate: the viewer's REMB (Chromium computes it from the abs-send-time Stoa writes on
  every forwarded packet), shared by all the viewer's legs;
- loss: a leg whose viewer is judged poor or bad (sfu/quality.py, from receiver-report loss and NACKs)
  steps down one layer;
- the size the viewer's page renders each video at (the room protocol's `video_size`): a layer larger
  than that is never chosen, whatever the link;
- priority: the screen share gets its share of the estimate first, then the active speaker's camera
  (the first of sfu/speakers.py's ranking, `speakers`), then the other cameras.

REMB follows what arrives: it grows to at most 1.5 times the incoming rate while nothing queues, and
falls to about 0.85 times what the link delivered when delay builds up. So it is read as a congestion
signal, not as a capacity: a REMB that fell, to below 90% of what the viewer is being sent, means the
link is full,
and the estimate becomes the viewer's cap (for DRAIN_FOR seconds, 80% of it: the queue that filled
must drain, and the target layer's keyframe pass). The estimate first pays for the legs that are not simulcast
(audio, single-stream video), then each simulcast leg in priority order gets the highest layer that
fits what is left. The cap rises with later REMBs. A leg that the cap holds below the layer its size
allows is probed for (sfu/probe.py): padding on its RTX stream brings what the viewer receives to the
higher layer's rate, and a probe that holds raises the cap to that rate, so the leg steps up at once.
A viewer whose legs cannot carry padding (no RTX negotiated) gets the older probe by switching: the cap
is lifted PROBE_AFTER seconds after the last congestion signal, the legs step up one layer at a time,
and a step that brings congestion back doubles the wait before the next one.

Liveness: a layer that stopped delivering (sfu/liveness.py: the publisher's encoder dropped it, without
a word) is never chosen; a leg on it or waiting for it moves to the nearest one that delivers, lower
first (`deliverable`).

Hysteresis: a leg goes down at once (at most once per DOWN_HOLD), up one layer at a time once the
higher layer has fitted for UP_HOLD. Pure: the caller passes `now`; tests/test_sfu_simulcast.py drives it.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol

from sfu.probe import ProbeController
from sfu.quality import GOOD

UP_MARGIN = 1.15     # a higher layer must fit 15% over its rate
UP_HOLD = 3.0        # s the higher layer must have fitted before the leg goes up
DOWN_HOLD = 1.0      # s between two steps down of one leg
LOSS_HOLD = 2.0      # s between two loss-driven steps down
CONGESTED = 0.9      # a REMB under 90% of what the viewer is sent ...
FELL = 0.97          # ... and 3% under the previous one: its link is full
PROBE_AFTER = 10.0   # s after the last congestion signal, the cap is lifted
PROBE_MAX = 60.0     # s, the longest wait after failed probes
PROBE_FAILS = 5.0    # s: congestion within this of lifting the cap means the probe failed
SIZE_SLACK = 0.9     # a layer at 90% of the rendered size counts as big enough
PROBE_SLACK = 1.1    # a probe that held lifts the cap 10% over its target
DRAIN = 0.8          # for DRAIN_FOR s after a congestion signal, layers must fit 80% of the estimate ...
DRAIN_FOR = 3.0      # ... so the queue built at the viewer's bottleneck drains (and the keyframe passes)


class Leg(Protocol):
    """What the allocator reads and sets on a leg (sfu.downtrack.DownTrack with a LayerSwitcher)."""

    kind: str
    uptrack: object
    switcher: object
    quality: object
    retransmit: object

    def can_pad(self) -> bool: ...


class LayerAllocator:
    def __init__(self) -> None:
        self.estimate: float | None = None  # bits/s, the viewer's last REMB
        self.cap = math.inf  # bits/s the viewer's link carries, since the last congestion signal
        self._cap_at = -math.inf
        self._probe_after = PROBE_AFTER
        self._lifted_at = -math.inf
        self.congestion_events = 0
        self.sizes: dict[str, tuple[int, int]] = {}  # track id -> rendered (width, height), device pixels
        self._fits_since: dict[int, float] = {}  # id(leg) -> since when a higher layer has fitted
        self._last_down: dict[int, float] = {}
        self._last_loss_step: dict[int, float] = {}
        self.prober = ProbeController()
        self.probe_request: tuple[Leg, float, float] | None = None  # (leg, target, sent): start this probe
        self.speakers: list[str] = []  # participants, the active speaker first (sfu/speakers.py)

    def on_estimate(self, bitrate: float, sent: float, now: float) -> bool:
        """A REMB of `bitrate` while the viewer is sent `sent` bits/s; True if it signals congestion."""
        previous, self.estimate = self.estimate, float(bitrate)
        bitrate = self.estimate
        # A REMB that fell, and fell below what is sent: the viewer's estimator saw delay build up. (One
        # below what is sent but still rising only lags a rate that just went up: a share started.)
        if previous is not None and bitrate < FELL * previous and sent > 0 and bitrate < CONGESTED * sent:
            self.congestion_events += 1
            if now - self._lifted_at < PROBE_FAILS:
                self._probe_after = min(PROBE_MAX, self._probe_after * 2)
            self.cap, self._cap_at = bitrate, now
            self.prober.on_congestion(now)
            return True
        if bitrate > self.cap:
            self.cap = bitrate
        return False

    def probe_held(self, leg: Leg, target: float) -> None:
        """The probe for `leg` held: the link carries `target`, and the leg steps up without UP_HOLD.
        (PROBE_SLACK: the layers' rates, sampled each second, moved since the target was set.)"""
        self.cap = max(self.cap, target * PROBE_SLACK)
        self._fits_since[id(leg)] = -math.inf

    def budget(self, now: float, probing: bool = False) -> float:
        if probing:
            pass  # padding probes raise the cap; it is never lifted blind
        elif self.cap != math.inf and now - self._cap_at >= self._probe_after:
            self.cap, self._lifted_at = math.inf, now  # probe: let the legs step up
        elif self.cap == math.inf and now - self._lifted_at >= PROBE_FAILS + PROBE_AFTER:
            self._probe_after = PROBE_AFTER  # the last probe held
        return self.cap * DRAIN if now - self._cap_at < DRAIN_FOR else self.cap

    def set_size(self, track_id: str, width: int, height: int) -> None:
        self.sizes[track_id] = (max(0, int(width)), max(0, int(height)))

    def size_cap(self, leg: Leg) -> int:
        """The highest layer worth sending at the size the viewer renders the track."""
        layers = leg.uptrack.layers
        top = len(layers) - 1
        size = self.sizes.get(leg.uptrack.track_id)
        if size is None:
            return top
        width, height = size
        if width == 0 or height == 0:
            return 0  # not shown at all
        full = layers[-1].frame_size
        for i, layer in enumerate(layers):
            dims = layer.frame_size
            if dims is None and full is not None:
                dims = (full[0] >> (top - i), full[1] >> (top - i))
            if dims is None:
                return top
            if dims[0] >= width * SIZE_SLACK or dims[1] >= height * SIZE_SLACK:
                return i
        return top

    def allocate(self, legs: Iterable[Leg], now: float) -> dict[Leg, int]:
        """Choose each simulcast leg's layer; returns the legs whose target changed, with the new one."""
        legs = list(legs)
        simulcast = sorted((leg for leg in legs if leg.switcher is not None), key=self.priority)
        probing = any(leg.can_pad() for leg in simulcast)
        budget = self.budget(now, probing)
        estimated = budget != math.inf
        spent = sum(8 * leg.retransmit.media_rate for leg in legs if leg.switcher is None)
        if estimated:
            budget -= spent
        changed: dict[Leg, int] = {}
        wants: tuple[Leg, float] | None = None  # the first leg the budget holds down, and what it lacks
        for leg in simulcast:
            key = id(leg)
            layers = leg.uptrack.layers
            current = leg.switcher.target
            cap = self.size_cap(leg)
            # a layer paused by dynacast counts at the rate it had when it ran
            rates = [layer.bitrate() or getattr(layer, "known_bitrate", 0.0) for layer in layers]
            choice = 0
            for i in range(cap + 1):
                rate = rates[i]
                if i <= current:
                    need = rate  # unknown yet (no packets): a layer the leg has counts as fitting
                else:
                    need = rate * UP_MARGIN if rate > 0 else math.inf
                if need <= budget:
                    choice = i
            choice = self.deliverable(leg, choice, now)
            if leg.quality.level != GOOD and choice >= current > 0:
                if now - self._last_loss_step.get(key, -math.inf) >= LOSS_HOLD:
                    self._last_loss_step[key] = now
                    choice = current - 1
                else:
                    choice = min(choice, current)
            if choice > current:
                since = self._fits_since.setdefault(key, now)
                if now - since < UP_HOLD:
                    choice = current
                else:
                    choice = current + 1  # one layer at a time
                    self._fits_since.pop(key, None)
            else:
                self._fits_since.pop(key, None)
            congested = False
            if choice < current:
                flowing = self.deliverable(leg, current, now) == current  # else not a step for the link
                if now - self._last_down.get(key, -math.inf) < DOWN_HOLD and choice < cap and flowing:
                    choice = current  # the estimate still lags the last step down
                else:
                    self._last_down[key] = now
                    congested = choice < cap and leg.quality.level == GOOD and flowing
            choice = self.deliverable(leg, choice, now)  # a hold above kept a layer that stopped
            if choice != current:
                # Down for the link: the current layer stops at its next frame, so that the target's
                # keyframe is not queued behind it.
                leg.switcher.select(choice, hold=congested)
                changed[leg] = choice
            elif (wants is None and estimated and probing and choice < cap and leg.quality.level == GOOD
                  and leg.switcher.current == current and rates[current + 1] > 0 and leg.can_pad()
                  and self.deliverable(leg, current + 1, now) == current + 1):
                wants = (leg, rates[current + 1] * UP_MARGIN - rates[current])
            if estimated:
                budget -= rates[choice]
            spent += rates[choice]
        self.probe_request = None
        if wants is not None and self.prober.ready(now):
            self.probe_request = (wants[0], spent + wants[1], spent)
        return changed

    @staticmethod
    def deliverable(leg: Leg, choice: int, now: float) -> int:
        """`choice`, or when that layer stopped delivering, the nearest one that does (lower first). A
        layer without liveness counts as delivering; when none delivers (the publisher stopped sending
        altogether), `choice` stands."""
        layers = leg.uptrack.layers

        def usable(i: int) -> bool:
            liveness = getattr(layers[i], "liveness", None)
            return liveness is None or liveness.usable(now)

        if usable(choice):
            return choice
        for i in (*range(choice - 1, -1, -1), *range(choice + 1, len(layers))):
            if usable(i):
                return i
        return choice

    def priority(self, leg: Leg) -> int:
        """The screen share first, then the active speaker's camera, then the other cameras."""
        if leg.uptrack.source == "screen":
            return 0
        return 1 if self.speakers and leg.uptrack.publisher_id == self.speakers[0] else 2

    def forget(self, leg: Leg) -> None:
        for table in (self._fits_since, self._last_down, self._last_loss_step):
            table.pop(id(leg), None)
